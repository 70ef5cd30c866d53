mod api;
mod e2e;
mod fencing;
mod scheduler;
mod signed;
