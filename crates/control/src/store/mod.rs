//! Audit store (placeholder).
