//! bora-cli (being written).
