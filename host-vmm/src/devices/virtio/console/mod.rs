//! virtio-console (virtio 1.x, 5.3) with one port: the byte pipe between the control server
//! (the control plane) and the guest agent.
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
//!   [`HostPort::recv_until`] waiting for them is woken. At most [`TX_BUDGET`] chains are
//!   taken per wake: a guest that keeps its transmit queue full (a chattering console) gets
//!   the rest served on the device's second event fd, after the I/O thread's other work.
//!
//! A receive chain is never returned with length 0 (virtio-drivers' driver asserts on that):
//! zero-length receive chains are a guest error, like every other bad descriptor, which sets
//! DEVICE_NEEDS_RESET through the transport.
//!
//! Migration state ([`ConsoleState`]): the port's two byte queues, bytes for the guest not
//! yet delivered and bytes from the guest the host has not read, so the stream continues on
//! the destination. Queue positions are the transport's.
//!
//! Layout: this file is the device and its port; `state.rs` holds [`ConsoleState`] and
//! `tests.rs` the unit tests.

mod state;

#[cfg(test)]
mod tests;

pub use state::ConsoleState;

use super::queue::{self, Direction, Segment};
use super::{
    GuestError, QueueSet, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VirtioDevice,
    VirtioDeviceState,
};
use crate::devices::DeviceStateError;
use crate::memory::GuestMemoryMmap;
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
/// Most transmit chains taken in one wake of the I/O thread (one full queue).
pub const TX_BUDGET: usize = QUEUE_SIZE as usize;
/// [`VirtioDevice::event_fds`] index of "bytes for the guest were queued".
const EVENT_TO_GUEST: usize = 0;
/// [`VirtioDevice::event_fds`] index of "transmit chains were left for the next wake".
const EVENT_TX_MORE: usize = 1;

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
    /// Written when a wake left transmit chains behind ([`TX_BUDGET`]).
    tx_more: EventFd,
    /// Chains taken per wake ([`TX_BUDGET`]; smaller in tests).
    tx_budget: usize,
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
        Ok((Console::with_port(device)?, host))
    }

    /// A console serving the device end of a port.
    pub fn with_port(port: DevicePort) -> io::Result<Console> {
        Ok(Console {
            link: port.link,
            active: None,
            tx_more: EventFd::new(libc::EFD_NONBLOCK)?,
            tx_budget: TX_BUDGET,
            tx_buf: vec![0u8; MAX_TX_CHAIN].into_boxed_slice(),
            segments: Vec::with_capacity(usize::from(QUEUE_SIZE)),
        })
    }

    /// Takes at most `chains` transmit chains per wake (tests of the budget).
    #[cfg(test)]
    pub(crate) fn set_tx_budget(&mut self, chains: usize) {
        self.tx_budget = chains.max(1);
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

    /// Takes the chains the driver made available on the transmit queue, at most
    /// `tx_budget` of them; if more wait, [`EVENT_TX_MORE`] brings the I/O thread back for
    /// them (notifications stay off until then).
    fn transmit(&mut self) -> Result<QueueSet, GuestError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(QueueSet::default());
        };
        let mem = &active.mem;
        let mut used = false;
        let mut arrived = false;
        let mut budget = self.tx_budget;
        loop {
            queue::disable_notification(&mut active.tx, TX, mem)?;
            while budget > 0
                && let Some(head) = queue::pop_head(&mut active.tx, TX, mem)?
            {
                budget -= 1;
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
            if budget == 0 {
                // Bounded work per wake: the rest, if any, on the next one.
                let _ = self.tx_more.write(1);
                break;
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
        // In the order of EVENT_TO_GUEST and EVENT_TX_MORE.
        vec![self.link.kick.as_raw_fd(), self.tx_more.as_raw_fd()]
    }

    fn device_event(&mut self, index: usize) -> Result<QueueSet, GuestError> {
        match index {
            EVENT_TO_GUEST => {
                // Reset the counter first: bytes queued after this point kick again.
                let _ = self.link.kick.read();
                self.receive()
            }
            EVENT_TX_MORE => {
                let _ = self.tx_more.read();
                self.transmit()
            }
            _ => Ok(QueueSet::default()),
        }
    }
}
