//! bora-node (being written).
