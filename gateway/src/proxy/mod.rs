//! Calling backends and shaping what they return.

pub mod decode;
pub mod flatmap;
pub mod render;
pub mod shape;
