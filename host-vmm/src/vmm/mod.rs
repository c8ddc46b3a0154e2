//! Putting a VM together and running it: the one place that knows the order of things.
//!
//! [`Vmm::new`] checks the image, then builds the VM in KVM's fast order (VM, RAM, irqchip,
//! vCPU), loads the image, writes the boot structures and sets the vCPU's entry state;
//! [`Vmm::for_incoming`] builds the same VM empty for a migration's saved state. The
//! devices are the [`DeviceManager`]'s; an I/O thread serves their queues. [`Vmm::run`]
//! then enters the guest until it reports a status, stops without one, or is stopped at its
//! [`VcpuGate`].
//!
//! Everything a pause, a migration or the control plane needs while the vCPU thread runs
//! the guest is in the shared [`Machine`]. This module knows nothing of either: they are
//! built on top of it.

mod outcome;

use crate::arch::x86_64::{self as arch, boot, cpuid, regs};
use crate::config::{DeviceConfig, RunConfig};
use crate::device_manager::{DeviceError, DeviceManager, DevicesState, Opened, RestoreError};
use crate::devices::DeviceStateError;
use crate::io_thread::IoThread;
use crate::kvm::snapshot::{VcpuState, VmState};
use crate::kvm::vcpu::{Vcpu, VcpuExit};
use crate::kvm::vm::{KvmPages, Vm};
use crate::kvm::{Kvm, KvmError};
use crate::loader::{Image, LoadError};
use crate::memory::{GuestRam, MemoryError};
use crate::pause::{Pause, PauseError};
use crate::vcpu_gate::{Stopped, VcpuGate};
pub use outcome::{GuestStop, Outcome, StopRegisters};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

/// Process exit status when the guest stopped without reporting one (docs/boot-abi.md).
pub const EXIT_NO_GUEST_STATUS: u8 = 124;
/// Process exit status when host-vmm itself failed (docs/boot-abi.md).
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
    /// The devices could not be built.
    #[error(transparent)]
    Devices(#[from] DeviceError),
    /// The I/O thread could not be started.
    #[error("cannot start the I/O thread")]
    IoThread(#[source] std::io::Error),
}

/// Everything but guest RAM: what crosses during a migration's pause.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MachineState {
    /// irqchip and KVM clock.
    pub vm: VmState,
    /// The one vCPU.
    pub vcpu: VcpuState,
    /// Every device, one section each.
    pub devices: DevicesState,
}

/// Why a saved machine state could not be applied here.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The devices refused.
    #[error(transparent)]
    Devices(#[from] RestoreError),
    /// KVM refused the VM's or vCPU's state.
    #[error(transparent)]
    Kvm(#[from] KvmError),
}

/// What is shared with the threads that pause, save or drive the guest while the vCPU
/// thread runs it: RAM, the VM, the devices, the I/O thread and the vCPU's gate.
pub struct Machine {
    // Drop order: the I/O thread first (it uses devices, the VM and RAM), then the rest.
    io_thread: Option<IoThread>,
    /// The device models.
    pub devices: DeviceManager,
    /// The VM (dirty log, irqchip and clock state).
    pub vm: Vm,
    /// Guest RAM.
    pub ram: GuestRam,
    /// Stops and restarts the vCPU.
    pub gate: VcpuGate,
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("devices", &self.devices)
            .field("ram", &self.ram.size())
            .finish_non_exhaustive()
    }
}

/// Device I/O of a VM without an I/O thread: nothing to stop.
struct NoIo;

impl Pause for NoIo {
    fn pause(&self) -> Result<(), PauseError> {
        Ok(())
    }
    fn resume(&self) {}
}

impl Machine {
    /// Device I/O (the I/O thread, if the VM has one).
    pub fn io(&self) -> &dyn Pause {
        match &self.io_thread {
            Some(t) => t,
            None => &NoIo,
        }
    }

    /// The whole machine's state, with the vCPU and device I/O paused.
    pub fn save(&self) -> Result<MachineState, SaveError> {
        Ok(MachineState {
            vm: self.vm.save_state()?,
            vcpu: self.gate.saved_state()?,
            devices: self.devices.save()?,
        })
    }
}

/// Why the machine state could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// KVM refused to give the VM's state.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// The vCPU's state is not there (not paused, or saving failed).
    #[error(transparent)]
    Pause(#[from] PauseError),
    /// A device state could not be encoded.
    #[error(transparent)]
    Device(#[from] DeviceStateError),
}

/// The whole machine pauses device I/O first (no more DMA), then the vCPU; it resumes the
/// other way round.
impl Pause for Machine {
    fn pause(&self) -> Result<(), PauseError> {
        self.io().pause()?;
        if let Err(e) = self.gate.pause() {
            self.io().resume();
            return Err(e);
        }
        Ok(())
    }

    fn resume(&self) {
        self.gate.resume();
        self.io().resume();
    }
}

/// A VM ready to run: the vCPU at the image's entry (or a migrated guest's state), and the
/// shared machine.
#[derive(Debug)]
pub struct Vmm {
    // Drop order: the vCPU, then the machine (I/O thread, devices, VM, RAM).
    vcpu: Vcpu,
    machine: Arc<Machine>,
}

impl Vmm {
    /// Checks the image, builds the VM and leaves the vCPU at the image's 64-bit entry. The
    /// guest's serial output goes to `console`.
    pub fn new(config: &RunConfig, console: Box<dyn Write + Send>) -> Result<Self, Error> {
        let start = Instant::now();
        // Bad input fails here, before any KVM work.
        let image = Image::open(&config.image, config.mem)?;
        let opened = Opened::open(&config.devices)?;
        let kvm = Kvm::open()?;
        let ram = GuestRam::new(config.mem.bytes())?;
        let (vm, vcpu) = Self::create_vm(&kvm, &ram)?;
        image.load_into(ram.memory())?;
        boot::write_boot_structures(ram.memory(), ram.size(), &config.cmdline)?;
        let mut sregs = vcpu.sregs()?;
        regs::set_boot_sregs(&mut sregs);
        vcpu.set_sregs(&sregs)?;
        vcpu.set_regs(&regs::boot_regs(image.entry()))?;
        let vmm = Self::assemble(&kvm, ram, vm, vcpu, &config.devices, opened, console)?;
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

    /// What other threads reach while the vCPU runs.
    pub fn machine(&self) -> &Arc<Machine> {
        &self.machine
    }

    /// Applies a migration's saved state: the VM's (irqchip, clock) before the vCPU's, then
    /// the devices'.
    pub fn restore(&mut self, state: &MachineState) -> Result<(), ApplyError> {
        self.machine.vm.restore_state(&state.vm)?;
        self.vcpu.restore_state(&state.vcpu)?;
        self.machine.devices.restore(&state.devices)?;
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

    /// Sets CPUID, builds the devices and starts the I/O thread.
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
        let built = DeviceManager::build(&vm, &ram, config, opened, console)?;
        // Only devices that need one get a thread: without NICs or agent there is none.
        let io_thread = match built.handlers.is_empty() {
            true => None,
            false => Some(IoThread::spawn(built.handlers).map_err(Error::IoThread)?),
        };
        let gate = VcpuGate::new(vcpu.kicker()?);
        let machine = Arc::new(Machine {
            io_thread,
            devices: built.devices,
            vm,
            ram,
            gate,
        });
        Ok(Vmm { vcpu, machine })
    }

    /// Runs the guest until it reports a status, stops without one, or is stopped at its
    /// gate (moved away, shut down).
    pub fn run(&mut self) -> Result<Outcome, Error> {
        let result = self.run_loop();
        self.machine.gate.exited();
        // The controller may end the process as soon as it hears how the run ended.
        self.machine
            .devices
            .serial_output()
            .wait_written(crate::devices::serial::output::DRAIN_AT_CLOSE);
        result
    }

    fn run_loop(&mut self) -> Result<Outcome, Error> {
        let machine = self.machine.clone();
        let (pio, mmio) = (machine.devices.pio(), machine.devices.mmio());
        loop {
            let exit = self.vcpu.run(pio, mmio)?;
            if machine.gate.requested()
                && let Some(why) = machine.gate.park(&mut self.vcpu, pio, mmio)
            {
                return Ok(match why {
                    Stopped::MigratedAway => Outcome::MigratedAway,
                    Stopped::ShutDown => Outcome::ShutDown,
                });
            }
            match exit {
                VcpuExit::Io { write: true, .. } => {
                    if let Some(status) = machine.devices.exit_status() {
                        return Ok(Outcome::GuestExit(status));
                    }
                }
                VcpuExit::Io { write: false, .. } | VcpuExit::Mmio => {}
                VcpuExit::Interrupted => {
                    // A kick without a pause (the throttle's, or one that raced a resume):
                    // sleep if the throttle asks, then go on.
                    if !machine.gate.requested() {
                        self.vcpu.clear_immediate_exit();
                        machine.gate.throttle_wait();
                        // A pause asked meanwhile may have had its kick cleared above.
                        if machine.gate.requested() {
                            self.vcpu.set_immediate_exit(true);
                        }
                    }
                }
                stop => {
                    let regs = self.vcpu.regs().ok().map(|r| StopRegisters {
                        rip: r.rip,
                        rsp: r.rsp,
                        rflags: r.rflags,
                    });
                    return Ok(Outcome::GuestStopped(GuestStop { exit: stop, regs }));
                }
            }
        }
    }
}

/// Builds the VM for `config` and runs it to the end, with the serial console on stdout.
pub fn run(config: &RunConfig) -> Result<Outcome, Error> {
    Vmm::new(config, Box::new(std::io::stdout()))?.run()
}

#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;
