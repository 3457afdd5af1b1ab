//! observe (not built yet)
