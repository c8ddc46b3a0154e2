//! The device manager: owns every device model of a VM, the order they are attached in
//! (which is their PCI slot order), the order they are saved and restored in, the buses the
//! vCPU reaches them through, and their host resources (TAPs, interrupt eventfds).
//!
//! Adding a device: its model goes in a folder of its own under `devices/` (mod, state,
//! tests) and implements [`Persist`]; then one `add_*` registration below
//! ([`DeviceManager::build`]) attaches it, wires its interrupts and registers it for
//! migration. Nothing else changes: saving and restoring go through [`persisted`].
//!
//! Attach order: COM1 and the debug-exit port, the PCI host bridge, then virtio-net,
//! virtio-console (the guest agent's channel) and the VF, last because it is the one device
//! that may be absent on a migration's other side and later slots must not move because of
//! it. Restore order: PCI functions, then the bus (it reads the functions' restored headers),
//! then the platform devices.

pub mod announce;
pub mod persisted;
pub mod port;

pub use persisted::{DeviceSection, DevicesState};

use crate::config::{DeviceConfig, NetConfig, VfConfig};
use crate::devices::debug_exit::{DEBUG_EXIT_BASE, DEBUG_EXIT_LEN, DebugExit, ExitRequest};
use crate::devices::ixgbevf::{Ixgbevf, IxgbevfHandler, VfError, VfHandle};
use crate::devices::pci::msix::MsixVector;
use crate::devices::pci::{self, PciConfigPorts, PciError, PciMmioWindow, PciRoot};
use crate::devices::serial::{
    COM1_BASE, COM1_IRQ, COM1_LEN, OutputStats, SerialDevice, SerialOutput,
};
use crate::devices::virtio::VirtioDevice;
use crate::devices::virtio::console::{Console, HostPort};
use crate::devices::virtio::net::Net;
use crate::devices::virtio::pci::{IntxLine, TransportError, VirtioPci};
use crate::devices::{Bus, BusError, DeviceStateError};
use crate::io_thread::IoHandler;
use crate::kvm::KvmError;
use crate::kvm::routing::{FIRST_MSI_GSI, KvmVmOps};
use crate::kvm::vm::Vm;
use crate::memory::GuestRam;
use crate::roaming::{MipTunnel, RoutedConfig, RoutedError, RoutedPort, TunnelConfig};
use crate::tap::{Tap, TapError, TapWriter};
use persisted::Persisted;
use port::{Link, Port, PortHandle};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use vmm_sys_util::eventfd::EventFd;

/// Host-side counters by device, then by name (`vm.counters`).
pub type Counters = BTreeMap<String, BTreeMap<String, u64>>;

fn named<const N: usize>(pairs: [(&str, u64); N]) -> BTreeMap<String, u64> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// virtio-net on its port, shared between the buses and the I/O thread.
pub type SharedNet = Arc<Mutex<VirtioPci<Net<Port>>>>;
/// The emulated VF on a TAP, and the operator's handle on it.
pub type SharedVf = Arc<VfHandle<Tap>>;

/// MSI-X vectors of the virtio-net card: one per queue and one for configuration changes.
const NET_MSIX_VECTORS: usize = 3;
/// MSI-X vectors of the virtio-console: receiveq and configuration changes (the guest
/// reclaims transmit buffers when it sends).
const CONSOLE_MSIX_VECTORS: usize = 2;
/// MSI-X vectors of the VF, as on a real 82599 VF: two queue pairs and "other".
const VF_MSIX_VECTORS: usize = ixgbevf_regs::MSIX_VECTORS as usize;
/// IOAPIC pin of device 1's INTA; device `n` gets pin 16 + (n - 1) % 8 (the pins no ISA
/// device uses, routed to the IOAPIC only).
const PCI_INTX_FIRST_GSI: u32 = 16;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why the devices could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A TAP could not be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// The tunnel home could not be opened (`--net mip`).
    #[error(
        "cannot open the tunnel to the home agent (a raw IP-in-IP socket; needs CAP_NET_RAW): {0}"
    )]
    Tunnel(#[source] std::io::Error),
    /// `--net mip` without a home agent to tunnel to.
    #[error("--net mip needs the guest's Mobile IP setting (--mobility mip:ha=...,home=...)")]
    NoTunnelEnds,
    /// The routed TAP could not be opened (`--net nat`).
    #[error(transparent)]
    Routed(#[from] RoutedError),
    /// `--net nat` without the guest's address to route.
    #[error(
        "--net nat needs the guest's network-paging setting (--mobility nat:edge=...,home=...)"
    )]
    NoRoutedAddress,
    /// An interrupt eventfd or a TAP writer could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// KVM refused an irqfd.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// A device could not be placed on a bus.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A PCI device could not be attached.
    #[error(transparent)]
    Pci(#[from] PciError),
    /// A virtio transport could not be built.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The emulated VF could not be built.
    #[error(transparent)]
    Vf(#[from] VfError),
    /// A device's helper thread could not be started.
    #[error("cannot start a device thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Why a migration's device states could not be applied here.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// One side has a device the other has not.
    #[error(
        "the source {} {device} but this host-vmm {}: give it the same devices as the source",
        if *source_has { "has" } else { "has no" },
        if *source_has { "has not" } else { "has" }
    )]
    DeviceSet {
        /// Which device, as the operator names it.
        device: String,
        /// Whether the source has it.
        source_has: bool,
    },
    /// A device refused its state.
    #[error(transparent)]
    Device(#[from] DeviceStateError),
}

/// The devices' host resources, opened before any KVM work so bad input fails first.
#[derive(Debug)]
pub struct Opened {
    port: Option<Port>,
    vf_tap: Option<Tap>,
}

impl Opened {
    /// Opens the TAPs of `config`.
    pub fn open(config: &DeviceConfig) -> Result<Opened, DeviceError> {
        Ok(Opened {
            port: config
                .net
                .as_ref()
                .map(|n| open_port(n, config))
                .transpose()?,
            vf_tap: config.vf.as_ref().map(|v| Tap::open(&v.tap)).transpose()?,
        })
    }
}

/// Opens the host end of virtio-net: its TAP, the tunnel home, or a routed TAP.
fn open_port(net: &NetConfig, config: &DeviceConfig) -> Result<Port, DeviceError> {
    if net.nat {
        let home = config.routed.ok_or(DeviceError::NoRoutedAddress)?;
        let port = RoutedPort::open(
            &net.tap,
            RoutedConfig {
                home,
                guest_mac: net.mac.octets(),
            },
        )?;
        return Ok(Port::new(Link::Routed(port)));
    }
    if !net.mip {
        return Ok(Port::new(Link::Tap(Tap::open_with_vnet_header(&net.tap)?)));
    }
    let ends = config.tunnel.ok_or(DeviceError::NoTunnelEnds)?;
    let tunnel = MipTunnel::open(TunnelConfig {
        home_agent: ends.home_agent,
        home: ends.home,
        guest_mac: net.mac.octets(),
    })
    .map_err(DeviceError::Tunnel)?;
    Ok(Port::new(Link::Mip(tunnel)))
}

/// Where saving and restoring reach a device, and in which stage it is restored.
struct Registered {
    id: &'static str,
    /// How the operator names it (for errors).
    what: &'static str,
    stage: Stage,
    device: Arc<dyn Persisted>,
}

/// Restore stages, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    PciFunction,
    PciBus,
    Platform,
}

/// Every device of one VM.
pub struct DeviceManager {
    pio: Bus,
    mmio: Bus,
    exit_request: ExitRequest,
    net: Option<SharedNet>,
    /// virtio-net's port and the guest's MAC, for a migration's hand-over window.
    net_port: Option<(PortHandle, [u8; 6])>,
    vf: Option<SharedVf>,
    agent_port: Mutex<Option<HostPort>>,
    /// A handle on the same port, for its counters only.
    agent_counters: Option<HostPort>,
    /// COM1's output counters.
    serial_output: OutputStats,
    /// The devices' VM services, for their `KVM_IOEVENTFD` count.
    vm_ops: Arc<KvmVmOps>,
    /// In attach order.
    registered: Vec<Registered>,
    /// Writers on the NICs' TAPs and the guest's MAC, for announcing the guest after a move.
    announce: Vec<(TapWriter, [u8; 6])>,
}

impl std::fmt::Debug for DeviceManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<_> = self.registered.iter().map(|r| r.id).collect();
        f.debug_struct("DeviceManager")
            .field("devices", &ids)
            .finish_non_exhaustive()
    }
}

/// What building the devices leaves for the VM: the manager and the I/O thread's handlers.
pub struct Built {
    /// The devices.
    pub devices: DeviceManager,
    /// Device work for the I/O thread (empty: no thread needed).
    pub handlers: Vec<Box<dyn IoHandler>>,
}

/// A virtio device on the bus: the shared device, its slot, its INTA line.
type Attached<D> = (Arc<Mutex<VirtioPci<D>>>, u8, IntxLine);

/// Building state: where the next MSI-X GSI comes from, the PCI bus, the handlers.
struct Builder<'a> {
    vm: &'a Vm,
    ram: &'a GuestRam,
    pci: Arc<Mutex<PciRoot>>,
    msi_gsis: std::ops::Range<u32>,
    handlers: Vec<Box<dyn IoHandler>>,
    manager: DeviceManager,
}

impl DeviceManager {
    /// Builds the devices of `config` on `vm` (opened TAPs in `opened`), with the guest's
    /// serial output going to `console`.
    pub fn build(
        vm: &Vm,
        ram: &GuestRam,
        config: &DeviceConfig,
        opened: Opened,
        console: Box<dyn Write + Send>,
    ) -> Result<Built, DeviceError> {
        let mut b = Builder::platform(vm, ram, console)?;
        // Registrations, in attach (= slot) order. A new device is one line here.
        if let (Some(net), Some(port)) = (&config.net, opened.port) {
            b.add_net(net, port)?;
        }
        if config.agent {
            b.add_console()?;
        }
        if let (Some(vf), Some(tap)) = (&config.vf, opened.vf_tap) {
            b.add_vf(vf, tap)?;
        }
        Ok(Built {
            devices: b.manager,
            handlers: b.handlers,
        })
    }

    /// The port I/O bus.
    pub fn pio(&self) -> &Bus {
        &self.pio
    }

    /// The MMIO bus.
    pub fn mmio(&self) -> &Bus {
        &self.mmio
    }

    /// The guest's exit status, once it wrote one.
    pub fn exit_status(&self) -> Option<u8> {
        self.exit_request.status()
    }

    /// The operator's handle on the VF, when the VM has one.
    pub fn vf(&self) -> Option<&SharedVf> {
        self.vf.as_ref()
    }

    /// COM1's output counters (bytes sent, written, dropped).
    pub fn serial_output(&self) -> OutputStats {
        self.serial_output.clone()
    }

    /// Every device's host-side counters by device and name (`vm.counters`): COM1's
    /// output, virtio-net's and the VF's frames, drops and refusals, the agent channel's
    /// bytes, and the `KVM_IOEVENTFD` calls the virtio devices made (`kvm`).
    pub fn counters(&self) -> Counters {
        let mut all = Counters::new();
        all.insert(
            "kvm".into(),
            named([("ioeventfd_calls", self.vm_ops.ioeventfd_calls())]),
        );
        let s = self.serial_output.get();
        all.insert(
            "serial".into(),
            named([
                ("out_bytes", s.bytes),
                ("out_written", s.written),
                ("out_dropped", s.dropped),
            ]),
        );
        if let Some(net) = &self.net {
            let m = lock(net).device().metrics();
            all.insert(
                "virtio-net".into(),
                named([
                    ("rx_frames", m.rx_frames),
                    ("rx_bytes", m.rx_bytes),
                    ("rx_dropped", m.rx_dropped),
                    ("tx_frames", m.tx_frames),
                    ("tx_bytes", m.tx_bytes),
                    ("tx_dropped", m.tx_dropped),
                    ("tx_spoofed", m.tx_spoofed),
                    ("tx_bad_gso", m.tx_bad_gso),
                    ("tx_bad_csum", m.tx_bad_csum),
                    ("tx_csum", m.tx_csum),
                    ("rx_csum", m.rx_csum),
                ]),
            );
        }
        if let Some(port) = &self.agent_counters {
            let m = port.metrics();
            all.insert(
                "agent-console".into(),
                named([
                    ("to_guest_bytes", m.rx_bytes),
                    ("to_guest_dropped", m.rx_dropped),
                    ("from_guest_bytes", m.tx_bytes),
                    ("from_guest_dropped", m.tx_dropped),
                ]),
            );
        }
        if let Some(vf) = &self.vf {
            let m = lock(vf.device()).metrics();
            all.insert(
                "vf".into(),
                named([
                    ("rx_frames", m.rx_frames),
                    ("rx_bytes", m.rx_bytes),
                    ("rx_dropped", m.rx_dropped),
                    ("tx_frames", m.tx_frames),
                    ("tx_bytes", m.tx_bytes),
                    ("tx_dropped", m.tx_dropped),
                    ("tx_spoofed", m.tx_spoofed),
                    ("tx_bad_mss", m.tx_bad_mss),
                    ("queue_errors", m.queue_errors),
                    ("tx_csum", m.tx_csum),
                    ("rx_csum", m.rx_csum),
                ]),
            );
        }
        all
    }

    /// The host end of the guest agent's console port (once: its reader takes it).
    pub fn take_agent_port(&self) -> Option<HostPort> {
        lock(&self.agent_port).take()
    }

    /// Every device's state (the vCPU stopped and the I/O thread paused).
    pub fn save(&self) -> Result<DevicesState, DeviceStateError> {
        let sections = self
            .registered
            .iter()
            .map(|r| r.device.save(r.id))
            .collect::<Result<_, _>>()?;
        Ok(DevicesState { sections })
    }

    /// Applies a source's device states, stage by stage. Each device checks its state
    /// before changing anything; a device either side lacks is refused unless it may be
    /// absent (a VF unplugged before the move, or one the source never had).
    pub fn restore(&self, state: &DevicesState) -> Result<(), RestoreError> {
        for (i, s) in state.sections.iter().enumerate() {
            if state.sections[..i].iter().any(|o| o.id == s.id) {
                return Err(DeviceStateError::invalid(
                    "device manager",
                    format!("section {}", s.id),
                    "appears twice",
                )
                .into());
            }
            if s.needed && !self.registered.iter().any(|r| r.id == s.id) {
                return Err(RestoreError::DeviceSet {
                    device: s.id.clone(),
                    source_has: true,
                });
            }
        }
        let mut order: Vec<&Registered> = self.registered.iter().collect();
        order.sort_by_key(|r| r.stage);
        for r in order {
            match state.sections.iter().find(|s| s.id == r.id) {
                Some(s) => r.device.restore(r.id, &s.bytes)?,
                None if r.device.absent_at_source() => {}
                None => {
                    return Err(RestoreError::DeviceSet {
                        device: r.what.to_owned(),
                        source_has: false,
                    });
                }
            }
        }
        Ok(())
    }

    /// With the guest paused for a move: takes the frames waiting on virtio-net's TAP into
    /// the device, so they move with its state (or reach the guest here after a rollback)
    /// instead of being dropped with the TAP. Returns how many it holds.
    pub fn hold_net_frames(&self) -> usize {
        self.net
            .as_ref()
            .map_or(0, |n| lock(n).device_mut().hold_backend_frames())
    }

    /// In a move's hand-over window, device I/O parked: the frames waiting for the guest
    /// on virtio-net's port (its TAP, tunnel or routed TAP), oldest first, at most `max`.
    /// A frame from the guest's own MAC is not for it (its announcement from the other
    /// host, flooded back here): it is read and dropped.
    pub fn take_net_frames(&self, max: usize) -> Vec<Vec<u8>> {
        self.net_port.as_ref().map_or_else(Vec::new, |(port, mac)| {
            port.take_waiting(max, |f| f.get(6..12) != Some(&mac[..]))
        })
    }

    /// Frames the other end of a move forwarded: virtio-net delivers them to the guest
    /// after what it holds and before anything newer from its port, in order (at most
    /// [`port::MAX_INBOX`] waiting; more are dropped). Returns how many were dropped (all
    /// of them without virtio-net).
    pub fn deliver_net_frames(&self, frames: Vec<Vec<u8>>) -> u64 {
        let Some((port, _)) = &self.net_port else {
            return frames.len() as u64;
        };
        let dropped = port.deliver(frames);
        self.kick_net();
        dropped
    }

    /// After a rolled-back move: lets virtio-net deliver what it held.
    pub fn kick_net(&self) {
        if let Some(n) = &self.net {
            lock(n).kick_queues();
        }
    }

    /// Sends the guest's MAC from the TAP it arrives on (virtio-net's, else the VF's) as
    /// QEMU's announce-self does (a broadcast RARP), so the L2 learns the new port before
    /// the guest speaks. Returns how many frames went out.
    pub fn announce(&self) -> usize {
        let mut sent = 0;
        for (file, mac) in &self.announce {
            match file.send(&announce::rarp(*mac)) {
                Ok(()) => sent += 1,
                Err(e) => log::warn!("announce: frame not sent: {e}"),
            }
        }
        sent
    }
}

impl<'a> Builder<'a> {
    /// COM1, the debug-exit port and the PCI host bridge: what every VM has.
    fn platform(
        vm: &'a Vm,
        ram: &'a GuestRam,
        console: Box<dyn Write + Send>,
    ) -> Result<Self, DeviceError> {
        let exit_request = ExitRequest::default();
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        vm.register_irqfd(&serial_irq, COM1_IRQ)?;
        // The vCPU writes into a bounded buffer; a thread of its own waits on stdout.
        let output = SerialOutput::spawn(console).map_err(DeviceError::Thread)?;
        let serial_output = output.stats();
        let serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq, output)));
        let mut pio = Bus::new("pio");
        pio.insert(COM1_BASE, COM1_LEN, "serial", serial.clone())?;
        pio.insert(
            DEBUG_EXIT_BASE,
            DEBUG_EXIT_LEN,
            "debug-exit",
            Arc::new(Mutex::new(DebugExit::new(exit_request.clone()))),
        )?;
        // The PCI host bridge is always there (no syscalls: it costs the boot nothing).
        let pci = Arc::new(Mutex::new(PciRoot::new()));
        pio.insert(
            pci::CONFIG_PORT_BASE,
            pci::CONFIG_PORT_LEN,
            "pci-config",
            Arc::new(Mutex::new(PciConfigPorts(pci.clone()))),
        )?;
        let mut mmio = Bus::new("mmio");
        mmio.insert(
            pci::MMIO_WINDOW.start,
            pci::MMIO_WINDOW.end - pci::MMIO_WINDOW.start,
            "pci-window",
            Arc::new(Mutex::new(PciMmioWindow(pci.clone()))),
        )?;
        let registered = vec![
            Registered {
                id: "serial",
                what: "COM1",
                stage: Stage::Platform,
                device: serial,
            },
            Registered {
                id: "pci",
                what: "the PCI bus",
                stage: Stage::PciBus,
                device: pci.clone(),
            },
        ];
        Ok(Builder {
            vm,
            ram,
            pci,
            msi_gsis: FIRST_MSI_GSI..u32::MAX,
            handlers: Vec::new(),
            manager: DeviceManager {
                pio,
                mmio,
                exit_request,
                net: None,
                net_port: None,
                vf: None,
                agent_port: Mutex::new(None),
                agent_counters: None,
                serial_output,
                vm_ops: vm.device_ops(),
                registered,
                announce: Vec::new(),
            },
        })
    }

    /// `count` MSI-X vectors on fresh GSIs, each with an irqfd KVM injects from.
    fn msix_vectors(&mut self, count: usize) -> Result<Vec<MsixVector>, DeviceError> {
        let mut vectors = Vec::with_capacity(count);
        for gsi in self.msi_gsis.by_ref().take(count) {
            let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
            self.vm.register_irqfd(&irqfd, gsi)?;
            vectors.push(MsixVector { gsi, irqfd });
        }
        Ok(vectors)
    }

    /// The INTA line of the next PCI device.
    fn next_intx(&self) -> IntxLine {
        let device_number = lock(&self.pci).device_count() as u32;
        let gsi = PCI_INTX_FIRST_GSI + (device_number.saturating_sub(1) % 8);
        IntxLine { gsi: gsi as u8 }
    }

    fn register(&mut self, id: &'static str, what: &'static str, device: Arc<dyn Persisted>) {
        self.manager.registered.push(Registered {
            id,
            what,
            stage: Stage::PciFunction,
            device,
        });
    }

    /// virtio-net on `port`.
    fn add_net(&mut self, config: &NetConfig, port: Port) -> Result<(), DeviceError> {
        // Announced on a TAP only: away from home nobody on this host's links needs to
        // learn the guest's MAC.
        if let Some(writer) = port.announce_writer() {
            let writer = writer.map_err(DeviceError::EventFd)?;
            self.manager.announce.push((writer, config.mac.octets()));
        }
        self.manager.net_port = Some((port.handle(), config.mac.octets()));
        let (device, slot, intx) = self.add_virtio(
            Net::new(port, config.mac.octets()),
            NET_MSIX_VECTORS,
            "virtio-net (--net)",
        )?;
        log::info!(
            "virtio-net: PCI 00:{slot:02x}.0, MAC {}, {}, INTA on GSI {}",
            config.mac,
            if config.mip {
                "tunnel to the home agent".to_string()
            } else if config.nat {
                format!("TAP {} (routed)", config.tap)
            } else {
                format!("TAP {}", config.tap)
            },
            intx.gsi
        );
        self.manager.net = Some(device);
        Ok(())
    }

    /// The virtio-console the guest agent talks over.
    fn add_console(&mut self) -> Result<(), DeviceError> {
        let (console, port) = Console::new().map_err(DeviceError::EventFd)?;
        let (_, slot, intx) = self.add_virtio(
            console,
            CONSOLE_MSIX_VECTORS,
            "the guest agent's channel (an API socket)",
        )?;
        log::info!(
            "virtio-console: PCI 00:{slot:02x}.0 (guest agent), INTA on GSI {}",
            intx.gsi
        );
        self.manager.agent_counters = Some(port.clone());
        *lock(&self.manager.agent_port) = Some(port);
        Ok(())
    }

    /// Puts `device` on the PCI bus behind the virtio transport with `vectors` MSI-X
    /// vectors and the next INTA line, gives the I/O thread its queues, and registers it
    /// for migration under its virtio name; returns it, its slot and its INTA line.
    fn add_virtio<D: VirtioDevice + Send + 'static>(
        &mut self,
        device: D,
        vectors: usize,
        what: &'static str,
    ) -> Result<Attached<D>, DeviceError> {
        let vectors = self.msix_vectors(vectors)?;
        let intx = self.next_intx();
        let id = device.name();
        let device = VirtioPci::new(
            device,
            self.ram.memory().clone(),
            self.vm.device_ops(),
            vectors,
            Some(intx),
        )?;
        let device = Arc::new(Mutex::new(device));
        let slot = lock(&self.pci).add_device(device.clone())?;
        self.handlers.push(Box::new(VirtioPci::io_handler(&device)));
        self.register(id, what, device.clone());
        Ok((device, slot, intx))
    }

    /// The emulated 82599 VF on `tap` (MSI-X only: VFs have no INTx).
    fn add_vf(&mut self, config: &VfConfig, tap: Tap) -> Result<(), DeviceError> {
        // Announced from the VF's TAP only without virtio-net: a guest that arrives runs on
        // virtio-net until its agent re-attaches the VF (and announces there itself);
        // pointing the L2 at the VF's port earlier lost frames.
        if self.manager.announce.is_empty() {
            let writer = tap.writer().map_err(DeviceError::EventFd)?;
            self.manager.announce.push((writer, config.mac.octets()));
        }
        let vectors = self.msix_vectors(VF_MSIX_VECTORS)?;
        // Not trusted, as a PF leaves a VF whose MAC the administrator set.
        let device = Ixgbevf::new(
            tap,
            config.mac.octets(),
            false,
            self.ram.memory().clone(),
            self.vm.device_ops(),
            vectors,
        )?;
        let device = Arc::new(Mutex::new(device));
        let slot = lock(&self.pci).add_device(device.clone())?;
        log::info!(
            "ixgbevf: PCI 00:{slot:02x}.0, MAC {}, TAP {}",
            config.mac,
            config.tap
        );
        self.handlers.push(Box::new(IxgbevfHandler::new(&device)));
        self.manager.vf = Some(Arc::new(VfHandle::new(
            device.clone(),
            self.pci.clone(),
            slot,
        )));
        self.register("ixgbevf", "a plugged-in VF (--vf)", device);
        Ok(())
    }
}
