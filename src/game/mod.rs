//! Self-play game (placeholder)
