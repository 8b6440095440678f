//! `airlock-wire`: a sans-IO codec for the PostgreSQL frontend/backend protocol v3.
//!
//! The proxy relays frames as raw bytes and decodes only the messages that need
//! attention, so the crate is split the same way:
//!
//! - [`frame`]: zero-copy framing. [`split_frame`]`(&mut BytesMut, max_len)`
//!   splits one tagged message off a read buffer as a [`Frame`] (`tag` plus the
//!   whole message as `Bytes`, sharing the buffer's storage); `Ok(None)` means
//!   "read more". [`split_startup`] does the same for the untagged startup
//!   phase and decodes it into a [`StartupMessage`]. Lengths are checked
//!   against `max_len` from the header alone, before anything is buffered.
//! - [`frontend`] and [`backend`]: per-direction `tag` constants (several
//!   letters mean different things per direction) and decoders. Each decoder is
//!   `Type::decode(frame.body())` and returns a view borrowing the frame's
//!   bytes; e.g. [`backend::DataRow`] iterates cells without allocating.
//! - [`build`]: builders appending complete messages to a `BytesMut`, for
//!   replies the proxy writes itself (errors, notices, auth, rewritten rows).
//! - [`auth`]: MD5 and SCRAM-SHA-256 for logging in to the upstream server.
//!
//! Nothing here does IO, and nothing panics on peer input: every malformed,
//! truncated or oversized message is a [`WireError`], whose text is safe to
//! show a client.
//!
//! ```
//! use airlock_wire::{Frame, backend, build, split_frame};
//! use bytes::BytesMut;
//!
//! let mut read_buf = BytesMut::new();
//! build::command_complete(&mut read_buf, "SELECT 3");
//! let frame: Frame = split_frame(&mut read_buf, 1 << 20).unwrap().unwrap();
//! assert_eq!(frame.tag, backend::tag::COMMAND_COMPLETE);
//! let done = backend::CommandComplete::decode(frame.body()).unwrap();
//! assert_eq!(done.rows(), Some(3));
//! ```

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod auth;
pub mod backend;
pub mod build;
mod error;
pub mod frame;
pub mod frontend;
mod reader;
pub mod startup;

pub use error::WireError;
pub use frame::{Frame, frame_len_hint, split_frame};
pub use startup::{MAX_STARTUP_LEN, StartupMessage, split_startup};

/// Format code for text-encoded values.
pub const FORMAT_TEXT: i16 = 0;
/// Format code for binary-encoded values.
pub const FORMAT_BINARY: i16 = 1;
