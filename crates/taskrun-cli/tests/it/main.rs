//! Integration tests of the `taskrun` command: the real binary against a
//! real control plane on 127.0.0.1:0 (see `support`).

mod agent;
mod keys;
mod parse;
mod support;
mod task;
mod worker;
