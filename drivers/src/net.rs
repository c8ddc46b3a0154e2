//! [`NetDevice`]: the one interface netstack sees of a network card.
//!
//! It is shaped like smoltcp's `phy::Device` (without depending on smoltcp): `receive` hands
//! out a received frame and a transmit token together, and each token lends a device buffer
//! to a closure, so frames go between the stack and DMA memory without extra copies.
//! A device never panics on what its hardware reports: bad lengths or descriptors drop the
//! frame and count it in [`Stats`].

use core::fmt;

/// An Ethernet (MAC) address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MacAddress(pub [u8; 6]);

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// What a device can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Largest Ethernet frame it sends or receives, header included, FCS excluded
    /// (1514 for a 1500-byte MTU).
    pub max_frame_len: usize,
    /// Most frames it can take in one burst (its free transmit buffers), if limited.
    pub max_burst: Option<usize>,
    /// It completes the TCP checksum of the frames it sends (see
    /// [`TxToken::checksum_offload`]).
    pub tx_checksum: bool,
}

/// What a device's interrupt signalled (see [`NetDevice::ack_interrupt`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Events {
    /// Frames arrived or transmit buffers came back.
    pub queue: bool,
    /// The device configuration (link status) changed.
    pub config: bool,
}

/// Per-device counters (read by the kernel for debug logs; never logged per packet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames received and handed to the stack.
    pub rx_frames: u64,
    /// Frames handed to the device for transmission.
    pub tx_frames: u64,
    /// Received frames dropped because the device reported an impossible length.
    pub rx_errors: u64,
    /// Frames the stack built that could not be sent (no buffer, too long, queue error).
    pub tx_dropped: u64,
}

/// A received frame, lent to a closure once.
pub trait RxToken {
    /// Calls `f` with the frame (Ethernet header first).
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R;
    /// Whether the NIC vouches for the frame's TCP checksum (it checked it, or the frame
    /// comes from the host's own stack with the checksum left to the NIC): the stack need
    /// not verify it. `false` unless the NIC says so.
    fn checksum_valid(&self) -> bool {
        false
    }
}

/// The right to send one frame, lent to a closure once.
pub trait TxToken {
    /// Calls `f` with a zeroed-or-stale buffer of exactly `len` bytes to fill with the frame,
    /// then sends it. A `len` beyond [`Capabilities::max_frame_len`], or a device that has
    /// no buffer after all, still runs `f` (on a scratch buffer) but drops the frame.
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R;
    /// Whether the NIC completes the TCP checksum of a frame sent with this token: the
    /// stack then leaves the field alone and the driver writes the pseudo-header sum
    /// ([`checksum::write_pseudo_header`]) and asks the NIC for the rest. `false` unless the
    /// NIC can.
    fn checksum_offload(&self) -> bool {
        false
    }
}

/// A network card as netstack sees it.
pub trait NetDevice {
    /// Token for one received frame.
    type RxToken<'a>: RxToken
    where
        Self: 'a;
    /// Token for one frame to send.
    type TxToken<'a>: TxToken
    where
        Self: 'a;

    /// The card's MAC address.
    fn mac_address(&self) -> MacAddress;
    /// What the card can carry.
    fn capabilities(&self) -> Capabilities;
    /// Whether the link is up (cards without link reporting are always up).
    fn link_up(&self) -> bool;
    /// The next received frame, with a token to answer it; `None` when nothing is waiting.
    fn receive(&mut self) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)>;
    /// A token to send one frame; `None` when no transmit buffer is free.
    fn transmit(&mut self) -> Option<Self::TxToken<'_>>;
    /// Acknowledges a legacy (INTx) interrupt and says what it signalled. Devices on MSI-X
    /// have nothing to acknowledge (the vector says what happened) and return no events.
    fn ack_interrupt(&mut self) -> Events;
    /// The device's counters.
    fn stats(&self) -> Stats;
}

pub mod checksum;
#[cfg(any(test, feature = "test-utils"))]
pub mod memory;
