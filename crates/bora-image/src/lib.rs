//! bora-image (being written).
