//! Parquet artifact schemas (placeholder)
