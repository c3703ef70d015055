//! membership (being written).
