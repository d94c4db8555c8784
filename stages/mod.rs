//! Stage registry (placeholder)
