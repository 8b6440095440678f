//! Byte streams the adapters relay over: plain TCP or TLS, behind one type.

use tokio::io::{AsyncRead, AsyncWrite};

/// A bidirectional byte stream (TCP or TLS over TCP).
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncStream for T {}

pub type BoxStream = Box<dyn AsyncStream>;
