//! Integration tests: engine
