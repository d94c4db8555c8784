//! plan (placeholder, owned by the engine work)
