mod api;
mod e2e;
mod edges;
mod fencing;
mod reconnect;
mod replay;
mod scheduler;
mod signed;
