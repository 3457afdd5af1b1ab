//! decode (not built yet)
