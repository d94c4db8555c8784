//! Integration tests: eval
