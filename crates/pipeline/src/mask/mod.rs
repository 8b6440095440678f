//! Masking of sensitive values in responses (placeholder; see issue 5).
