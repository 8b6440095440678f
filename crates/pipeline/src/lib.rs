//! Protocol-neutral enforcement: the one pipeline every protocol adapter feeds.
//!
//! An adapter turns wire bytes into a [`model::CommandInput`]; the [`Pipeline`]
//! classifies it, asks policy for a verdict, records it, and tells the adapter
//! what to do. Masking plans are handed out here too. Nothing in this crate
//! knows a wire format or owns a socket.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod approvals;
pub mod auth;
pub mod classify;
pub mod mask;
pub mod model;
pub mod pipeline;
pub mod policy;
pub mod record;

pub use pipeline::Pipeline;
