//! Judges (placeholder)
