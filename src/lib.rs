//! mlops-native: the learning core (`core`, napi-free) and its Node bindings (`js`).

pub mod core;
mod js;
