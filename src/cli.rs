//! cli (placeholder, owned by the engine work)
