//! bora-router (being written).
