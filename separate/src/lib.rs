//! separate (not built yet)
