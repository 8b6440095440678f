//! PostgreSQL masking rewrites (placeholder).
