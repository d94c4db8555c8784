//! Integration tests: model
