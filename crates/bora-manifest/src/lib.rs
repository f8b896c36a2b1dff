//! bora-manifest (being written).
