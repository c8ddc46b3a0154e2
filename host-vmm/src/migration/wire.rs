//! The migration stream format (being written).
