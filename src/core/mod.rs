//! The learning core: plain Rust, no napi. Everything here is unit-tested with `cargo test`
//! and could be published as a crate of its own.

pub mod drift;
pub mod ensemble;
pub mod finetune;
pub mod forecast;
pub mod fsutil;
pub mod kernels;
pub mod linalg;
pub mod linear;
pub mod lru;
pub mod models;
pub mod online;
pub mod registry;
pub mod runtime;
pub mod stats;
pub mod store;
pub mod stream;
