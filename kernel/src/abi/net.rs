//! Network calls: bringing the network up (sockets come next).

use super::fail;
use crate::net::{self, InitError};
use hermit_abi::{EINVAL, EIO, ENODEV};

/// Brings the network up (PCI, NIC, stack; once): 0, or `-EINVAL` without a usable `ip=` on
/// the command line, `-ENODEV` without a virtio-net device, `-EIO` if the device failed.
#[unsafe(no_mangle)]
pub extern "C" fn sys_network_init() -> i32 {
    match net::init() {
        Ok(()) => 0,
        Err(InitError::NotConfigured) => fail(EINVAL),
        Err(InitError::NoDevice) => fail(ENODEV),
        Err(InitError::DeviceFailed) => fail(EIO),
    }
}
