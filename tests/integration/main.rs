//! Integration tests, gathered in one binary: gRPC end to end, training, and the CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod collect;
mod common;
mod faults;
mod feedback;
mod gateway;
mod grpc;
mod hardening;
mod storage;
mod tools;
mod training;
