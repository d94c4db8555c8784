//! Model runtime (placeholder)
