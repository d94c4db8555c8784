//! REINFORCE++ (placeholder)
