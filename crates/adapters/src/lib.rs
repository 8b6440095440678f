//! Protocol adapters: each turns its wire format into pipeline Commands and
//! the pipeline's verdicts back into wire messages. Adapters never decide
//! policy, mask or record on their own; they call the pipeline.

pub mod io;
pub mod postgres;
pub mod session_threads;
pub mod tls;
