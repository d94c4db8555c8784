//! Readers for the pinned source files (placeholder)
