//! PostgreSQL adapter: listener, session loop, upstream connection.

pub mod masking;
