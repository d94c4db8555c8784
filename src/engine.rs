//! engine (placeholder, owned by the engine work)
