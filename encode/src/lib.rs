//! encode (not built yet)
