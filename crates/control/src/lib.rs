//! Control plane: configuration, the audit store, the REST API and metrics.

pub mod api;
pub mod approvals;
pub mod config;
pub mod notify;
pub mod store;
