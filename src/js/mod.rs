//! The napi layer: converts values, maps errors, and owns nothing but handles to the core.
//! Hot paths take pre-validated typed arrays from the thin JS layer in `mlops.js`; methods
//! whose names start with `_` are that layer's private protocol and are left out of the
//! TypeScript declarations.

mod ensemble;
mod finetune;
mod predictions;
mod realtime;
mod state;

use napi::{Env, Error, Status};

/// The kind of JS error a failure should surface as.
#[derive(Clone, Copy)]
pub enum Kind {
    #[allow(dead_code)]
    Type,
    Range,
    #[allow(dead_code)]
    Plain,
}

/// Throws a `TypeError`/`RangeError`/`Error` on `env` and returns the marker error that
/// tells napi-rs the exception is already pending.
pub fn throw(env: &Env, kind: Kind, msg: &str) -> Error {
    let _ = match kind {
        Kind::Type => env.throw_type_error(msg, None),
        Kind::Range => env.throw_range_error(msg, None),
        Kind::Plain => env.throw_error(msg, None),
    };
    Error::new(Status::PendingException, msg.to_owned())
}

/// Input rejected by the core: the JS layer validated types, so what is left is a value
/// out of range (non-finite, empty, wrong length).
pub fn range(env: &Env, msg: String) -> Error {
    throw(env, Kind::Range, &msg)
}

/// A failure that is not the caller's input (I/O, a corrupt file, an internal bug).
pub fn plain(msg: impl Into<String>) -> Error {
    Error::new(Status::GenericFailure, msg.into())
}
