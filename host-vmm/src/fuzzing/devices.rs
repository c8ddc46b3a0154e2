//! The devices' guest-facing side driven by a fuzz input: a small guest memory the input
//! writes (descriptor tables, rings, buffers, whatever it likes), the device's registers
//! written as a driver would, queue kicks, frames and bytes from the host side, and
//! migrations (save, then restore into a fresh device, which must accept its own state).
//!
//! An input is a header, then operations ([`Op`]) until it runs out or [`MAX_OPS`] ran.
//! [`Op::encode`] writes one, for the seeds.

use super::input::Input;
use crate::device_manager::DevicesState;
use crate::device_manager::persisted::Persisted;
use crate::devices::DeviceStateError;
use crate::devices::Persist;
use crate::devices::ixgbevf::Ixgbevf;
use crate::devices::pci::msix::{CONTROL_ENABLE, MsixVector};
use crate::devices::pci::{PciDevice, PciRoot};
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::console::{Console, HostPort};
use crate::devices::virtio::net::Net;
use crate::devices::virtio::net::backend::{MemBackend, MemPeer, mem_pair};
use crate::devices::virtio::pci::{IntxLine, MSIX_BAR, VIRTIO_BAR, VIRTIO_BAR_SIZE, VirtioPci};
use crate::devices::virtio::{
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, VirtioDevice,
};
use crate::devices::vm_ops::RecordingVmOps;
use crate::memory::GuestMemoryMmap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

/// Guest RAM of the fuzzed machine: small, so the input can reach all of it.
pub const RAM: u64 = 0x2_0000;
/// Most operations one input runs.
pub const MAX_OPS: usize = 512;
/// The MAC every fuzzed NIC has.
pub const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// Most bytes one host-side frame or message carries.
const MAX_HOST_BYTES: usize = 4096;

/// One step of a fuzz input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Guest memory write at `addr` (modulo [`RAM`]).
    Mem {
        /// Where.
        addr: u32,
        /// What (at most 255 bytes).
        bytes: Vec<u8>,
    },
    /// A register write of `len` (1, 2, 4 or 8) bytes of `value` at `offset` in BAR `bar`.
    Bar {
        /// Which BAR (the device's two).
        bar: u8,
        /// Offset in it.
        offset: u16,
        /// Bytes written.
        len: u8,
        /// Value.
        value: u64,
    },
    /// A register read (reads have side effects: read-to-clear bits).
    Read {
        /// Which BAR.
        bar: u8,
        /// Offset in it.
        offset: u16,
    },
    /// A configuration-space write of `len` bytes.
    Config {
        /// Offset.
        offset: u8,
        /// Bytes written (1, 2 or 4).
        len: u8,
        /// Value.
        value: u32,
    },
    /// The driver kicks queue `queue` (virtio) / the I/O thread polls the backend (VF).
    Kick {
        /// Queue index.
        queue: u8,
    },
    /// A frame (NICs) or bytes (console) from the host side, then the device's event.
    Host {
        /// The bytes (at most [`MAX_HOST_BYTES`]).
        bytes: Vec<u8>,
    },
    /// The host reads what the guest sent.
    Drain,
    /// Save, restore into a fresh device on the same memory, go on with that one.
    Migrate,
    /// Device-specific operator action (VF: link down/up, hot reset).
    Operator {
        /// Which.
        what: u8,
    },
}

impl Op {
    /// Appends the op's encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Op::Mem { addr, bytes } => {
                out.push(0);
                out.extend_from_slice(&addr.to_le_bytes());
                let bytes = &bytes[..bytes.len().min(255)];
                out.push(bytes.len() as u8);
                out.extend_from_slice(bytes);
            }
            Op::Bar {
                bar,
                offset,
                len,
                value,
            } => {
                out.push(1);
                out.push(*bar);
                out.extend_from_slice(&offset.to_le_bytes());
                out.push(*len);
                out.extend_from_slice(&value.to_le_bytes());
            }
            Op::Read { bar, offset } => {
                out.push(2);
                out.push(*bar);
                out.extend_from_slice(&offset.to_le_bytes());
            }
            Op::Config { offset, len, value } => {
                out.push(3);
                out.push(*offset);
                out.push(*len);
                out.extend_from_slice(&value.to_le_bytes());
            }
            Op::Kick { queue } => out.extend_from_slice(&[4, *queue]),
            Op::Host { bytes } => {
                out.push(5);
                let bytes = &bytes[..bytes.len().min(MAX_HOST_BYTES)];
                out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
                out.extend_from_slice(bytes);
            }
            Op::Drain => out.push(6),
            Op::Migrate => out.push(7),
            Op::Operator { what } => out.extend_from_slice(&[8, *what]),
        }
    }

    /// The next op of `input` (`None` once it is empty).
    fn decode(input: &mut Input<'_>) -> Option<Op> {
        if input.is_empty() {
            return None;
        }
        Some(match input.u8() % 9 {
            0 => {
                let addr = input.u32();
                let len = usize::from(input.u8());
                Op::Mem {
                    addr,
                    bytes: input.bytes(len).to_vec(),
                }
            }
            1 => Op::Bar {
                bar: input.u8(),
                offset: input.u16(),
                len: input.u8(),
                value: input.u64(),
            },
            2 => Op::Read {
                bar: input.u8(),
                offset: input.u16(),
            },
            3 => Op::Config {
                offset: input.u8(),
                len: input.u8(),
                value: input.u32(),
            },
            4 => Op::Kick { queue: input.u8() },
            5 => {
                let len = usize::from(input.u16()) % (MAX_HOST_BYTES + 1);
                Op::Host {
                    bytes: input.bytes(len).to_vec(),
                }
            }
            6 => Op::Drain,
            7 => Op::Migrate,
            _ => Op::Operator { what: input.u8() },
        })
    }
}

/// The ops of `input`, at most [`MAX_OPS`].
fn ops<'a>(input: &'a mut Input<'_>) -> impl Iterator<Item = Op> + 'a {
    std::iter::from_fn(|| Op::decode(input)).take(MAX_OPS)
}

/// 1, 2, 4 or 8 from any byte.
fn access_len(len: u8, max: usize) -> usize {
    (1usize << (len % 4)).min(max)
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)])
        .expect("a small anonymous mapping")
}

/// `count` MSI-X lines on fresh eventfds.
fn vectors(count: u32) -> Vec<MsixVector> {
    (0..count)
        .map(|i| MsixVector {
            gsi: 24 + i,
            irqfd: EventFd::new(libc::EFD_NONBLOCK).expect("an eventfd"),
        })
        .collect()
}

fn write_mem(mem: &GuestMemoryMmap, addr: u32, bytes: &[u8]) {
    let start = u64::from(addr) % RAM;
    let n = bytes.len().min((RAM - start) as usize);
    let _ = mem.write_slice(&bytes[..n], GuestAddress(start));
}

/// Runs `op` if every device takes it alike (a guest memory write, a register or
/// configuration-space access); hands any other op back. `bar_of` maps an op's BAR byte to
/// the device's BAR and its size.
fn guest_access(
    dev: &mut impl PciDevice,
    mem: &GuestMemoryMmap,
    op: Op,
    bar_of: impl Fn(u8) -> (usize, u64),
) -> Option<Op> {
    match op {
        Op::Mem { addr, bytes } => write_mem(mem, addr, &bytes),
        Op::Bar {
            bar,
            offset,
            len,
            value,
        } => {
            let (bar, size) = bar_of(bar);
            let len = access_len(len, 8);
            dev.write_bar(bar, u64::from(offset) % size, &value.to_le_bytes()[..len]);
        }
        Op::Read { bar, offset } => {
            let (bar, size) = bar_of(bar);
            let mut b = [0u8; 4];
            dev.read_bar(bar, u64::from(offset) % size, &mut b);
        }
        Op::Config { offset, len, value } => {
            let len = access_len(len, 4);
            dev.write_config(usize::from(offset), &value.to_le_bytes()[..len]);
        }
        other => return Some(other),
    }
    None
}

/// Turns MSI-X on with every vector unmasked, as a driver does first.
fn enable_msix(dev: &mut impl PciDevice) {
    if let Some(cap) = capability(dev, 0x11) {
        dev.write_config(cap + 2, &CONTROL_ENABLE.to_le_bytes());
    }
}

// ---------------------------------------------------------------------------------------
// virtio-net and virtio-console behind the PCI transport.

/// A virtio device as the fuzzer drives it, with its host end.
trait Fuzzed: VirtioDevice + Sized + 'static {
    /// The host's end (backend peer, console port).
    type Host;
    /// A fresh device and its host end.
    fn make() -> (Self, Self::Host);
    /// Bytes from the host side.
    fn host_input(host: &Self::Host, bytes: &[u8]);
    /// The host reads what the guest sent.
    fn host_drain(host: &Self::Host);
    /// What a move does with the device before saving it.
    fn before_save(&mut self) {}
}

impl Fuzzed for Net<MemBackend> {
    type Host = MemPeer;
    fn make() -> (Self, MemPeer) {
        let (backend, peer) = mem_pair().expect("an eventfd");
        (Net::new(backend, MAC), peer)
    }
    fn host_input(host: &MemPeer, bytes: &[u8]) {
        if !bytes.is_empty() {
            host.inject(bytes);
        }
    }
    fn host_drain(host: &MemPeer) {
        while host.take().is_some() {}
    }
    fn before_save(&mut self) {
        self.hold_backend_frames();
    }
}

impl Fuzzed for Console {
    type Host = HostPort;
    fn make() -> (Self, HostPort) {
        Console::new().expect("an eventfd")
    }
    fn host_input(host: &HostPort, bytes: &[u8]) {
        let _ = host.send(bytes);
    }
    fn host_drain(host: &HostPort) {
        let mut out = Vec::new();
        host.recv_until(&mut out, Instant::now());
    }
}

fn transport<D: Fuzzed>(mem: &GuestMemoryMmap) -> (VirtioPci<D>, D::Host) {
    let (device, host) = D::make();
    let count = device.queue_max_sizes().len() as u32 + 1;
    let dev = VirtioPci::new(
        device,
        mem.clone(),
        Arc::new(RecordingVmOps::default()),
        vectors(count),
        Some(IntxLine { gsi: 16 }),
    )
    .expect("a virtio transport");
    (dev, host)
}

fn common_write(dev: &mut VirtioPci<impl VirtioDevice>, offset: u64, value: u64, len: usize) {
    dev.write_bar(VIRTIO_BAR, offset, &value.to_le_bytes()[..len]);
}

/// The header of a virtio input: what the driver negotiates and where each queue lies.
/// Bring-up follows the specification's order (virtio 1.x, 3.1.1), so an input spends its
/// bytes on rings and descriptors, not on rediscovering the init sequence.
fn bring_up<D: VirtioDevice>(dev: &mut VirtioPci<D>, input: &mut Input<'_>) {
    enable_msix(dev);
    let features = input.u64();
    common_write(dev, 0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
    common_write(dev, 0x08, 0, 4);
    common_write(dev, 0x0C, features & 0xFFFF_FFFF, 4);
    common_write(dev, 0x08, 1, 4);
    common_write(dev, 0x0C, features >> 32, 4);
    let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    common_write(dev, 0x14, u64::from(ok), 1);
    let queues = dev.device().queue_max_sizes().len();
    for q in 0..queues {
        common_write(dev, 0x16, q as u64, 2);
        common_write(dev, 0x18, 1 << (input.u8() % 10), 2);
        common_write(dev, 0x1A, u64::from(input.u16()), 2);
        common_write(dev, 0x20, u64::from(input.u32()), 8);
        common_write(dev, 0x28, u64::from(input.u32()), 8);
        common_write(dev, 0x30, u64::from(input.u32()), 8);
        common_write(dev, 0x1C, 1, 2);
    }
    common_write(dev, 0x14, u64::from(ok | STATUS_DRIVER_OK), 1);
}

/// The configuration-space offset of the first capability `id`.
fn capability(dev: &mut impl PciDevice, id: u8) -> Option<usize> {
    let mut at = (dev.read_config(0x34) & 0xFC) as usize;
    for _ in 0..48 {
        if at == 0 {
            return None;
        }
        let head = dev.read_config(at);
        if head as u8 == id {
            return Some(at);
        }
        at = ((head >> 8) & 0xFC) as usize;
    }
    None
}

/// The header [`bring_up`] reads: `features`, then per queue log2(size), MSI-X vector and
/// the descriptor table, driver and device areas' addresses.
pub fn virtio_header(features: u64, queues: &[(u8, u16, u32, u32, u32)]) -> Vec<u8> {
    let mut out = features.to_le_bytes().to_vec();
    for &(size_log2, vector, desc, driver, device) in queues {
        out.push(size_log2);
        out.extend_from_slice(&vector.to_le_bytes());
        out.extend_from_slice(&desc.to_le_bytes());
        out.extend_from_slice(&driver.to_le_bytes());
        out.extend_from_slice(&device.to_le_bytes());
    }
    out
}

/// The transport's BAR an op's byte picks (even: the virtio registers, odd: MSI-X), and its
/// size.
fn virtio_bar(bar: u8) -> (usize, u64) {
    if bar.is_multiple_of(2) {
        (VIRTIO_BAR, VIRTIO_BAR_SIZE)
    } else {
        (MSIX_BAR, 0x1000)
    }
}

fn run_virtio<D: Fuzzed>(data: &[u8]) {
    let mut input = Input::new(data);
    let mem = memory();
    let (mut dev, mut host) = transport::<D>(&mem);
    bring_up(&mut dev, &mut input);
    for op in ops(&mut input) {
        let Some(op) = guest_access(&mut dev, &mem, op, virtio_bar) else {
            continue;
        };
        match op {
            // Run by `guest_access` above.
            Op::Mem { .. } | Op::Bar { .. } | Op::Read { .. } | Op::Config { .. } => {}
            Op::Kick { queue } => dev.queue_notified(usize::from(queue % 3)),
            Op::Host { bytes } => {
                D::host_input(&host, &bytes);
                dev.device_event(0);
            }
            Op::Drain => D::host_drain(&host),
            Op::Migrate => {
                dev.device_mut().before_save();
                let state = dev.save();
                let (mut fresh, fresh_host) = transport::<D>(&mem);
                if let Err(e) = fresh.restore(state) {
                    panic!("{} refuses its own saved state: {e}", D::make().0.name());
                }
                (dev, host) = (fresh, fresh_host);
            }
            Op::Operator { .. } => dev.kick_queues(),
        }
    }
}

/// virtio-net behind its transport: transmit and receive chains over arbitrary descriptors.
pub fn virtio_net(data: &[u8]) {
    run_virtio::<Net<MemBackend>>(data);
}

/// virtio-console behind its transport: the guest agent's byte pipe both ways.
pub fn virtio_console(data: &[u8]) {
    run_virtio::<Console>(data);
}

// ---------------------------------------------------------------------------------------
// The 82599 VF.

fn vf(mem: &GuestMemoryMmap, trusted: bool) -> (Ixgbevf<MemBackend>, MemPeer) {
    let (backend, peer) = mem_pair().expect("an eventfd");
    let dev = Ixgbevf::new(
        backend,
        MAC,
        trusted,
        mem.clone(),
        Arc::new(RecordingVmOps::default()),
        vectors(3),
    )
    .expect("a VF");
    (dev, peer)
}

/// The VF: register writes and reads (mailbox, queue registers, interrupts), descriptor
/// rings in guest memory, frames from the TAP's side, link changes, hot reset, migration.
/// The header is one byte: bit 0 says whether the PF trusts the VF.
pub fn ixgbevf(data: &[u8]) {
    let mut input = Input::new(data);
    let trusted = input.u8() & 1 != 0;
    let mem = memory();
    let (mut dev, mut peer) = vf(&mem, trusted);
    enable_msix(&mut dev);
    // Even: the registers, odd: MSI-X; both span the registers' BAR size.
    let bar_of = |bar: u8| {
        let bar = if bar.is_multiple_of(2) {
            ixgbevf_regs::REGS_BAR
        } else {
            ixgbevf_regs::MSIX_BAR
        };
        (usize::from(bar), ixgbevf_regs::BAR_SIZE)
    };
    for op in ops(&mut input) {
        let Some(op) = guest_access(&mut dev, &mem, op, bar_of) else {
            continue;
        };
        match op {
            // Run by `guest_access` above.
            Op::Mem { .. } | Op::Bar { .. } | Op::Read { .. } | Op::Config { .. } => {}
            Op::Kick { .. } => {
                dev.poll_backend();
            }
            Op::Host { bytes } => {
                if !bytes.is_empty() {
                    peer.inject(&bytes);
                }
                dev.poll_backend();
            }
            Op::Drain => while peer.take().is_some() {},
            Op::Migrate => {
                let state = dev.save();
                let (mut fresh, fresh_peer) = vf(&mem, trusted);
                if let Err(e) = fresh.restore(state) {
                    panic!("the VF refuses its own saved state: {e}");
                }
                (dev, peer) = (fresh, fresh_peer);
            }
            Op::Operator { what } => match what % 3 {
                0 => dev.set_link(false),
                1 => dev.set_link(true),
                _ => {
                    let _ = dev.hot_reset();
                }
            },
        }
    }
}

// ---------------------------------------------------------------------------------------
// A migration's device sections.

/// Restores each of `state`'s sections into a fresh model of the device the device manager
/// registers under that id, in the manager's stage order (PCI functions, the bus, COM1);
/// sections for ids no model has are skipped, as the manager refuses them before looking.
pub fn restore_sections(state: &DevicesState) -> Result<(), DeviceStateError> {
    let mem = memory();
    let net = Arc::new(Mutex::new(transport::<Net<MemBackend>>(&mem).0));
    let console = Arc::new(Mutex::new(transport::<Console>(&mem).0));
    let vf = Arc::new(Mutex::new(vf(&mem, false).0));
    let mut pci = PciRoot::new();
    for device in [
        net.clone() as Arc<Mutex<dyn PciDevice>>,
        console.clone(),
        vf.clone(),
    ] {
        pci.add_device(device)
            .map_err(|e| DeviceStateError::invalid("fuzzing", "pci", e.to_string()))?;
    }
    let serial = Mutex::new(SerialDevice::new(
        EventFd::new(libc::EFD_NONBLOCK).expect("an eventfd"),
        std::io::sink(),
    ));
    let pci = Mutex::new(pci);
    let models: [(&'static str, &dyn Persisted); 5] = [
        ("virtio-net", &*net),
        ("virtio-console", &*console),
        ("ixgbevf", &*vf),
        ("pci", &pci),
        ("serial", &serial),
    ];
    for (id, model) in models {
        if let Some(section) = state.sections.iter().find(|s| s.id == id) {
            model.restore(id, &section.bytes)?;
        }
    }
    Ok(())
}

/// The sections of a freshly built set of models, as a source with those devices sends
/// them (for the seeds).
pub fn fresh_sections() -> DevicesState {
    use crate::device_manager::DeviceSection;
    fn section<T: Persist>(id: &str, device: &T) -> DeviceSection {
        DeviceSection {
            id: id.into(),
            needed: true,
            bytes: postcard::to_allocvec(&device.save()).expect("a device state encodes"),
        }
    }
    let mem = memory();
    let serial = SerialDevice::new(
        EventFd::new(libc::EFD_NONBLOCK).expect("an eventfd"),
        std::io::sink(),
    );
    DevicesState {
        sections: vec![
            section("serial", &serial),
            section("pci", &PciRoot::new()),
            section("virtio-net", &transport::<Net<MemBackend>>(&mem).0),
            section("virtio-console", &transport::<Console>(&mem).0),
            section("ixgbevf", &vf(&mem, false).0),
        ],
    }
}
