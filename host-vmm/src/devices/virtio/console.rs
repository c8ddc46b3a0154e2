//! virtio-console (virtio 1.x, 5.3) with one port: the byte pipe between the control server
//! ([`crate::control`]) and the guest agent.
//!
//! Queues: 0 is receiveq (host to guest), 1 is transmitq (guest to host). Offered features:
//! VERSION_1 and EVENT_IDX only: no console size, no multiport (so no control queues), no
//! emergency write; the configuration space reads as zeros. No indirect descriptors.
//!
//! A [`port`] has two ends: the device serves the [`DevicePort`] (the byte interface), the
//! control server holds the [`HostPort`]:
//! - Host to guest: [`HostPort::send`] queues bytes (bounded, all or nothing) and writes an
//!   eventfd the I/O thread watches; the device then fills whatever receive chains the
//!   driver has posted, splitting the bytes over them as a stream. Bytes sent while the
//!   driver has not started the device are dropped (as a NIC drops frames without a driver),
//!   so a request nobody received is never carried out much later.
//! - Guest to host: every transmit chain is taken at once (a driver that waits for its
//!   buffer back, as virtio-drivers' console does, is never held up), its bytes appended to
//!   a bounded buffer, oldest bytes dropped first when the host does not read, and a
//!   [`HostPort::recv_until`] waiting for them is woken.
//!
//! A receive chain is never returned with length 0 (virtio-drivers' driver asserts on that):
//! zero-length receive chains are a guest error, like every other bad descriptor, which sets
//! DEVICE_NEEDS_RESET through the transport.
//!
//! Migration state ([`ConsoleState`]): the port's two byte queues, bytes for the guest not
//! yet delivered and bytes from the guest the host has not read, so the stream continues on
//! the destination. Queue positions are the transport's.

use super::queue::{self, Direction, Segment};
use super::{
    GuestError, QueueSet, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VirtioDevice,
    VirtioDeviceState,
};
use crate::devices::DeviceStateError;
use crate::memory::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// Virtio device ID of a console.
pub const VIRTIO_ID_CONSOLE: u16 = 3;
/// Queue size offered for both queues.
pub const QUEUE_SIZE: u16 = 64;
/// receiveq of port 0 (host to guest).
pub const RX: usize = 0;
/// transmitq of port 0 (guest to host).
pub const TX: usize = 1;
/// Most bytes queued for the guest and not yet delivered.
pub const TO_GUEST_CAPACITY: usize = 16 * 1024;
/// Most bytes from the guest kept for the host to read.
pub const FROM_GUEST_CAPACITY: usize = 64 * 1024;
/// Longest transmit chain accepted.
pub const MAX_TX_CHAIN: usize = 64 * 1024;

/// What went through the port (plain counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleMetrics {
    /// Bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Bytes for the guest dropped because its driver was not running.
    pub rx_dropped: u64,
    /// Bytes the guest sent.
    pub tx_bytes: u64,
    /// Bytes from the guest dropped because the host did not read them in time.
    pub tx_dropped: u64,
}

/// The two byte queues and their counters.
#[derive(Debug, Default)]
struct Buffers {
    to_guest: VecDeque<u8>,
    from_guest: VecDeque<u8>,
    metrics: ConsoleMetrics,
}

/// What the device and the host side share.
#[derive(Debug)]
struct Link {
    buffers: Mutex<Buffers>,
    /// Signalled when bytes from the guest arrive.
    arrived: Condvar,
    /// Written when bytes for the guest are queued (the device's event fd).
    kick: EventFd,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The bytes did not fit in the queue to the guest (it is not reading).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the console queue to the guest is full ({0} bytes waiting): the guest is not reading")]
pub struct PortFull(pub usize);

/// Makes a console port: the device's end and the host's end.
pub fn port() -> io::Result<(DevicePort, HostPort)> {
    let link = Arc::new(Link {
        buffers: Mutex::new(Buffers::default()),
        arrived: Condvar::new(),
        kick: EventFd::new(libc::EFD_NONBLOCK)?,
    });
    Ok((DevicePort { link: link.clone() }, HostPort { link }))
}

/// The device's end of a console port: the byte interface the virtqueues are served from
/// (and that tests can drive directly, without guest memory).
#[derive(Debug)]
pub struct DevicePort {
    link: Arc<Link>,
}

impl DevicePort {
    /// Takes everything queued for the guest (and resets the kick).
    pub fn take_for_guest(&self, out: &mut Vec<u8>) -> usize {
        let _ = self.link.kick.read();
        let mut b = lock(&self.link.buffers);
        let n = b.to_guest.len();
        out.extend(b.to_guest.drain(..));
        b.metrics.rx_bytes += n as u64;
        n
    }

    /// Hands bytes from the guest to the host (bounded: the oldest go first) and wakes a
    /// waiting [`HostPort::recv_until`].
    pub fn deliver_from_guest(&self, bytes: &[u8]) {
        push_bounded(&mut lock(&self.link.buffers), bytes);
        self.link.arrived.notify_all();
    }

    /// The descriptor that becomes readable when bytes for the guest are queued.
    pub fn kick_fd(&self) -> RawFd {
        self.link.kick.as_raw_fd()
    }
}

/// The host's end of a console port.
#[derive(Debug, Clone)]
pub struct HostPort {
    link: Arc<Link>,
}

impl HostPort {
    /// Queues `bytes` for the guest, all or none, and wakes the device.
    pub fn send(&self, bytes: &[u8]) -> Result<(), PortFull> {
        {
            let mut b = lock(&self.link.buffers);
            if b.to_guest.len() + bytes.len() > TO_GUEST_CAPACITY {
                return Err(PortFull(b.to_guest.len()));
            }
            b.to_guest.extend(bytes);
        }
        // A failed write leaves the counter non-zero anyway (it only fails on overflow).
        let _ = self.link.kick.write(1);
        Ok(())
    }

    /// Drops what was queued for the guest and not delivered yet; returns how much.
    pub fn discard_unsent(&self) -> usize {
        let mut b = lock(&self.link.buffers);
        let n = b.to_guest.len();
        b.to_guest.clear();
        n
    }

    /// Moves what the guest sent into `out`, waiting until something arrives or `deadline`
    /// passes. Returns the number of bytes moved (0: nothing came in time).
    pub fn recv_until(&self, out: &mut Vec<u8>, deadline: Instant) -> usize {
        let mut b = lock(&self.link.buffers);
        while b.from_guest.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return 0;
            }
            b = self
                .link
                .arrived
                .wait_timeout(b, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let n = b.from_guest.len();
        out.extend(b.from_guest.drain(..));
        n
    }

    /// The port's counters.
    pub fn metrics(&self) -> ConsoleMetrics {
        lock(&self.link.buffers).metrics
    }
}

/// virtio-console's own migration state: the port's bytes in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleState {
    /// Queued for the guest, not yet in a receive chain (at most [`TO_GUEST_CAPACITY`]).
    pub to_guest: Vec<u8>,
    /// From the guest, not yet read by the host (at most [`FROM_GUEST_CAPACITY`]).
    pub from_guest: Vec<u8>,
}

/// The queues while the driver runs the device.
struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
}

/// A virtio console device with one port.
pub struct Console {
    link: Arc<Link>,
    active: Option<Active>,
    /// A transmit chain's bytes (reused).
    tx_buf: Box<[u8]>,
    /// The current chain's buffers (reused).
    segments: Vec<Segment>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("active", &self.active.is_some())
            .finish()
    }
}

impl Console {
    /// A console and the host's end of its port.
    pub fn new() -> io::Result<(Console, HostPort)> {
        let (device, host) = port()?;
        Ok((Console::with_port(device), host))
    }

    /// A console serving the device end of a port.
    pub fn with_port(port: DevicePort) -> Console {
        Console {
            link: port.link,
            active: None,
            tx_buf: vec![0u8; MAX_TX_CHAIN].into_boxed_slice(),
            segments: Vec::with_capacity(usize::from(QUEUE_SIZE)),
        }
    }

    /// The port's counters.
    pub fn metrics(&self) -> ConsoleMetrics {
        lock(&self.link.buffers).metrics
    }

    /// Queue indexes and ring positions, for a later save (migration) and for tests.
    pub fn queue_states(&self) -> Option<[virtio_queue::QueueState; 2]> {
        self.active.as_ref().map(|a| [a.rx.state(), a.tx.state()])
    }

    /// Moves bytes queued for the guest into its receive chains until one side runs dry.
    fn receive(&mut self) -> Result<QueueSet, GuestError> {
        let mut b = lock(&self.link.buffers);
        let Some(active) = self.active.as_mut() else {
            b.metrics.rx_dropped += b.to_guest.len() as u64;
            b.to_guest.clear();
            return Ok(QueueSet::default());
        };
        let mem = &active.mem;
        let mut used = false;
        while !b.to_guest.is_empty() {
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
                1,
                u64::from(u32::MAX),
                &mut self.segments,
            )?;
            let n = usize::try_from(room)
                .unwrap_or(usize::MAX)
                .min(b.to_guest.len());
            let bytes = &b.to_guest.make_contiguous()[..n];
            let written = queue::write_segments(mem, &self.segments, bytes, RX)?;
            queue::add_used(&mut active.rx, RX, mem, head, written as u32)?;
            b.to_guest.drain(..written);
            b.metrics.rx_bytes += written as u64;
            used = true;
        }
        let mut signal = QueueSet::default();
        if used && queue::needs_interrupt(&mut active.rx, RX, mem)? {
            signal.insert(RX);
        }
        Ok(signal)
    }

    /// Takes every chain the driver made available on the transmit queue.
    fn transmit(&mut self) -> Result<QueueSet, GuestError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(QueueSet::default());
        };
        let mem = &active.mem;
        let mut used = false;
        let mut arrived = false;
        loop {
            queue::disable_notification(&mut active.tx, TX, mem)?;
            while let Some(head) = queue::pop_head(&mut active.tx, TX, mem)? {
                let total = queue::walk_chain(
                    &active.tx,
                    TX,
                    mem,
                    head,
                    Direction::DeviceReads,
                    0,
                    MAX_TX_CHAIN as u64,
                    &mut self.segments,
                )? as usize;
                let n = queue::read_segments(mem, &self.segments, &mut self.tx_buf[..total], TX)?;
                queue::add_used(&mut active.tx, TX, mem, head, 0)?;
                used = true;
                if n > 0 {
                    push_bounded(&mut lock(&self.link.buffers), &self.tx_buf[..n]);
                    arrived = true;
                }
                // (Not `DevicePort::deliver_from_guest`: one wake-up per batch, not per chain.)
            }
            if !queue::enable_notification(&mut active.tx, TX, mem)? {
                break;
            }
        }
        if arrived {
            self.link.arrived.notify_all();
        }
        let mut signal = QueueSet::default();
        if used && queue::needs_interrupt(&mut active.tx, TX, mem)? {
            signal.insert(TX);
        }
        Ok(signal)
    }
}

/// Appends the guest's `bytes`, dropping the oldest ones beyond [`FROM_GUEST_CAPACITY`].
fn push_bounded(b: &mut Buffers, bytes: &[u8]) {
    b.metrics.tx_bytes += bytes.len() as u64;
    let keep = bytes.len().min(FROM_GUEST_CAPACITY);
    let over = (b.from_guest.len() + keep).saturating_sub(FROM_GUEST_CAPACITY);
    b.from_guest.drain(..over);
    b.metrics.tx_dropped += (over + bytes.len() - keep) as u64;
    b.from_guest.extend(&bytes[bytes.len() - keep..]);
}

impl VirtioDevice for Console {
    fn name(&self) -> &'static str {
        "virtio-console"
    }

    fn save_device_state(&self) -> VirtioDeviceState {
        let b = lock(&self.link.buffers);
        VirtioDeviceState::Console(ConsoleState {
            to_guest: b.to_guest.iter().copied().collect(),
            from_guest: b.from_guest.iter().copied().collect(),
        })
    }

    fn check_device_state(&self, state: &VirtioDeviceState) -> Result<(), DeviceStateError> {
        let VirtioDeviceState::Console(s) = state else {
            return Err(DeviceStateError::mismatch(
                "virtio-console",
                "device kind",
                "the state is not a console's",
            ));
        };
        for (field, len, max) in [
            ("bytes for the guest", s.to_guest.len(), TO_GUEST_CAPACITY),
            (
                "bytes from the guest",
                s.from_guest.len(),
                FROM_GUEST_CAPACITY,
            ),
        ] {
            if len > max {
                return Err(DeviceStateError::invalid(
                    "virtio-console",
                    field,
                    format!("{len} bytes, at most {max} are kept"),
                ));
            }
        }
        Ok(())
    }

    fn apply_device_state(&mut self, state: VirtioDeviceState) {
        let VirtioDeviceState::Console(s) = state else {
            return;
        };
        let mut b = lock(&self.link.buffers);
        b.to_guest = s.to_guest.into();
        b.from_guest = s.from_guest.into();
        let waiting = !b.to_guest.is_empty();
        drop(b);
        if waiting {
            let _ = self.link.kick.write(1);
        }
        self.link.arrived.notify_all();
    }

    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.queue_states().map(Vec::from).unwrap_or_default()
    }

    fn device_type(&self) -> u16 {
        VIRTIO_ID_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // `virtio_console_config`: cols, rows and max_nr_ports mean nothing without SIZE and
        // MULTIPORT, emerg_wr reads as 0: all zeros.
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // emerg_wr needs EMERGENCY_WRITE, which is not offered.
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        _features: u64,
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
        self.active = Some(Active { mem, rx, tx });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
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
        vec![self.link.kick.as_raw_fd()]
    }

    fn device_event(&mut self, _index: usize) -> Result<QueueSet, GuestError> {
        // Reset the counter first: bytes queued after this point kick again.
        let _ = self.link.kick.read();
        self.receive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::pci::PciDevice;
    use crate::devices::pci::msix::{CONTROL_ENABLE, MsixVector};
    use crate::devices::virtio::pci::{IntxLine, MSIX_BAR, VIRTIO_BAR, VirtioPci};
    use crate::devices::virtio::{
        STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET,
    };
    use crate::devices::vm_ops::RecordingVmOps;
    use crate::io_thread::IoThread;
    use std::time::Duration;
    use vm_memory::{Address, Bytes, GuestAddress};

    const RAM: u64 = 0x10_0000;
    const QSIZE: u16 = 8;
    const BUFFERS: u64 = 0x8_0000;
    const FEATURES: u64 = VIRTIO_F_VERSION_1;

    fn rings(q: usize) -> (u64, u64, u64) {
        let base = 0x1_0000 + 0x1_0000 * q as u64;
        (base, base + 0x1000, base + 0x2000)
    }

    /// A guest driver for the console, programming the transport as a guest would.
    struct Guest {
        dev: VirtioPci<Console>,
        host: HostPort,
        mem: GuestMemoryMmap,
        msix: Vec<EventFd>,
        next_desc: [u16; 2],
        avail_idx: [u16; 2],
    }

    impl Guest {
        fn new() -> Guest {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
            Guest::with_memory(mem)
        }

        fn with_memory(mem: GuestMemoryMmap) -> Guest {
            let (console, host) = Console::new().unwrap();
            let vectors: Vec<MsixVector> = (0..2)
                .map(|i| MsixVector {
                    gsi: 24 + i,
                    irqfd: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                })
                .collect();
            let msix = vectors
                .iter()
                .map(|v| v.irqfd.try_clone().unwrap())
                .collect();
            let dev = VirtioPci::new(
                console,
                mem.clone(),
                Arc::new(RecordingVmOps::default()),
                vectors,
                Some(IntxLine { gsi: 17 }),
            )
            .unwrap();
            Guest {
                dev,
                host,
                mem,
                msix,
                next_desc: [0; 2],
                avail_idx: [0; 2],
            }
        }

        fn write(&mut self, offset: u64, value: u64, len: usize) {
            self.dev
                .write_bar(VIRTIO_BAR, offset, &value.to_le_bytes()[..len]);
        }

        fn read(&mut self, offset: u64, len: usize) -> u64 {
            let mut b = [0u8; 8];
            self.dev.read_bar(VIRTIO_BAR, offset, &mut b[..len]);
            u64::from_le_bytes(b)
        }

        fn status(&mut self) -> u8 {
            self.read(0x14, 1) as u8
        }

        fn needs_reset(&mut self) -> bool {
            self.status() & STATUS_NEEDS_RESET != 0
        }

        fn enable_msix(&mut self) {
            // The MSI-X capability is the first one (VirtioPci adds it first).
            let cap = (self.dev.read_config(0x34) & 0xFF) as usize;
            assert_eq!(self.dev.read_config(cap) as u8, 0x11);
            let control = (self.dev.read_config(cap) >> 16) as u16;
            self.dev
                .write_config(cap + 2, &(control | CONTROL_ENABLE).to_le_bytes());
            for v in 0..2u64 {
                self.dev
                    .write_bar(MSIX_BAR, v * 16, &0xFEE0_0000u64.to_le_bytes());
                self.dev
                    .write_bar(MSIX_BAR, v * 16 + 8, &(0x40 + v as u32).to_le_bytes());
                self.dev
                    .write_bar(MSIX_BAR, v * 16 + 12, &0u32.to_le_bytes());
            }
        }

        /// Features, both queues at [`rings`] (RX on vector 0, TX none), DRIVER_OK.
        fn init(&mut self, features: u64) {
            self.write(0x14, 0, 1);
            self.write(0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
            self.write(0x08, 0, 4);
            self.write(0x0C, features & 0xFFFF_FFFF, 4);
            self.write(0x08, 1, 4);
            self.write(0x0C, features >> 32, 4);
            let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
            self.write(0x14, u64::from(s), 1);
            assert_ne!(self.status() & STATUS_FEATURES_OK, 0, "features refused");
            for (q, vector) in [(RX, 0u64), (TX, 0xFFFF)] {
                let (desc, avail, used) = rings(q);
                self.write(0x16, q as u64, 2);
                self.write(0x18, u64::from(QSIZE), 2);
                self.write(0x1A, vector, 2);
                self.write(0x20, desc, 8);
                self.write(0x28, avail, 8);
                self.write(0x30, used, 8);
                self.write(0x1C, 1, 2);
            }
            self.write(0x10, 1, 2);
            self.write(0x14, u64::from(s | STATUS_DRIVER_OK), 1);
        }

        fn write_desc(&self, q: usize, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
            let at = rings(q).0 + 16 * u64::from(index);
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            self.mem.write_slice(&d, GuestAddress(at)).unwrap();
        }

        fn publish(&mut self, q: usize, head: u16) {
            let avail = rings(q).1;
            let slot = u64::from(self.avail_idx[q] % QSIZE);
            self.mem
                .write_obj(head, GuestAddress(avail + 4 + 2 * slot))
                .unwrap();
            self.avail_idx[q] = self.avail_idx[q].wrapping_add(1);
            self.mem
                .write_obj(self.avail_idx[q], GuestAddress(avail + 2))
                .unwrap();
        }

        fn take_desc(&mut self, q: usize) -> u16 {
            let d = self.next_desc[q];
            self.next_desc[q] = (d + 1) % QSIZE;
            d
        }

        /// Posts a `len`-byte receive buffer; returns its address.
        fn add_rx_buffer(&mut self, len: u32) -> u64 {
            let d = self.take_desc(RX);
            let addr = BUFFERS + 0x1000 * u64::from(d);
            self.write_desc(RX, d, addr, len, 2, 0);
            self.publish(RX, d);
            addr
        }

        /// Sends `bytes` as a chain of buffers of at most `piece` bytes each.
        fn add_tx(&mut self, bytes: &[u8], piece: usize) {
            let pieces: Vec<&[u8]> = bytes.chunks(piece.max(1)).collect();
            let descs: Vec<u16> = pieces.iter().map(|_| self.take_desc(TX)).collect();
            for (i, p) in pieces.iter().enumerate() {
                let addr = BUFFERS + 0x4_0000 + 0x1000 * u64::from(descs[i]);
                self.mem.write_slice(p, GuestAddress(addr)).unwrap();
                let (flags, next) = match descs.get(i + 1) {
                    Some(&n) => (1, n),
                    None => (0, 0),
                };
                self.write_desc(TX, descs[i], addr, p.len() as u32, flags, next);
            }
            self.publish(TX, descs[0]);
        }

        fn used_idx(&self, q: usize) -> u16 {
            self.mem.read_obj(GuestAddress(rings(q).2 + 2)).unwrap()
        }

        fn used(&self, q: usize, i: u16) -> (u32, u32) {
            let at = rings(q).2 + 4 + 8 * u64::from(i % QSIZE);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            (id, len)
        }

        fn bytes_at(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut b = vec![0u8; len];
            self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
            b
        }

        /// What the I/O thread does when the host queued bytes.
        fn host_ready(&mut self) {
            self.dev.device_event(0);
        }

        fn kick(&mut self, q: usize) {
            self.dev.queue_notified(q);
        }

        fn recv_now(&self) -> Vec<u8> {
            let mut out = Vec::new();
            self.host.recv_until(&mut out, Instant::now());
            out
        }
    }

    fn running() -> Guest {
        let mut g = Guest::new();
        g.enable_msix();
        g.init(FEATURES);
        g
    }

    #[test]
    fn bytes_in_flight_and_queue_positions_cross_a_save_and_restore() {
        let mut g = running();
        g.add_rx_buffer(4);
        g.kick(RX);
        g.host.send(b"abcdef").unwrap();
        g.host_ready(); // "abcd" delivered, "ef" waits for a buffer
        g.add_tx(b"reply", 2);
        g.kick(TX);
        let saved = g.dev.save_state();
        assert_eq!(
            saved.device,
            VirtioDeviceState::Console(ConsoleState {
                to_guest: b"ef".to_vec(),
                from_guest: b"reply".to_vec(),
            })
        );
        let mut m = Guest::with_memory(g.mem.clone());
        m.dev.restore_state(saved.clone()).unwrap();
        assert_eq!(m.dev.save_state(), saved);
        (m.next_desc, m.avail_idx) = (g.next_desc, g.avail_idx);
        let b = m.add_rx_buffer(64);
        m.kick(RX);
        assert_eq!(m.used_idx(RX), 2);
        assert_eq!(m.used(RX, 1), (1, 2));
        assert_eq!(m.bytes_at(b, 2), b"ef", "the stream continues");
        assert_eq!(m.recv_now(), b"reply");
        m.add_tx(b"!", 1);
        m.kick(TX);
        assert_eq!(m.recv_now(), b"!");
        assert_eq!(m.used_idx(TX), 2, "one used entry per chain, continuing");
        // Over-long byte queues and another kind's state are refused.
        let mut bad = saved.clone();
        bad.device = VirtioDeviceState::Console(ConsoleState {
            to_guest: vec![0; TO_GUEST_CAPACITY + 1],
            from_guest: Vec::new(),
        });
        let mut fresh = Guest::with_memory(g.mem.clone());
        assert!(fresh.dev.restore_state(bad).is_err());
        assert_eq!(fresh.status(), 0);
    }

    #[test]
    fn the_device_is_a_modern_virtio_console() {
        let mut g = Guest::new();
        let ids = g.dev.read_config(0);
        assert_eq!(ids, 0x1043_1AF4, "1AF4:1043");
        assert_eq!(g.dev.read_config(0x2C) >> 16, 3, "subsystem: console");
        g.write(0x00, 0, 4);
        assert_eq!(g.read(0x04, 4), VIRTIO_RING_F_EVENT_IDX);
        g.write(0x00, 1, 4);
        assert_eq!(g.read(0x04, 4), 1, "VERSION_1");
        assert_eq!(g.read(0x12, 2), 2, "two queues: no multiport");
        assert_eq!(g.read(0x2000, 4), 0, "no size, no ports");
    }

    #[test]
    fn host_bytes_fill_receive_chains_as_a_stream() {
        let mut g = running();
        let a = g.add_rx_buffer(4);
        let b = g.add_rx_buffer(100);
        g.kick(RX);
        g.host.send(b"hello, guest").unwrap();
        g.host_ready();
        assert_eq!(g.used_idx(RX), 2);
        assert_eq!(g.used(RX, 0), (0, 4));
        assert_eq!(g.used(RX, 1), (1, 8));
        assert_eq!(g.bytes_at(a, 4), b"hell");
        assert_eq!(g.bytes_at(b, 8), b"o, guest");
        assert!(g.msix[0].read().is_ok(), "receive vector");
        assert_eq!(g.dev.device().metrics().rx_bytes, 12);
    }

    #[test]
    fn without_buffers_host_bytes_wait_for_the_drivers_kick() {
        let mut g = running();
        g.host.send(b"abc").unwrap();
        g.host_ready();
        assert_eq!(g.used_idx(RX), 0);
        g.host.send(b"def").unwrap();
        g.host_ready();
        let a = g.add_rx_buffer(64);
        g.kick(RX);
        assert_eq!(g.used(RX, 0), (0, 6));
        assert_eq!(g.bytes_at(a, 6), b"abcdef", "in order, nothing lost");
    }

    #[test]
    fn bytes_sent_before_the_driver_runs_are_dropped() {
        let mut g = Guest::new();
        g.host.send(b"stale request").unwrap();
        g.host_ready();
        assert_eq!(g.dev.device().metrics().rx_dropped, 13);
        g.enable_msix();
        g.init(FEATURES);
        g.add_rx_buffer(64);
        g.kick(RX);
        assert_eq!(g.used_idx(RX), 0, "nothing stale delivered");
    }

    #[test]
    fn guest_chains_reach_the_host_in_order() {
        let mut g = running();
        g.add_tx(b"first ", 100);
        g.add_tx(b"second, in three pieces", 8);
        g.kick(TX);
        assert_eq!(g.recv_now(), b"first second, in three pieces");
        assert_eq!(g.used_idx(TX), 2);
        assert_eq!(g.used(TX, 0), (0, 0));
        assert_eq!(g.dev.device().metrics().tx_bytes, 29);
        assert!(g.msix[1].read().is_err(), "transmitq has no vector");
    }

    #[test]
    fn the_host_waits_for_guest_bytes_until_its_deadline() {
        let g = running();
        let start = Instant::now();
        let mut out = Vec::new();
        let n = g
            .host
            .recv_until(&mut out, start + Duration::from_millis(30));
        assert_eq!(n, 0);
        assert!(start.elapsed() >= Duration::from_millis(30));
        let host = g.host.clone();
        let dev = Arc::new(Mutex::new(g));
        let writer = {
            let dev = dev.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                let mut g = dev.lock().unwrap();
                g.add_tx(b"late", 16);
                g.kick(TX);
            })
        };
        let n = host.recv_until(&mut out, Instant::now() + Duration::from_secs(5));
        writer.join().unwrap();
        assert_eq!((n, &out[..]), (4, &b"late"[..]));
    }

    #[test]
    fn both_directions_are_bounded() {
        let mut g = running();
        assert_eq!(g.host.send(&vec![0; TO_GUEST_CAPACITY]), Ok(()));
        assert_eq!(g.host.send(b"x"), Err(PortFull(TO_GUEST_CAPACITY)));
        assert_eq!(g.host.discard_unsent(), TO_GUEST_CAPACITY);
        assert_eq!(g.host.send(b"x"), Ok(()));
        // The guest outruns the host: the oldest bytes go.
        for i in 0..20u8 {
            g.add_tx(&vec![i; 4096], 4096);
            g.kick(TX);
        }
        let got = g.recv_now();
        assert_eq!(got.len(), FROM_GUEST_CAPACITY);
        assert_eq!(got[0], 4, "the first 4 chunks were dropped");
        assert_eq!(*got.last().unwrap(), 19);
        assert_eq!(g.dev.device().metrics().tx_dropped, 4 * 4096);
        let mut b = Buffers::default();
        push_bounded(&mut b, &vec![7; FROM_GUEST_CAPACITY + 10]);
        assert_eq!(b.from_guest.len(), FROM_GUEST_CAPACITY);
        assert_eq!(b.metrics.tx_dropped, 10);
    }

    fn fails_on(corrupt: impl FnOnce(&mut Guest), q: usize) {
        let mut g = running();
        corrupt(&mut g);
        match q {
            RX => {
                g.host.send(b"data").unwrap();
                g.host_ready();
            }
            _ => g.kick(TX),
        }
        assert!(g.needs_reset(), "status {:#x}", g.status());
        assert!(g.msix[1].read().is_ok(), "configuration interrupt");
        // A failed device does nothing more until reset.
        let before = (g.used_idx(RX), g.used_idx(TX));
        g.add_tx(b"more", 4);
        g.kick(TX);
        assert_eq!((g.used_idx(RX), g.used_idx(TX)), before);
        g.write(0x14, 0, 1);
        assert_eq!(g.status(), 0);
    }

    #[test]
    fn bad_descriptors_fail_the_device_cleanly() {
        // Transmit buffer outside RAM, or wrapping.
        fails_on(
            |g| {
                g.write_desc(TX, 0, RAM - 8, 64, 0, 0);
                g.publish(TX, 0);
            },
            TX,
        );
        fails_on(
            |g| {
                g.write_desc(TX, 0, u64::MAX - 4, 64, 0, 0);
                g.publish(TX, 0);
            },
            TX,
        );
        // Device-writable buffer in a transmit chain; read-only one in a receive chain.
        fails_on(
            |g| {
                g.write_desc(TX, 0, BUFFERS, 64, 2, 0);
                g.publish(TX, 0);
            },
            TX,
        );
        fails_on(
            |g| {
                g.write_desc(RX, 0, BUFFERS, 64, 0, 0);
                g.publish(RX, 0);
            },
            RX,
        );
        // A zero-length receive chain (it would have to come back with length 0).
        fails_on(
            |g| {
                g.write_desc(RX, 0, BUFFERS, 0, 2, 0);
                g.publish(RX, 0);
            },
            RX,
        );
        // Indirect (not offered), a loop, `next` and head past the queue size.
        fails_on(
            |g| {
                g.write_desc(TX, 0, BUFFERS, 64, 4, 0);
                g.publish(TX, 0);
            },
            TX,
        );
        fails_on(
            |g| {
                g.write_desc(TX, 0, BUFFERS, 64, 1, 1);
                g.write_desc(TX, 1, BUFFERS, 64, 1, 0);
                g.publish(TX, 0);
            },
            TX,
        );
        fails_on(
            |g| {
                g.write_desc(TX, 0, BUFFERS, 64, 1, QSIZE);
                g.publish(TX, 0);
            },
            TX,
        );
        fails_on(|g| g.publish(TX, QSIZE + 1), TX);
        // Available index more than the queue size ahead.
        fails_on(
            |g| {
                g.mem
                    .write_obj(QSIZE + 1, GuestAddress(rings(TX).1 + 2))
                    .unwrap();
            },
            TX,
        );
        // A transmit chain longer than the device takes.
        fails_on(
            |g| {
                g.write_desc(TX, 0, BUFFERS, 0x8000, 1, 1);
                g.write_desc(TX, 1, BUFFERS, 0x8001, 0, 0);
                g.publish(TX, 0);
            },
            TX,
        );
    }

    #[test]
    fn a_queue_left_disabled_fails_at_driver_ok() {
        let mut g = Guest::new();
        g.write(0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
        g.write(0x08, 1, 4);
        g.write(0x0C, 1, 4);
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        g.write(0x14, u64::from(s), 1);
        g.write(0x14, u64::from(s | STATUS_DRIVER_OK), 1);
        assert!(g.needs_reset());
        assert!(g.dev.device().queue_states().is_none());
    }

    #[test]
    fn reset_forgets_the_queues_and_drops_pending_bytes() {
        let mut g = running();
        g.host.send(b"pending").unwrap();
        g.host_ready();
        assert!(g.dev.device().queue_states().is_some());
        g.write(0x14, 0, 1);
        assert!(g.dev.device().queue_states().is_none());
        g.host_ready();
        assert_eq!(g.dev.device().metrics().rx_dropped, 7);
    }

    #[test]
    fn bytes_flow_both_ways_through_the_io_thread() {
        let mut g = running();
        let buf = g.add_rx_buffer(64);
        let Guest { dev, host, mem, .. } = g;
        let dev = Arc::new(Mutex::new(dev));
        let thread = IoThread::spawn(vec![Box::new(VirtioPci::io_handler(&dev))]).unwrap();
        host.send(b"ping").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let used_idx = || -> u16 { mem.read_obj(GuestAddress(rings(RX).2 + 2)).unwrap() };
        while used_idx() < 1 {
            assert!(Instant::now() < deadline, "bytes not delivered");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut got = [0u8; 4];
        mem.read_slice(&mut got, GuestAddress(buf)).unwrap();
        assert_eq!(&got, b"ping");
        // The guest answers through the transmit queue and a notify write.
        let (desc, avail, _) = rings(TX);
        mem.write_slice(b"pong", GuestAddress(BUFFERS + 0x4_0000))
            .unwrap();
        let d = GuestAddress(desc);
        mem.write_obj(BUFFERS + 0x4_0000, d).unwrap();
        mem.write_obj(4u32, d.unchecked_add(8)).unwrap();
        mem.write_obj(0u16, d.unchecked_add(12)).unwrap();
        mem.write_obj(0u16, GuestAddress(avail + 4)).unwrap();
        mem.write_obj(1u16, GuestAddress(avail + 2)).unwrap();
        dev.lock()
            .unwrap()
            .write_bar(VIRTIO_BAR, 0x3004, &1u16.to_le_bytes());
        let mut out = Vec::new();
        host.recv_until(&mut out, deadline);
        assert_eq!(out, b"pong");
        drop(thread);
    }

    #[test]
    fn an_agent_request_and_its_reply_cross_the_queues() {
        use agent_proto::{Decoded, MAX_FRAME, Nic, Reply, Request, Status, SwitchError};
        use migration_client::{Agent, NicControl};
        struct Nics(Status);
        impl NicControl for Nics {
            fn switch(&mut self, nic: Nic) -> Result<(), SwitchError> {
                self.0.active = Some(nic);
                Ok(())
            }
            fn status(&self) -> Status {
                self.0
            }
        }
        let mut g = running();
        let buf = g.add_rx_buffer(4096);
        g.kick(RX);
        let mut frame = [0u8; MAX_FRAME];
        let n = agent_proto::encode(77, &Request::Switch(Nic::Vf), &mut frame);
        g.host.send(&frame[..n]).unwrap();
        g.host_ready();
        // The guest side: what landed in its buffer goes to the real agent.
        let (_, len) = g.used(RX, 0);
        let input = g.bytes_at(buf, len as usize);
        let mut replies = Vec::new();
        Agent::new().on_input(&input, &mut Nics(Status::default()), &mut |r: &[u8]| {
            replies.push(r.to_vec())
        });
        assert_eq!(replies.len(), 1);
        g.add_tx(&replies[0], 4096);
        g.kick(TX);
        let got = g.recv_now();
        let Decoded::Frame { seq, message, .. } = agent_proto::decode::<Reply>(&got) else {
            panic!("{got:x?}")
        };
        assert_eq!(seq, 77);
        assert!(matches!(message, Reply::Status(s) if s.active == Some(Nic::Vf)));
    }

    mod property {
        //! Arbitrary descriptors and indexes: never a panic; either the bytes move intact
        //! and in order, or the device ends in DEVICE_NEEDS_RESET.

        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        struct Desc {
            addr: u64,
            len: u32,
            flags: u16,
            next: u16,
        }

        fn desc(q: usize) -> impl Strategy<Value = Desc> {
            let addr = prop_oneof![
                12 => BUFFERS..RAM - 0x2000,
                1 => 0..RAM,
                1 => any::<u64>(),
            ];
            let len = prop_oneof![12 => 0u32..512, 1 => any::<u32>()];
            let write = if q == RX { 2u16 } else { 0 };
            let flags = prop_oneof![12 => Just(write), 2 => Just(write | 1), 1 => any::<u16>()];
            let next = prop_oneof![12 => 0..QSIZE, 1 => any::<u16>()];
            (addr, len, flags, next).prop_map(|(addr, len, flags, next)| Desc {
                addr,
                len,
                flags,
                next,
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_rings_never_panic(
                rx in proptest::collection::vec(desc(RX), QSIZE as usize),
                tx in proptest::collection::vec(desc(TX), QSIZE as usize),
                heads in proptest::collection::vec(0u16..QSIZE + 2, 2 * QSIZE as usize),
                avail in (0u16..QSIZE + 2, 0u16..QSIZE + 2),
                sends in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..5),
                kicks in proptest::collection::vec(0u8..3, 1..10),
            ) {
                let mut g = running();
                for (q, descs) in [(RX, &rx), (TX, &tx)] {
                    for (i, d) in descs.iter().enumerate() {
                        g.write_desc(q, i as u16, d.addr, d.len, d.flags, d.next);
                    }
                    let a = rings(q).1;
                    for i in 0..QSIZE {
                        let h = heads[q * QSIZE as usize + usize::from(i)];
                        g.mem.write_obj(h, GuestAddress(a + 4 + 2 * u64::from(i))).unwrap();
                    }
                }
                g.mem.write_obj(avail.0, GuestAddress(rings(RX).1 + 2)).unwrap();
                g.mem.write_obj(avail.1, GuestAddress(rings(TX).1 + 2)).unwrap();
                let mut sent = Vec::new();
                for s in &sends {
                    if g.host.send(s).is_ok() {
                        sent.extend_from_slice(s);
                    }
                }
                for k in &kicks {
                    match k {
                        0 => g.kick(RX),
                        1 => g.kick(TX),
                        _ => g.host_ready(),
                    }
                }
                let m = g.dev.device().metrics();
                prop_assert!(m.rx_bytes <= sent.len() as u64);
                // Receive buffers over the rings let the device overwrite its own used
                // entries (legal, but then the lengths below mean nothing).
                let no_aliasing = rx.iter().all(|d| d.addr >= BUFFERS);
                if !g.needs_reset() && no_aliasing {
                    // Every used receive element has a length of at least 1.
                    for i in 0..g.used_idx(RX) {
                        prop_assert!(g.used(RX, i).1 >= 1);
                    }
                }
            }
        }
    }
}
