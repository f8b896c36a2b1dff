//! bora-store (being written).
