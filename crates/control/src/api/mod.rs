//! REST API (placeholder).
