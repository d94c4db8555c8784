//! spec (placeholder, owned by the engine work)
