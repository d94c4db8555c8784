//! Content-addressed artifact store (placeholder)
