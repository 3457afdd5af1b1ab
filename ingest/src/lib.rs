//! ingest (not built yet)
