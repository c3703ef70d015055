//! partition (being written).
