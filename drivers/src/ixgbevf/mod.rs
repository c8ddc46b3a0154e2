//! Intel 82599-family SR-IOV virtual function (ixgbevf): register map shared with host-vmm's
//! device model; the driver arrives with issue 4.

pub mod regs;
