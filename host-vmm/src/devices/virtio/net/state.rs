//! virtio-net's own migration state as plain data ([`NetState`]): the MAC, the link status
//! and the frames held for the guest. The transport saves the queues; the device checks a
//! saved state against itself (the MAC must match) in its `check_device_state`.

use serde::{Deserialize, Serialize};

/// virtio-net's own migration state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// The MAC address (the destination's must be the same).
    pub mac: [u8; 6],
    /// Link status.
    pub link_up: bool,
    /// A received frame (without header) still waiting for a receive chain.
    pub rx_pending: Option<Vec<u8>>,
    /// Frames taken from the backend while the guest was paused for a move (see
    /// [`Net::hold_backend_frames`](super::Net::hold_backend_frames)), delivered first, in order.
    pub rx_backlog: Vec<Vec<u8>>,
}
