//! Integration tests of the queue engine against a real PostgreSQL, one fresh database
//! per test (`conveyor_devpg::test_db`). All in one binary, so it links once.

mod admin;
mod batch;
mod common;
mod consume;
mod crash;
mod failures;
mod floor;
mod lease;
mod pause;
mod publish_relay;
mod pull;
mod schedule;
mod shutdown;
mod traces;
