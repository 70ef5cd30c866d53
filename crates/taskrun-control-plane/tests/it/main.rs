mod api;
mod e2e;
mod fencing;
mod replay;
mod scheduler;
mod signed;
