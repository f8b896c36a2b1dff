//! bora-control (being written).
