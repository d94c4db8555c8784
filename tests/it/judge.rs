//! Integration tests: judge
