//! vCPU and VM state for migration (being written).
