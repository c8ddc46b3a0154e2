//! [`PhyAdapter`]: smoltcp's `phy::Device` over a [`NetDevice`], token for token.
//!
//! The adapter adds nothing to the data path: smoltcp's tokens wrap the device's tokens, so
//! a frame goes from the device's receive buffer to smoltcp, and from smoltcp into the
//! device's transmit buffer, without a copy.
//!
//! TCP checksums are not smoltcp's: it fixes its checksum capabilities once per interface,
//! but here they are a property of the NIC each frame crosses (a [`crate::Failover`] has
//! two, one of which may lack offloads). smoltcp is told to neither compute nor verify TCP
//! checksums; the transmit token computes one in software when its NIC does not
//! ([`drivers::net::TxToken::checksum_offload`]), and [`crate::Stack`] verifies a received
//! one when its NIC did not vouch for it. IPv4 header, UDP and ICMP checksums stay
//! smoltcp's (small, and the NICs here offer nothing for them on receive).

use drivers::net::{self, NetDevice, checksum};
use smoltcp::phy::{self, Checksum, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// A [`NetDevice`] as smoltcp's `phy::Device`.
#[derive(Debug)]
pub struct PhyAdapter<D: NetDevice> {
    device: D,
    caps: DeviceCapabilities,
}

impl<D: NetDevice> PhyAdapter<D> {
    /// Wraps `device` (its capabilities are read once, here).
    pub fn new(device: D) -> PhyAdapter<D> {
        let c = device.capabilities();
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = c.max_frame_len;
        caps.max_burst_size = c.max_burst;
        // Per frame instead (see the module docs).
        caps.checksum.tcp = Checksum::None;
        PhyAdapter { device, caps }
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, mutably (for interrupt acknowledgement and direct frames).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The device and the capabilities smoltcp sees, at once (for [`OneFrame`]).
    pub fn split(&mut self) -> (&mut D, &DeviceCapabilities) {
        (&mut self.device, &self.caps)
    }
}

/// One received frame, already taken from the device, as a smoltcp `phy::Device` that
/// yields it once: the stack looks at a frame's addresses first (which socket it is for)
/// and then lets smoltcp process it against that socket alone. Its replies leave through
/// the transmit token that came with the frame; it has no other transmit buffer.
pub struct OneFrame<'f, T> {
    frame: Option<&'f [u8]>,
    tx: Option<T>,
    caps: &'f DeviceCapabilities,
}

impl<'f, T: net::TxToken> OneFrame<'f, T> {
    /// `frame` with the transmit token `tx` the device gave with it.
    pub fn new(frame: &'f [u8], tx: T, caps: &'f DeviceCapabilities) -> OneFrame<'f, T> {
        OneFrame {
            frame: Some(frame),
            tx: Some(tx),
            caps,
        }
    }
}

/// smoltcp's receive token over a frame already in hand.
pub struct SliceRx<'a>(&'a [u8]);

impl phy::RxToken for SliceRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl<'f, T: net::TxToken> phy::Device for OneFrame<'f, T> {
    type RxToken<'a>
        = SliceRx<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<T>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(SliceRx<'_>, TxToken<T>)> {
        let frame = self.frame.take()?;
        let tx = self.tx.take()?;
        Some((SliceRx(frame), TxToken(tx)))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxToken<T>> {
        None
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

/// smoltcp's receive token over the device's.
pub struct RxToken<T>(T);

impl<T: net::RxToken> phy::RxToken for RxToken<T> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        self.0.consume(f)
    }
}

/// smoltcp's transmit token over the device's.
pub struct TxToken<T>(T);

impl<T: net::TxToken> phy::TxToken for TxToken<T> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if self.0.checksum_offload() {
            return self.0.consume(len, f);
        }
        self.0.consume(len, |frame| {
            let r = f(frame);
            if let Some(segment) = checksum::tcp_segment(frame) {
                checksum::fill_tcp(frame, &segment);
            }
            r
        })
    }
}

impl<D: NetDevice> phy::Device for PhyAdapter<D> {
    type RxToken<'a>
        = RxToken<D::RxToken<'a>>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<D::TxToken<'a>>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let (rx, tx) = self.device.receive()?;
        Some((RxToken(rx), TxToken(tx)))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        self.device.transmit().map(TxToken)
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}
