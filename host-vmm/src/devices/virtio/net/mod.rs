//! virtio-net (virtio 1.x, 5.1): one receive queue, one transmit queue, a MAC address and a
//! link status, over a [`NetBackend`].
//!
//! Offered features: VERSION_1, MAC, STATUS, EVENT_IDX and the checksum offloads CSUM and
//! GUEST_CSUM, nothing else: no segmentation offloads, no mergeable buffers (each receive
//! chain holds a whole frame; the specification asks drivers for 1526-byte buffers), no
//! control queue, no indirect descriptors (fewer guest instructions per packet, and one
//! less thing to check).
//!
//! Checksum offload ([`checksum`]): with CSUM the guest may leave a checksum partial
//! (`NEEDS_CSUM`, `csum_start`, `csum_offset`); the device checks that the field lies in the
//! frame (else the frame is dropped and counted, `tx_bad_csum`) and passes the request to
//! the backend, which hands it to the host kernel (a TAP with a vnet header) or completes
//! it in software. With GUEST_CSUM the device asks the backend for the host's checksum
//! status (`TUNSETOFFLOAD`) and passes it on in the receive header (`DATA_VALID`, or
//! `NEEDS_CSUM` for a frame the host's own stack left partial); without it every checksum
//! the guest gets is complete. Frames carried by a move are complete too, so the saved
//! state has no checksum fields.
//!
//! Transmit is checked as a careful PF checks a VF's: a frame whose source MAC is not the
//! device's (or too short to have one) is dropped and counted (`tx_spoofed`), and so is one
//! whose header asks for segmentation (`gso_type` not NONE, `tx_bad_gso`): GSO is never
//! offered, so such a request (with whatever `gso_size`) is refused, never carried out; so
//! is a partial checksum the guest did not negotiate or whose field is outside the frame.
//!
//! Frames pass through one preallocated bounce buffer per direction: a whole frame is read
//! from the backend (one syscall) before a receive chain is chosen, so its length is known
//! and nothing is ever cut; a transmit chain is gathered and written with one syscall. No
//! allocation and no syscall beyond the backend's read or write happen per frame.
//!
//! Receive flow control: while the driver keeps buffers available the device asks not to
//! be notified on the receive queue and reads the backend whenever it is readable; when the
//! buffers run out it keeps the frame it holds, re-enables notifications and waits for the
//! driver's kick. Frames that arrive while the device is not running are dropped, as a NIC
//! without a driver does.
//!
//! Migration state ([`NetState`]): the MAC (which must match the destination's), the link
//! status, the frame held for want of a receive buffer, if any (so it is not lost), and the
//! frames taken from the backend while the guest was paused for the move. Queue positions
//! are the transport's.
//!
//! Layout: this file is the device; `state.rs` holds [`NetState`], [`backend`] the
//! [`NetBackend`] trait the frames go through, and `tests.rs` the unit tests.

pub mod backend;
pub mod checksum;
mod state;

#[cfg(test)]
mod tests;

pub use state::NetState;

use super::queue::{self, Direction, Segment};
use super::{
    GuestError, QueueSet, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VirtioDevice,
    VirtioDeviceState,
};
use crate::devices::DeviceStateError;
use crate::memory::GuestMemoryMmap;
use backend::NetBackend;
use checksum::{F_DATA_VALID, F_NEEDS_CSUM, RxChecksum};
use std::io;
use std::os::fd::RawFd;
use virtio_queue::Queue;

/// Virtio device ID of a network card.
pub const VIRTIO_ID_NET: u16 = 1;
/// Feature: the device completes checksums the driver leaves partial.
pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
/// Feature: the driver takes frames with checked or partial checksums.
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
/// Feature: the device has a MAC address in its configuration.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// Feature: the configuration has a link status.
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// Link status: up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;
/// `struct virtio_net_hdr` with VERSION_1 (it always has `num_buffers`).
pub const HEADER_LEN: usize = 12;
/// Largest frame moved in either direction (a 64 KiB IP packet plus the Ethernet header).
pub const MAX_FRAME: usize = 65550;
/// Queue size offered for both queues.
pub const QUEUE_SIZE: u16 = 256;
/// Receive queue index.
pub const RX: usize = 0;
/// Transmit queue index.
pub const TX: usize = 1;

/// What went through the device (plain counters; they are not logged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetMetrics {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Their bytes, without headers.
    pub rx_bytes: u64,
    /// Frames dropped on the way in (device not running, or a chain too small for them).
    pub rx_dropped: u64,
    /// Frames the guest sent.
    pub tx_frames: u64,
    /// Their bytes, without headers.
    pub tx_bytes: u64,
    /// Frames not sent: the backend refused them, or one of the checks below (counted
    /// there too).
    pub tx_dropped: u64,
    /// Frames whose source MAC is not the device's, or too short to have one.
    pub tx_spoofed: u64,
    /// Frames whose header asked for segmentation (GSO is not offered).
    pub tx_bad_gso: u64,
    /// Frames whose header asked for a partial checksum not negotiated, or outside the
    /// frame.
    pub tx_bad_csum: u64,
    /// Frames sent with their checksum left to the device (CSUM).
    pub tx_csum: u64,
    /// Frames delivered with their checksum checked or partial (GUEST_CSUM): the guest
    /// need not verify them.
    pub rx_csum: u64,
}

/// `virtio_net_hdr.gso_type`: no segmentation.
const GSO_NONE: u8 = 0;

/// Most frames a move carries from the source's backend to the destination.
pub const MAX_BACKLOG: usize = 256;

/// The next frame for the guest into `rx_buf` after the header: a carried one (complete),
/// else one from the backend, with its checksum status.
fn next_frame<B: NetBackend>(
    backlog: &mut std::collections::VecDeque<Vec<u8>>,
    backend: &mut B,
    rx_buf: &mut [u8],
) -> io::Result<(usize, RxChecksum)> {
    if let Some(frame) = backlog.pop_front() {
        let len = frame.len().min(MAX_FRAME);
        rx_buf[HEADER_LEN..HEADER_LEN + len].copy_from_slice(&frame[..len]);
        return Ok((len, RxChecksum::Unknown));
    }
    backend.recv_checksum(&mut rx_buf[HEADER_LEN..])
}

/// Writes the receive header for the `len`-byte frame after it in `rx_buf`, telling the
/// guest its checksum status if it negotiated GUEST_CSUM, else completing a partial
/// checksum here. `false`: the partial checksum's field is outside the frame (drop it).
fn rx_header(rx_buf: &mut [u8], len: usize, status: RxChecksum, guest_csum: bool) -> bool {
    let status = match status {
        RxChecksum::Partial(p) if !p.fits(len) => return false,
        RxChecksum::Partial(p) if !guest_csum => {
            p.complete(&mut rx_buf[HEADER_LEN..HEADER_LEN + len]);
            RxChecksum::Unknown
        }
        RxChecksum::Valid if !guest_csum => RxChecksum::Unknown,
        other => other,
    };
    checksum::write_rx_header(rx_buf, status);
    true
}

/// The queues while the driver runs the device.
struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
}

/// A virtio network device.
pub struct Net<B: NetBackend> {
    mac: [u8; 6],
    link_up: bool,
    backend: B,
    active: Option<Active>,
    /// Header, then the frame being received.
    rx_buf: Box<[u8]>,
    /// Length of the frame in `rx_buf` still waiting for a receive chain.
    rx_pending: Option<usize>,
    /// Frames to deliver before reading the backend again (carried by a migration).
    rx_backlog: std::collections::VecDeque<Vec<u8>>,
    /// Header and frame gathered from a transmit chain.
    tx_buf: Box<[u8]>,
    /// The current chain's buffers (reused: no allocation per frame).
    segments: Vec<Segment>,
    /// The driver negotiated CSUM (it may leave checksums partial).
    csum: bool,
    /// The driver negotiated GUEST_CSUM (it takes checked and partial frames).
    guest_csum: bool,
    metrics: NetMetrics,
}

impl<B: NetBackend> std::fmt::Debug for Net<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("mac", &format_args!("{:02x?}", self.mac))
            .field("active", &self.active.is_some())
            .field("metrics", &self.metrics)
            .finish()
    }
}

impl<B: NetBackend> Net<B> {
    /// A device with address `mac`, link up, on `backend`.
    pub fn new(backend: B, mac: [u8; 6]) -> Self {
        let rx_buf = vec![0u8; HEADER_LEN + MAX_FRAME].into_boxed_slice();
        Net {
            mac,
            link_up: true,
            backend,
            active: None,
            rx_buf,
            rx_pending: None,
            rx_backlog: std::collections::VecDeque::new(),
            tx_buf: vec![0u8; HEADER_LEN + MAX_FRAME].into_boxed_slice(),
            segments: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            csum: false,
            guest_csum: false,
            metrics: NetMetrics::default(),
        }
    }

    /// The counters so far.
    pub fn metrics(&self) -> NetMetrics {
        self.metrics
    }

    /// The MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The backend (for tests and harnesses).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Takes the frames waiting in the backend (at most [`MAX_BACKLOG`] in all) into the
    /// device, so they travel in its state: a move calls this with the guest paused, when
    /// the backend would otherwise drop what arrived for the guest meanwhile. Returns how
    /// many frames the device holds now.
    pub fn hold_backend_frames(&mut self) -> usize {
        let mut buf = vec![0u8; MAX_FRAME];
        while self.rx_backlog.len() < MAX_BACKLOG {
            match self.backend.recv(&mut buf) {
                Ok(len) if len > 0 => self.rx_backlog.push_back(buf[..len].to_vec()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.rx_backlog.len()
    }

    /// Moves frames from the backend into receive chains until one side runs dry.
    fn receive(&mut self) -> Result<QueueSet, GuestError> {
        let Some(active) = self.active.as_mut() else {
            // Not running: drop what is waiting, so it does not arrive stale later.
            while self.backend.recv(&mut self.rx_buf[HEADER_LEN..]).is_ok() {
                self.metrics.rx_dropped += 1;
            }
            self.rx_pending = None;
            self.rx_backlog.clear();
            return Ok(QueueSet::default());
        };
        let mem = &active.mem;
        let mut used = false;
        loop {
            let len = match self.rx_pending {
                // Its header is written already.
                Some(len) => len,
                None => match next_frame(&mut self.rx_backlog, &mut self.backend, &mut self.rx_buf)
                {
                    Ok((len, status)) => {
                        if !rx_header(&mut self.rx_buf, len, status, self.guest_csum) {
                            self.metrics.rx_dropped += 1;
                            continue;
                        }
                        len
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::debug!("virtio-net: backend read failed: {e}");
                        break;
                    }
                },
            };
            self.rx_pending = Some(len);
            let Some(head) = queue::pop_head(&mut active.rx, RX, mem)? else {
                // Out of buffers: wait for a kick, unless some arrived meanwhile.
                if queue::enable_notification(&mut active.rx, RX, mem)? {
                    queue::disable_notification(&mut active.rx, RX, mem)?;
                    continue;
                }
                break;
            };
            let room = queue::walk_chain(
                &active.rx,
                RX,
                mem,
                head,
                Direction::DeviceWrites,
                HEADER_LEN as u64,
                u64::from(u32::MAX),
                &mut self.segments,
            )?;
            let total = HEADER_LEN + len;
            if room < total as u64 {
                // Legal but useless for this frame (e.g. a jumbo frame on the host side):
                // drop the frame, keep the chain for the next one.
                queue::unpop(&mut active.rx);
                self.rx_pending = None;
                self.metrics.rx_dropped += 1;
                log::trace!("virtio-net: {len}-byte frame does not fit a {room}-byte chain");
                continue;
            }
            queue::write_segments(mem, &self.segments, &self.rx_buf[..total], RX)?;
            queue::add_used(&mut active.rx, RX, mem, head, total as u32)?;
            self.rx_pending = None;
            used = true;
            self.metrics.rx_frames += 1;
            self.metrics.rx_bytes += len as u64;
            if self.rx_buf[0] & (F_NEEDS_CSUM | F_DATA_VALID) != 0 {
                self.metrics.rx_csum += 1;
            }
        }
        let mut signal = QueueSet::default();
        if used && queue::needs_interrupt(&mut active.rx, RX, mem)? {
            signal.insert(RX);
        }
        Ok(signal)
    }

    /// Sends every chain the driver made available on the transmit queue.
    fn transmit(&mut self) -> Result<QueueSet, GuestError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(QueueSet::default());
        };
        let mem = &active.mem;
        let mut used = false;
        loop {
            queue::disable_notification(&mut active.tx, TX, mem)?;
            while let Some(head) = queue::pop_head(&mut active.tx, TX, mem)? {
                let total = queue::walk_chain(
                    &active.tx,
                    TX,
                    mem,
                    head,
                    Direction::DeviceReads,
                    HEADER_LEN as u64,
                    self.tx_buf.len() as u64,
                    &mut self.segments,
                )? as usize;
                queue::read_segments(mem, &self.segments, &mut self.tx_buf[..total], TX)?;
                let mut header = [0u8; HEADER_LEN];
                header.copy_from_slice(&self.tx_buf[..HEADER_LEN]);
                let partial = checksum::header_partial(&header);
                let frame = &mut self.tx_buf[HEADER_LEN..total];
                let checked = if header[1] != GSO_NONE {
                    self.metrics.tx_bad_gso += 1;
                    Err(())
                } else if partial.is_some_and(|p| !self.csum || !p.fits(frame.len())) {
                    self.metrics.tx_bad_csum += 1;
                    Err(())
                } else if frame.get(6..12) != Some(&self.mac[..]) {
                    self.metrics.tx_spoofed += 1;
                    Err(())
                } else {
                    Ok(())
                };
                if checked.is_err() {
                    self.metrics.tx_dropped += 1;
                    queue::add_used(&mut active.tx, TX, mem, head, 0)?;
                    used = true;
                    continue;
                }
                let len = frame.len() as u64;
                let sent = match partial {
                    Some(p) => {
                        self.metrics.tx_csum += 1;
                        self.backend.send_partial(frame, p)
                    }
                    None => self.backend.send(frame),
                };
                match sent {
                    Ok(()) => {
                        self.metrics.tx_frames += 1;
                        self.metrics.tx_bytes += len;
                    }
                    Err(e) => {
                        self.metrics.tx_dropped += 1;
                        log::trace!("virtio-net: backend write failed: {e}");
                    }
                }
                queue::add_used(&mut active.tx, TX, mem, head, 0)?;
                used = true;
            }
            if !queue::enable_notification(&mut active.tx, TX, mem)? {
                break;
            }
        }
        let mut signal = QueueSet::default();
        if used && queue::needs_interrupt(&mut active.tx, TX, mem)? {
            signal.insert(TX);
        }
        Ok(signal)
    }

    /// The configuration space: `mac`, `status`, `max_virtqueue_pairs` (5.1.4).
    fn config_bytes(&self) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[..6].copy_from_slice(&self.mac);
        let status = if self.link_up {
            VIRTIO_NET_S_LINK_UP
        } else {
            0
        };
        c[6..8].copy_from_slice(&status.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c
    }

    /// Whether the guest takes checked and partial frames; the backend is told, so it hands
    /// them over (or completes them itself).
    fn set_guest_csum(&mut self, on: bool) {
        self.guest_csum = on;
        if let Err(e) = self.backend.set_checksum_offload(on) {
            log::warn!("virtio-net: the backend refused checksum offload {on}: {e}");
        }
    }

    /// Queue indexes and ring positions, for a later save (migration) and for tests.
    pub fn queue_states(&self) -> Option<[virtio_queue::QueueState; 2]> {
        self.active.as_ref().map(|a| [a.rx.state(), a.tx.state()])
    }
}

impl<B: NetBackend> VirtioDevice for Net<B> {
    fn name(&self) -> &'static str {
        "virtio-net"
    }

    fn save_device_state(&self) -> VirtioDeviceState {
        VirtioDeviceState::Net(NetState {
            mac: self.mac,
            link_up: self.link_up,
            rx_pending: self.rx_pending.map(|len| {
                // Carried complete: the destination's guest may not take partial ones.
                let mut frame = self.rx_buf[HEADER_LEN..HEADER_LEN + len].to_vec();
                let mut header = [0u8; HEADER_LEN];
                header.copy_from_slice(&self.rx_buf[..HEADER_LEN]);
                if let Some(p) = checksum::header_partial(&header) {
                    p.complete(&mut frame);
                }
                frame
            }),
            rx_backlog: self.rx_backlog.iter().cloned().collect(),
        })
    }

    fn check_device_state(&self, state: &VirtioDeviceState) -> Result<(), DeviceStateError> {
        let VirtioDeviceState::Net(s) = state else {
            return Err(DeviceStateError::mismatch(
                "virtio-net",
                "device kind",
                "the state is not a network device's",
            ));
        };
        if s.mac != self.mac {
            return Err(DeviceStateError::mismatch(
                "virtio-net",
                "MAC",
                format!("{:02x?}, this device has {:02x?}", s.mac, self.mac),
            ));
        }
        if let Some(frame) = &s.rx_pending
            && (frame.is_empty() || frame.len() > MAX_FRAME)
        {
            return Err(DeviceStateError::invalid(
                "virtio-net",
                "pending receive frame",
                format!("{} bytes; 1..={MAX_FRAME} expected", frame.len()),
            ));
        }
        if s.rx_backlog.len() > MAX_BACKLOG
            || s.rx_backlog
                .iter()
                .any(|f| f.is_empty() || f.len() > MAX_FRAME)
        {
            return Err(DeviceStateError::invalid(
                "virtio-net",
                "receive backlog",
                format!(
                    "{} frames; at most {MAX_BACKLOG} of 1..={MAX_FRAME} bytes expected",
                    s.rx_backlog.len()
                ),
            ));
        }
        Ok(())
    }

    fn apply_device_state(&mut self, state: VirtioDeviceState) {
        let VirtioDeviceState::Net(s) = state else {
            return;
        };
        self.link_up = s.link_up;
        self.rx_backlog = s.rx_backlog.into();
        self.rx_pending = s.rx_pending.and_then(|frame| {
            let dst = self.rx_buf.get_mut(HEADER_LEN..HEADER_LEN + frame.len())?;
            dst.copy_from_slice(&frame);
            Some(frame.len())
        });
        checksum::write_rx_header(&mut self.rx_buf, RxChecksum::Unknown);
    }

    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.queue_states().map(Vec::from).unwrap_or_default()
    }

    fn device_type(&self) -> u16 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_STATUS
            | VIRTIO_NET_F_CSUM
            | VIRTIO_NET_F_GUEST_CSUM
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset + i as u64)
                .ok()
                .and_then(|at| config.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Read-only with VERSION_1 (the MAC is writable only through the control queue).
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        features: u64,
        queues: Vec<Option<Queue>>,
    ) -> Result<(), GuestError> {
        let mut queues = queues.into_iter();
        let rx = queues
            .next()
            .flatten()
            .ok_or(GuestError::QueueNotEnabled(RX))?;
        let tx = queues
            .next()
            .flatten()
            .ok_or(GuestError::QueueNotEnabled(TX))?;
        self.rx_pending = None;
        self.csum = features & VIRTIO_NET_F_CSUM != 0;
        self.set_guest_csum(features & VIRTIO_NET_F_GUEST_CSUM != 0);
        self.active = Some(Active { mem, rx, tx });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.rx_pending = None;
        self.rx_backlog.clear();
        self.csum = false;
        self.set_guest_csum(false);
    }

    fn queue_notified(&mut self, queue: usize) -> Result<QueueSet, GuestError> {
        match queue {
            RX => {
                // New receive buffers: stop the kicks until they run out again.
                if let Some(a) = self.active.as_mut() {
                    queue::disable_notification(&mut a.rx, RX, &a.mem)?;
                }
                self.receive()
            }
            TX => self.transmit(),
            _ => Ok(QueueSet::default()),
        }
    }

    fn event_fds(&self) -> Vec<RawFd> {
        vec![self.backend.ready_fd()]
    }

    fn device_event(&mut self, _index: usize) -> Result<QueueSet, GuestError> {
        self.receive()
    }
}
