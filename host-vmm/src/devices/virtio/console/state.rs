//! virtio-console's own migration state as plain data ([`ConsoleState`]): the port's bytes
//! in flight in both directions. The device checks a saved one against its bounds in its
//! `check_device_state`; the transport saves the queues.

use serde::{Deserialize, Serialize};

/// virtio-console's own migration state: the port's bytes in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleState {
    /// Queued for the guest, not yet in a receive chain (at most [`TO_GUEST_CAPACITY`]).
    ///
    /// [`TO_GUEST_CAPACITY`]: super::TO_GUEST_CAPACITY
    pub to_guest: Vec<u8>,
    /// From the guest, not yet read by the host (at most [`FROM_GUEST_CAPACITY`]).
    ///
    /// [`FROM_GUEST_CAPACITY`]: super::FROM_GUEST_CAPACITY
    pub from_guest: Vec<u8>,
}
