//! Putting a VM together and running it: the one place that knows the order of things.
//!
//! [`Vmm::new`] checks the image, then builds the VM in KVM's fast order (VM, RAM, irqchip,
//! vCPU), loads the image, writes the boot structures and sets the vCPU's entry state.
//! Devices: COM1 and the debug-exit port, the PCI host bridge (config ports and the BAR
//! window), and with `--net` a virtio-net card on bus 0 whose queues an I/O thread serves;
//! with `--vf`, an emulated 82599 VF ([`crate::devices::ixgbevf`]) on its own TAP;
//! with `--control`, a virtio-console for the guest agent and the control server
//! ([`crate::control`]) on its socket.
//! [`Vmm::run`] then enters the guest until it reports a status or stops without one.

use crate::arch::x86_64::{self as arch, boot, cpuid, regs};
use crate::config::{NetConfig, RunConfig, VfConfig};
use crate::control::{self, ControlServer, Listener, Services, VfOperator as _};
use crate::devices::debug_exit::{DEBUG_EXIT_BASE, DEBUG_EXIT_LEN, DebugExit, ExitRequest};
use crate::devices::ixgbevf::{Ixgbevf, IxgbevfHandler, VfError, VfHandle};
use crate::devices::pci::msix::MsixVector;
use crate::devices::pci::{self, PciConfigPorts, PciError, PciMmioWindow, PciRoot};
use crate::devices::serial::{COM1_BASE, COM1_IRQ, COM1_LEN, SerialDevice};
use crate::devices::virtio::console::{Console, HostPort};
use crate::devices::virtio::net::Net;
use crate::devices::virtio::pci::{IntxLine, TransportError, VirtioPci};
use crate::devices::{Bus, BusError};
use crate::devices::{DeviceStateError, DevicesState};
use crate::io_thread::{IoHandler, IoThread};
use crate::kvm::routing::FIRST_MSI_GSI;
use crate::kvm::state::{VcpuState, VmState};
use crate::kvm::vcpu::VcpuKicker;
use crate::kvm::vcpu::{Vcpu, VcpuExit};
use crate::kvm::vm::{KvmPages, Vm};
use crate::kvm::{Kvm, KvmError};
use crate::loader::{Image, LoadError};
use crate::memory::{GuestRam, MemoryError};
use crate::tap::{Tap, TapError};
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

/// Process exit status when the guest stopped without reporting one (ARCHITECTURE.md).
pub const EXIT_NO_GUEST_STATUS: u8 = 124;
/// Process exit status when host-vmm itself failed (ARCHITECTURE.md).
pub const EXIT_VMM_FAILED: u8 = 125;

/// Why host-vmm could not set up or run the VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image could not be opened, checked or loaded.
    #[error(transparent)]
    Image(#[from] LoadError),
    /// A KVM call failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Guest RAM could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The boot structures could not be written.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// A device could not be placed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// An interrupt eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// The TAP for `--net` could not be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// A PCI device could not be attached.
    #[error(transparent)]
    Pci(#[from] PciError),
    /// A virtio transport could not be built.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The I/O thread could not be started.
    #[error("cannot start the I/O thread")]
    IoThread(#[source] std::io::Error),
    /// The control socket (`--control`) could not be set up.
    #[error(transparent)]
    Control(#[from] control::ServerError),
    /// The emulated VF could not be built.
    #[error(transparent)]
    Vf(#[from] VfError),
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest wrote this status to the debug-exit port.
    GuestExit(u8),
    /// The guest stopped without writing a status.
    GuestStopped(GuestStop),
    /// The guest moved to another host-vmm, which runs it now.
    MigratedAway,
}

impl Outcome {
    /// The process exit status for this outcome.
    pub fn exit_status(&self) -> u8 {
        match self {
            Outcome::GuestExit(status) => *status,
            Outcome::GuestStopped(_) => EXIT_NO_GUEST_STATUS,
            Outcome::MigratedAway => 0,
        }
    }
}

/// Why the guest stopped without a status, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestStop {
    /// What KVM reported.
    pub exit: VcpuExit,
    /// The guest's RIP at that moment, if it could be read.
    pub rip: Option<u64>,
}

impl fmt::Display for GuestStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the guest stopped without an exit status: ")?;
        match &self.exit {
            VcpuExit::Shutdown => write!(f, "triple fault (KVM_EXIT_SHUTDOWN)")?,
            VcpuExit::InternalError { suberror, data } => {
                let what = match suberror {
                    1 => " (emulation failure)",
                    2 => " (exception while delivering an exception)",
                    3 => " (event delivery failed)",
                    4 => " (unexpected exit reason)",
                    _ => "",
                };
                write!(f, "KVM internal error, suberror {suberror}{what}")?;
                for (i, word) in data.iter().enumerate() {
                    write!(f, "{} {word:#x}", if i == 0 { ", data" } else { "," })?;
                }
            }
            VcpuExit::FailEntry { reason } => write!(
                f,
                "KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY, reason {reason:#x})"
            )?,
            VcpuExit::Halted => write!(f, "HLT reached host-vmm (KVM_EXIT_HLT)")?,
            VcpuExit::SystemEvent { kind } => {
                let what = match kind {
                    1 => "shutdown",
                    2 => "reset",
                    3 => "crash",
                    _ => "system event",
                };
                write!(
                    f,
                    "the guest requested a {what} (KVM_EXIT_SYSTEM_EVENT {kind})"
                )?
            }
            other => write!(f, "unexpected KVM exit {other:?}")?,
        }
        match self.rip {
            Some(rip) => write!(f, " at RIP {rip:#x}"),
            None => write!(f, " (RIP unknown)"),
        }
    }
}

/// virtio-net on a TAP, shared between the buses, the I/O thread and a migration.
pub type SharedNet = Arc<Mutex<VirtioPci<Net<Tap>>>>;
/// The control channel's virtio-console, shared likewise.
pub type SharedConsole = Arc<Mutex<VirtioPci<Console>>>;
/// An I/O-thread handler and the operator's handle on the VF.
type AttachedVf = (Box<dyn IoHandler>, Arc<VfHandle<Tap>>);

/// The device models a migration saves, restores and quiesces.
pub struct Devices {
    /// COM1.
    pub serial: Arc<Mutex<SerialDevice<Box<dyn Write + Send>>>>,
    /// The PCI host bridge and bus 0.
    pub pci: Arc<Mutex<PciRoot>>,
    /// virtio-net (`--net`).
    pub net: Option<SharedNet>,
    /// The emulated VF (`--vf`).
    pub vf: Option<Arc<Mutex<Ixgbevf<Tap>>>>,
    /// The control channel's virtio-console (`--control`).
    pub console: Option<SharedConsole>,
}

impl fmt::Debug for Devices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Devices")
            .field("net", &self.net.is_some())
            .field("vf", &self.vf.is_some())
            .field("console", &self.console.is_some())
            .finish_non_exhaustive()
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Devices {
    /// Every device's state (the vCPU stopped and the I/O thread paused).
    pub fn save_state(&self) -> DevicesState {
        DevicesState {
            serial: lock(&self.serial).save_state(),
            pci: lock(&self.pci).save_state(),
            net: self.net.as_ref().map(|d| lock(d).save_state()),
            vf: self.vf.as_ref().map(|d| lock(d).save_state()),
            console: self.console.as_ref().map(|d| lock(d).save_state()),
        }
    }

    /// With the guest paused for a move: takes the frames waiting on virtio-net's TAP into
    /// the device, so they move with its state (or reach the guest here after a rollback)
    /// instead of being dropped with the TAP. Returns how many it holds.
    pub fn hold_net_frames(&self) -> usize {
        self.net
            .as_ref()
            .map_or(0, |n| lock(n).device_mut().hold_backend_frames())
    }

    /// After a rolled-back move: lets virtio-net deliver what it held.
    pub fn kick_net(&self) {
        if let Some(n) = &self.net {
            lock(n).kick_queues();
        }
    }

    /// Applies a source's device states: PCI functions first, then the bus (it reads the
    /// functions' restored headers), then COM1. The destination must have the same devices.
    pub fn restore_state(&self, state: DevicesState) -> Result<(), RestoreError> {
        fn both<'a, T, S>(
            what: &'static str,
            here: &'a Option<T>,
            saved: Option<S>,
        ) -> Result<Option<(&'a T, S)>, RestoreError> {
            match (here, saved) {
                (Some(d), Some(s)) => Ok(Some((d, s))),
                (None, None) => Ok(None),
                (Some(_), None) => Err(RestoreError::DeviceSet {
                    device: what,
                    source_has: false,
                }),
                (None, Some(_)) => Err(RestoreError::DeviceSet {
                    device: what,
                    source_has: true,
                }),
            }
        }
        if let Some((d, s)) = both("virtio-net (--net)", &self.net, state.net)? {
            lock(d).restore_state(s)?;
        }
        // The VF may differ: the source detaches its own before the move, and this side
        // plugs its own in after arrival (if it has one).
        match (&self.vf, state.vf) {
            (Some(d), Some(s)) => lock(d).restore_state(s)?,
            (Some(d), None) => lock(d).mark_unplugged(),
            (None, Some(s)) if s.present => {
                return Err(RestoreError::DeviceSet {
                    device: "a plugged-in VF (--vf)",
                    source_has: true,
                });
            }
            _ => {}
        }
        if let Some((d, s)) = both(
            "the control channel (--control)",
            &self.console,
            state.console,
        )? {
            lock(d).restore_state(s)?;
        }
        lock(&self.pci).restore_state(state.pci)?;
        lock(&self.serial).restore_state(state.serial)?;
        Ok(())
    }
}

/// Why a migration's saved state could not be applied here.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// One side has a device the other has not.
    #[error(
        "the source {} {device} but this host-vmm {}: start `host-vmm receive` with the same devices as the source",
        if *source_has { "has" } else { "has no" },
        if *source_has { "has not" } else { "has" }
    )]
    DeviceSet {
        /// Which device.
        device: &'static str,
        /// Whether the source has it.
        source_has: bool,
    },
    /// A device refused its state.
    #[error(transparent)]
    Device(#[from] DeviceStateError),
    /// KVM refused the VM's or vCPU's state.
    #[error(transparent)]
    Kvm(#[from] KvmError),
}

/// The vCPU thread's side of a pause: the migration asks, the vCPU thread stops at its next
/// exit, saves its registers and waits to be told to go on (rollback) or to stop for good.
#[derive(Debug)]
pub struct VcpuGate {
    kicker: VcpuKicker,
    state: Mutex<Gate>,
    changed: Condvar,
    /// Set with [`Gate::PauseRequested`], so the vCPU loop checks without locking.
    requested: AtomicBool,
}

/// Where the vCPU thread is, as the gate sees it.
#[derive(Debug)]
enum Gate {
    Running,
    PauseRequested,
    /// Stopped at an exit, with its state saved (or why saving failed).
    Paused(Result<Box<VcpuState>, String>),
    Resume,
    Stop,
    /// `Vmm::run` returned.
    Exited,
}

/// Why the vCPU could not be paused.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// The guest is no longer running.
    #[error("the guest is not running any more")]
    Exited,
    /// The vCPU thread did not stop in time.
    #[error("the vCPU did not stop within {0:?}")]
    Timeout(Duration),
    /// Its state could not be read.
    #[error("cannot save the vCPU state: {0}")]
    Save(String),
}

impl VcpuGate {
    fn new(kicker: VcpuKicker) -> Self {
        VcpuGate {
            kicker,
            state: Mutex::new(Gate::Running),
            changed: Condvar::new(),
            requested: AtomicBool::new(false),
        }
    }

    /// Stops the vCPU at its next exit and returns its saved state; it stays stopped until
    /// [`VcpuGate::resume`] or [`VcpuGate::stop`].
    pub fn pause(&self, bound: Duration) -> Result<VcpuState, PauseError> {
        let mut g = lock(&self.state);
        match *g {
            Gate::Exited => return Err(PauseError::Exited),
            Gate::Running | Gate::Resume => *g = Gate::PauseRequested,
            _ => {}
        }
        self.requested.store(true, Ordering::SeqCst);
        self.kicker.kick();
        let deadline = Instant::now() + bound;
        loop {
            match &*g {
                Gate::Paused(Ok(state)) => return Ok((**state).clone()),
                Gate::Paused(Err(e)) => return Err(PauseError::Save(e.clone())),
                Gate::Exited => return Err(PauseError::Exited),
                _ => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PauseError::Timeout(bound));
            }
            g = self
                .changed
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Lets a paused vCPU run on (the migration rolled back).
    pub fn resume(&self) {
        let mut g = lock(&self.state);
        if matches!(*g, Gate::Paused(_) | Gate::PauseRequested) {
            *g = Gate::Resume;
            self.changed.notify_all();
        }
    }

    /// Ends a paused vCPU's run: `Vmm::run` returns [`Outcome::MigratedAway`].
    pub fn stop(&self) {
        let mut g = lock(&self.state);
        if !matches!(*g, Gate::Exited) {
            *g = Gate::Stop;
            self.changed.notify_all();
        }
    }

    /// Called by the vCPU thread after an exit when a pause was asked for: saves the
    /// state, waits for the verdict. `true`: stop for good.
    fn park(&self, vcpu: &mut Vcpu, pio: &Bus, mmio: &Bus) -> bool {
        let mut g = lock(&self.state);
        if !matches!(*g, Gate::PauseRequested) {
            // The pause was given up before the vCPU got here (it timed out and the move
            // rolled back): forget the kick and run on.
            self.requested.store(false, Ordering::SeqCst);
            vcpu.clear_immediate_exit();
            if matches!(*g, Gate::Resume) {
                *g = Gate::Running;
                self.changed.notify_all();
            }
            return false;
        }
        let saved = vcpu
            .complete_pending_io(pio, mmio)
            .and_then(|()| vcpu.save_state())
            .map(Box::new)
            .map_err(|e| format!("{e}"));
        *g = Gate::Paused(saved);
        self.changed.notify_all();
        loop {
            match *g {
                Gate::Resume => {
                    self.requested.store(false, Ordering::SeqCst);
                    // Cleared before saying so: nothing kicks between here and the next pause.
                    vcpu.clear_immediate_exit();
                    *g = Gate::Running;
                    self.changed.notify_all();
                    return false;
                }
                Gate::Stop => return true,
                _ => {
                    g = self.changed.wait(g).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }

    fn exited(&self) {
        *lock(&self.state) = Gate::Exited;
        self.changed.notify_all();
    }
}

/// What a migration reaches while the vCPU thread runs the guest: RAM, the VM, the
/// devices, the I/O thread that serves them, and the vCPU's gate.
pub struct Machine {
    // Drop order: the I/O thread first (it uses devices, the VM and RAM), then the rest.
    io_thread: Option<IoThread>,
    /// The device models.
    pub devices: Devices,
    /// The VM (dirty log, irqchip and clock state).
    pub vm: Vm,
    /// Guest RAM.
    pub ram: GuestRam,
    /// Stops and restarts the vCPU.
    pub gate: VcpuGate,
    /// The operator's handle on the VF.
    pub vf: Option<Arc<VfHandle<Tap>>>,
    /// Writers on the NICs' TAPs and the guest's MAC, for announcing the guest after a move.
    announce: Vec<(File, [u8; 6])>,
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("devices", &self.devices)
            .field("ram", &self.ram.size())
            .finish_non_exhaustive()
    }
}

impl Machine {
    /// Stops device I/O (no handler runs, guest memory is not written from it).
    pub fn pause_io(&self) -> Result<(), crate::io_thread::PauseError> {
        match &self.io_thread {
            Some(t) => t.pause(),
            None => Ok(()),
        }
    }

    /// Lets device I/O run again.
    pub fn resume_io(&self) {
        if let Some(t) = &self.io_thread {
            t.resume();
        }
    }

    /// Sends the guest's MAC from the TAP it arrives on (virtio-net's, else the VF's) as
    /// QEMU's announce-self does (a broadcast RARP), so the L2 learns the new port before
    /// the guest speaks. Returns how many frames went out.
    pub fn announce(&self) -> usize {
        let mut sent = 0;
        for (file, mac) in &self.announce {
            let frame = crate::migration::announce::rarp(*mac);
            match (&*file).write_all(&frame) {
                Ok(_) => sent += 1,
                Err(e) => log::warn!("migration: announcement not sent: {e}"),
            }
        }
        sent
    }
}

/// What the VM is made of besides RAM and the image: the devices on the command line.
#[derive(Clone, Debug, Default)]
pub struct DeviceConfig {
    /// `--net`.
    pub net: Option<NetConfig>,
    /// `--vf`.
    pub vf: Option<VfConfig>,
    /// `--control`.
    pub control: Option<std::path::PathBuf>,
}

impl From<&RunConfig> for DeviceConfig {
    fn from(c: &RunConfig) -> Self {
        DeviceConfig {
            net: c.net.clone(),
            vf: c.vf.clone(),
            control: c.control.clone(),
        }
    }
}

/// The devices' host resources, opened before any KVM work so bad input fails first.
struct Opened {
    tap: Option<Tap>,
    vf_tap: Option<Tap>,
    listener: Option<Listener>,
}

impl Opened {
    fn open(config: &DeviceConfig) -> Result<Opened, Error> {
        Ok(Opened {
            tap: config.net.as_ref().map(|n| Tap::open(&n.tap)).transpose()?,
            vf_tap: config.vf.as_ref().map(|v| Tap::open(&v.tap)).transpose()?,
            // Bound early: a path in use is bad input too. Served once the VM is built.
            listener: config.control.as_deref().map(Listener::bind).transpose()?,
        })
    }
}

/// A VM ready to run: RAM, the vCPU at the image's entry, and the devices.
#[derive(Debug)]
pub struct Vmm {
    // Drop order: the control server (it removes its socket and holds the machine), then
    // the vCPU, then the machine (I/O thread, devices, VM, RAM).
    control: Option<ControlServer>,
    vcpu: Vcpu,
    machine: Arc<Machine>,
    pio: Bus,
    mmio: Bus,
    exit_request: ExitRequest,
}

impl Vmm {
    /// Checks the image, builds the VM and leaves the vCPU at the image's 64-bit entry. The
    /// guest's serial output goes to `console`.
    pub fn new(config: &RunConfig, console: Box<dyn Write + Send>) -> Result<Self, Error> {
        let start = Instant::now();
        // Bad input fails here, before any KVM work.
        let image = Image::open(&config.image, config.mem)?;
        let devices = DeviceConfig::from(config);
        let opened = Opened::open(&devices)?;
        let kvm = Kvm::open()?;
        let ram = GuestRam::new(config.mem.bytes())?;
        let (vm, vcpu) = Self::create_vm(&kvm, &ram)?;
        image.load_into(ram.memory())?;
        boot::write_boot_structures(ram.memory(), ram.size(), &config.cmdline)?;
        let mut sregs = vcpu.sregs()?;
        regs::set_boot_sregs(&mut sregs);
        vcpu.set_sregs(&sregs)?;
        vcpu.set_regs(&regs::boot_regs(image.entry()))?;
        let vmm = Self::assemble(&kvm, ram, vm, vcpu, &devices, opened, console)?;
        log::debug!(
            "vm: ready in {:?}; entry {:#x}, {} of RAM",
            start.elapsed(),
            image.entry(),
            config.mem
        );
        Ok(vmm)
    }

    /// A VM for an incoming migration over `ram` (zeroed, or the source's own memfd): the
    /// devices of `config`, the vCPU with this host's CPUID, nothing loaded and no boot
    /// state; the migration's saved state goes in with [`Vmm::restore`].
    pub fn for_incoming(
        config: &DeviceConfig,
        ram: GuestRam,
        console: Box<dyn Write + Send>,
    ) -> Result<Self, Error> {
        let opened = Opened::open(config)?;
        let kvm = Kvm::open()?;
        let (vm, vcpu) = Self::create_vm(&kvm, &ram)?;
        Self::assemble(&kvm, ram, vm, vcpu, config, opened, console)
    }

    /// Applies a migration's saved state: the VM's (irqchip, clock) before the vCPU's, then
    /// the devices'.
    pub fn restore(
        &mut self,
        vm: &VmState,
        vcpu: &VcpuState,
        devices: DevicesState,
    ) -> Result<(), RestoreError> {
        self.machine.vm.restore_state(vm)?;
        self.vcpu.restore_state(vcpu)?;
        self.machine.devices.restore_state(devices)?;
        Ok(())
    }

    /// Creates the VM and its vCPU in KVM's fast order (VM, RAM, irqchip, vCPU).
    fn create_vm(kvm: &Kvm, ram: &GuestRam) -> Result<(Vm, Vcpu), Error> {
        let vm = Vm::new(
            kvm,
            ram,
            KvmPages {
                tss: arch::KVM_TSS_ADDR,
                identity_map: arch::KVM_IDENTITY_MAP_ADDR,
            },
        )?;
        let vcpu = vm.create_vcpu(0)?;
        Ok((vm, vcpu))
    }

    /// Sets CPUID, puts the devices together, starts the I/O thread and the control server.
    fn assemble(
        kvm: &Kvm,
        ram: GuestRam,
        vm: Vm,
        vcpu: Vcpu,
        config: &DeviceConfig,
        opened: Opened,
        console: Box<dyn Write + Send>,
    ) -> Result<Self, Error> {
        // KVM_GET_SUPPORTED_CPUID (~0.4 ms here) is asked once. Asking it on a helper thread
        // while the VM is built was measured slower on these 2-vCPU hosts: the memslot and
        // irqchip ioctls then seem to wait for the CPU busy in it.
        let mut cpuid = kvm.supported_cpuid()?;
        cpuid::patch(
            &mut cpuid,
            cpuid::CpuidParams {
                tsc_deadline: kvm.has_tsc_deadline_timer(),
                tsc_khz: vcpu.tsc_khz(),
            },
        );
        vcpu.set_cpuid(&cpuid)?;

        let exit_request = ExitRequest::default();
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
        vm.register_irqfd(&serial_irq, COM1_IRQ)?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq, console)));
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
        let mut handlers: Vec<Box<dyn IoHandler>> = Vec::new();
        let mut announce = Vec::new();
        let mut msi_gsis = FIRST_MSI_GSI..u32::MAX;
        let mut devices = Devices {
            serial,
            pci: pci.clone(),
            net: None,
            vf: None,
            console: None,
        };
        if let (Some(net), Some(tap)) = (&config.net, opened.tap) {
            announce.push((tap.writer().map_err(Error::EventFd)?, net.mac.octets()));
            let mut root = lock(&pci);
            let (handler, device) = attach_net(&vm, &ram, &mut root, &mut msi_gsis, net, tap)?;
            handlers.push(handler);
            devices.net = Some(device);
        }
        // The VF goes last on the bus: it is the one device that may be absent on a
        // migration's other side, and later slots must not move because of it.
        let agent_port = match &opened.listener {
            Some(_) => {
                let mut root = lock(&pci);
                let (handler, port, device) = attach_console(&vm, &ram, &mut root, &mut msi_gsis)?;
                handlers.push(handler);
                devices.console = Some(device);
                Some(port)
            }
            None => None,
        };
        let vf = match (&config.vf, opened.vf_tap) {
            (Some(vf), Some(tap)) => {
                // Announced from the VF's TAP only without virtio-net: a guest that arrives
                // runs on virtio-net until its agent re-attaches the VF (and announces there
                // itself); pointing the L2 at the VF's port earlier lost frames.
                if announce.is_empty() {
                    announce.push((tap.writer().map_err(Error::EventFd)?, vf.mac.octets()));
                }
                let (handler, operator) = attach_vf(&vm, &ram, &pci, &mut msi_gsis, vf, tap)?;
                handlers.push(handler);
                devices.vf = Some(operator.device().clone());
                Some(operator)
            }
            _ => None,
        };
        // Only devices that need one get a thread: without --net there is none.
        let io_thread = match handlers.is_empty() {
            true => None,
            false => Some(IoThread::spawn(handlers).map_err(Error::IoThread)?),
        };
        let gate = VcpuGate::new(vcpu.kicker()?);
        let machine = Arc::new(Machine {
            io_thread,
            devices,
            vm,
            ram,
            gate,
            vf,
            announce,
        });
        let control = match (opened.listener, agent_port) {
            (Some(listener), Some(agent)) => Some(
                listener.serve(Services {
                    agent,
                    vf: machine
                        .vf
                        .clone()
                        .map(|v| v as Arc<dyn control::VfOperator>),
                    agent_timeout: control::AGENT_TIMEOUT,
                    machine: Some(machine.clone()),
                })?,
            ),
            _ => None,
        };
        Ok(Vmm {
            control,
            vcpu,
            machine,
            pio,
            mmio,
            exit_request,
        })
    }

    /// What a migration reaches (shared with the control server).
    pub fn machine(&self) -> &Arc<Machine> {
        &self.machine
    }

    /// An incoming migration's guest is about to run: announce its MAC on the TAPs, then
    /// plug the VF back in and send the agent RESUMED (on the control thread, which owns
    /// the agent link).
    pub fn after_arrival(&self) {
        let sent = self.machine.announce();
        log::info!("migration: announced the guest's MAC ({sent} frames)");
        match &self.control {
            Some(control) => control.guest_arrived(),
            None => {
                if let Some(vf) = &self.machine.vf
                    && !vf.state().present
                    && let Err(e) = vf.add()
                {
                    log::warn!("migration: cannot plug the VF in: {e}");
                }
            }
        }
    }

    /// Runs the guest until it reports a status, stops without one, or moves away.
    pub fn run(&mut self) -> Result<Outcome, Error> {
        let result = self.run_loop();
        self.machine.gate.exited();
        result
    }

    fn run_loop(&mut self) -> Result<Outcome, Error> {
        loop {
            let exit = self.vcpu.run(&self.pio, &self.mmio)?;
            if self.machine.gate.requested.load(Ordering::Relaxed)
                && self
                    .machine
                    .gate
                    .park(&mut self.vcpu, &self.pio, &self.mmio)
            {
                return Ok(Outcome::MigratedAway);
            }
            match exit {
                VcpuExit::Io { write: true, .. } => {
                    if let Some(status) = self.exit_request.status() {
                        return Ok(Outcome::GuestExit(status));
                    }
                }
                VcpuExit::Io { write: false, .. } | VcpuExit::Mmio => {}
                VcpuExit::Interrupted => {
                    // A kick without a pause (one that raced a resume): go on.
                    if !self.machine.gate.requested.load(Ordering::Relaxed) {
                        self.vcpu.clear_immediate_exit();
                    }
                }
                stop => {
                    let rip = self.vcpu.regs().ok().map(|r| r.rip);
                    return Ok(Outcome::GuestStopped(GuestStop { exit: stop, rip }));
                }
            }
        }
    }
}

/// MSI-X vectors of the virtio-net card: one per queue and one for configuration changes.
const NET_MSIX_VECTORS: u32 = 3;
/// IOAPIC pin of device 1's INTA; device `n` gets pin 16 + (n - 1) % 8 (the pins no ISA
/// device uses, routed to the IOAPIC only).
const PCI_INTX_FIRST_GSI: u32 = 16;

/// Puts a virtio-net card on `tap` on the PCI bus, wires its interrupts (MSI-X vectors on
/// GSIs taken from `msi_gsis`, INTA on an IOAPIC pin) and returns its I/O-thread handler.
fn attach_net(
    vm: &Vm,
    ram: &GuestRam,
    root: &mut PciRoot,
    msi_gsis: &mut std::ops::Range<u32>,
    net: &NetConfig,
    tap: Tap,
) -> Result<(Box<dyn IoHandler>, SharedNet), Error> {
    let mut vectors = Vec::new();
    for gsi in msi_gsis.take(NET_MSIX_VECTORS as usize) {
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
        vm.register_irqfd(&irqfd, gsi)?;
        vectors.push(MsixVector { gsi, irqfd });
    }
    let device_number = root.device_count() as u32;
    let intx_gsi = PCI_INTX_FIRST_GSI + (device_number.saturating_sub(1) % 8);
    let intx = IntxLine {
        gsi: intx_gsi as u8,
    };
    let device = VirtioPci::new(
        Net::new(tap, net.mac.octets()),
        ram.memory().clone(),
        vm.device_ops(),
        vectors,
        Some(intx),
    )?;
    let device = Arc::new(Mutex::new(device));
    let slot = root.add_device(device.clone())?;
    log::info!(
        "virtio-net: PCI 00:{slot:02x}.0, MAC {}, TAP {}, INTA on GSI {intx_gsi}",
        net.mac,
        net.tap
    );
    Ok((Box::new(VirtioPci::io_handler(&device)), device))
}

/// MSI-X vectors of the virtio-console: receiveq and configuration changes (the transmit
/// queue needs none: the guest reclaims its buffers when it sends).
const CONSOLE_MSIX_VECTORS: u32 = 2;

/// Puts the virtio-console for the guest agent on the PCI bus, wires its interrupts like
/// [`attach_net`], and returns its I/O-thread handler and the host end of its port.
fn attach_console(
    vm: &Vm,
    ram: &GuestRam,
    root: &mut PciRoot,
    msi_gsis: &mut std::ops::Range<u32>,
) -> Result<(Box<dyn IoHandler>, HostPort, SharedConsole), Error> {
    let mut vectors = Vec::new();
    for gsi in msi_gsis.take(CONSOLE_MSIX_VECTORS as usize) {
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
        vm.register_irqfd(&irqfd, gsi)?;
        vectors.push(MsixVector { gsi, irqfd });
    }
    let device_number = root.device_count() as u32;
    let intx_gsi = PCI_INTX_FIRST_GSI + (device_number.saturating_sub(1) % 8);
    let (console, port) = Console::new().map_err(Error::EventFd)?;
    let device = VirtioPci::new(
        console,
        ram.memory().clone(),
        vm.device_ops(),
        vectors,
        Some(IntxLine {
            gsi: intx_gsi as u8,
        }),
    )?;
    let device = Arc::new(Mutex::new(device));
    let slot = root.add_device(device.clone())?;
    log::info!("virtio-console: PCI 00:{slot:02x}.0 (guest agent), INTA on GSI {intx_gsi}");
    Ok((Box::new(VirtioPci::io_handler(&device)), port, device))
}

/// MSI-X vectors of the VF, as on a real 82599 VF: two queue pairs and "other".
const VF_MSIX_VECTORS: u16 = ixgbevf_regs::MSIX_VECTORS;

/// Puts an emulated 82599 VF on `tap` on the PCI bus with its MSI-X vectors on GSIs taken
/// from `msi_gsis` (no INTx: VFs have none), and returns its I/O-thread handler and the
/// operator's handle on it.
fn attach_vf(
    vm: &Vm,
    ram: &GuestRam,
    pci: &Arc<Mutex<PciRoot>>,
    msi_gsis: &mut std::ops::Range<u32>,
    config: &VfConfig,
    tap: Tap,
) -> Result<AttachedVf, Error> {
    let mut vectors = Vec::new();
    for gsi in msi_gsis.take(usize::from(VF_MSIX_VECTORS)) {
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
        vm.register_irqfd(&irqfd, gsi)?;
        vectors.push(MsixVector { gsi, irqfd });
    }
    // Not trusted, as a PF leaves a VF whose MAC the administrator set.
    let device = Ixgbevf::new(
        tap,
        config.mac.octets(),
        false,
        ram.memory().clone(),
        vm.device_ops(),
        vectors,
    )?;
    let device = Arc::new(Mutex::new(device));
    let slot = pci
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .add_device(device.clone())?;
    log::info!(
        "ixgbevf: PCI 00:{slot:02x}.0, MAC {}, TAP {}",
        config.mac,
        config.tap
    );
    let handler = IxgbevfHandler::new(&device);
    Ok((
        Box::new(handler),
        Arc::new(VfHandle::new(device, pci.clone(), slot)),
    ))
}

/// Builds the VM for `config` and runs it to the end, with the serial console on stdout.
pub fn run(config: &RunConfig) -> Result<Outcome, Error> {
    Vmm::new(config, Box::new(std::io::stdout()))?.run()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_are_reported_on_one_line_with_rip() {
        let stop = GuestStop {
            exit: VcpuExit::Shutdown,
            rip: Some(0x10_0042),
        };
        assert_eq!(
            stop.to_string(),
            "the guest stopped without an exit status: triple fault (KVM_EXIT_SHUTDOWN) at RIP 0x100042"
        );
        let stop = GuestStop {
            exit: VcpuExit::InternalError {
                suberror: 1,
                data: vec![0x10, 0x20],
            },
            rip: None,
        };
        let text = stop.to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(text.contains("suberror 1 (emulation failure)"), "{text}");
        assert!(text.contains("RIP unknown"), "{text}");
    }

    #[test]
    fn exit_statuses_follow_architecture_md() {
        assert_eq!(Outcome::GuestExit(7).exit_status(), 7);
        let stop = GuestStop {
            exit: VcpuExit::Shutdown,
            rip: None,
        };
        assert_eq!(Outcome::GuestStopped(stop).exit_status(), 124);
    }

    /// Tiny guests run on real KVM: each is raw 64-bit code at 1 MiB (assembly in comments).
    mod kvm {
        use super::*;
        use crate::config::{Cmdline, MemSize};
        use crate::test_utils::{Captured, TempFile, kvm_available, tiny_guest};

        /// Writes "H\n" to COM1, then 0x12A to the debug-exit port (status 0x2A: low byte).
        const HELLO: &[u8] = &[
            0x66, 0xBA, 0xF8, 0x03, // mov dx, 0x3f8
            0xB0, 0x48, // mov al, 'H'
            0xEE, // out dx, al
            0xB0, 0x0A, // mov al, '\n'
            0xEE, // out dx, al
            0x66, 0xBA, 0xF4, 0x00, // mov dx, 0xf4
            0xB8, 0x2A, 0x01, 0x00, 0x00, // mov eax, 0x12a
            0xEF, // out dx, eax
            0xF4, // hlt (not reached)
        ];

        /// `ud2` with no IDT: #UD, #DF, then a triple fault.
        const UD2: &[u8] = &[0x0F, 0x0B];

        /// Maps 512 MiB (outside 16 MiB of RAM) with a 2 MiB page, reads and writes it (MMIO),
        /// reads port 0x80 (nothing there), exits with mmio_value + port_value: 0xFE (254) iff
        /// both read as all-ones.
        const MMIO: &[u8] = &[
            0xB8, 0x83, 0x00, 0x00, 0x20, // mov eax, 0x20000083
            0x48, 0x89, 0x04, 0x25, 0x00, 0xB8, 0x00, 0x00, // mov [0xb800], rax (PD[256])
            0xBB, 0x00, 0x00, 0x00, 0x20, // mov ebx, 0x20000000
            0x8B, 0x0B, // mov ecx, [rbx]
            0xC7, 0x03, 0x78, 0x56, 0x34, 0x12, // mov dword [rbx], 0x12345678
            0x66, 0xBA, 0x80, 0x00, // mov dx, 0x80
            0xEC, // in al, dx
            0x0F, 0xB6, 0xC0, // movzx eax, al
            0x01, 0xC8, // add eax, ecx
            0x66, 0xBA, 0xF4, 0x00, // mov dx, 0xf4
            0xEF, // out dx, eax
            0xF4, // hlt
        ];

        /// `rep outsb` of "Hi\n" to COM1 (one exit, three 1-byte accesses), then status 0.
        const REP_OUTSB: &[u8] = &[
            0x48, 0x8D, 0x35, 0x13, 0x00, 0x00, 0x00, // lea rsi, [rip + msg]
            0xB9, 0x03, 0x00, 0x00, 0x00, // mov ecx, 3
            0x66, 0xBA, 0xF8, 0x03, // mov dx, 0x3f8
            0xF3, 0x6E, // rep outsb
            0x66, 0xBA, 0xF4, 0x00, // mov dx, 0xf4
            0x31, 0xC0, // xor eax, eax
            0xEF, // out dx, eax
            0xF4, // hlt
            b'H', b'i', b'\n', // msg
        ];

        /// Prints the command line found through RDI's hvm_start_info, then exits with
        /// (magic - 0x336ec578) + (memory map size in MiB).
        const BOOT_INFO: &[u8] = &[
            0x48, 0x8B, 0x77, 0x18, // mov rsi, [rdi + 24] (cmdline_paddr)
            0x66, 0xBA, 0xF8, 0x03, // mov dx, 0x3f8
            0xAC, // 1: lodsb
            0x84, 0xC0, // test al, al
            0x74, 0x03, // jz 2f
            0xEE, // out dx, al
            0xEB, 0xF8, // jmp 1b
            0x8B, 0x07, // 2: mov eax, [rdi] (magic)
            0x2D, 0x78, 0xC5, 0x6E, 0x33, // sub eax, 0x336ec578
            0x48, 0x8B, 0x5F, 0x28, // mov rbx, [rdi + 40] (memmap_paddr)
            0x48, 0x8B, 0x4B, 0x08, // mov rcx, [rbx + 8] (size of entry 0)
            0x48, 0xC1, 0xE9, 0x14, // shr rcx, 20
            0x01, 0xC8, // add eax, ecx
            0x66, 0xBA, 0xF4, 0x00, // mov dx, 0xf4
            0xEF, // out dx, eax
            0xF4, // hlt
        ];

        fn boot(code: &[u8], cmdline: &str) -> (Outcome, String) {
            let image = TempFile::new("tiny", &tiny_guest(code));
            let config = RunConfig {
                image: image.0.clone(),
                mem: MemSize::new(16 << 20).unwrap(),
                cmdline: Cmdline::new(cmdline).unwrap(),
                net: None,
                vf: None,
                control: None,
            };
            let console = Captured::default();
            let mut vmm = Vmm::new(&config, Box::new(console.clone())).unwrap();
            let outcome = vmm.run().unwrap();
            (outcome, console.text())
        }

        #[test]
        fn serial_output_and_the_exit_status_reach_the_host() {
            if !kvm_available("serial_output_and_the_exit_status_reach_the_host") {
                return;
            }
            let (outcome, out) = boot(HELLO, "");
            assert_eq!(out, "H\n");
            assert_eq!(outcome, Outcome::GuestExit(0x2A));
        }

        #[test]
        fn the_guest_finds_its_boot_info_through_rdi() {
            if !kvm_available("the_guest_finds_its_boot_info_through_rdi") {
                return;
            }
            let (outcome, out) = boot(BOOT_INFO, "log=debug hello");
            assert_eq!(out, "log=debug hello");
            assert_eq!(outcome, Outcome::GuestExit(16), "magic ok, 16 MiB of RAM");
        }

        #[test]
        fn a_triple_fault_is_a_stop_without_status() {
            if !kvm_available("a_triple_fault_is_a_stop_without_status") {
                return;
            }
            let (outcome, _) = boot(UD2, "");
            let Outcome::GuestStopped(stop) = outcome else {
                panic!("expected a stop, got {outcome:?}");
            };
            assert_eq!(stop.exit, VcpuExit::Shutdown);
            assert!(stop.to_string().contains("triple fault"), "{stop}");
            assert!(stop.rip.is_some());
        }

        #[test]
        fn unhandled_mmio_and_ports_read_as_all_ones() {
            if !kvm_available("unhandled_mmio_and_ports_read_as_all_ones") {
                return;
            }
            assert_eq!(boot(MMIO, "").0, Outcome::GuestExit(0xFE));
        }

        #[test]
        fn string_port_io_is_split_into_single_accesses() {
            if !kvm_available("string_port_io_is_split_into_single_accesses") {
                return;
            }
            let (outcome, out) = boot(REP_OUTSB, "");
            assert_eq!(out, "Hi\n");
            assert_eq!(outcome, Outcome::GuestExit(0));
        }
    }
}
