//! What a device may ask of the VM without importing `kvm`: point an interrupt line (GSI) at
//! an MSI message, drive an IOAPIC pin's level (PCI INTx), and have guest writes to an
//! address signal an eventfd (an ioeventfd).
//!
//! `kvm` implements [`VmOps`] over the VM fd; unit tests use [`RecordingVmOps`], which only
//! records what was asked. MSI-X vectors are plain [`EventFd`]s the VMM has already bound to
//! their GSIs (irqfds), so sending one is an eventfd write, never a VM call.

use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;
use vmm_sys_util::eventfd::EventFd;

/// An MSI message: the 32-bit `data` a device writes to `address` to interrupt a CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address (0xFEEx_xxxx on x86, low and high dwords together).
    pub address: u64,
    /// Message data (vector, delivery mode, trigger mode).
    pub data: u32,
}

/// The VM services devices use. Calls are rare (guest configuration, BAR moves), never per
/// packet.
pub trait VmOps: Send + Sync {
    /// Routes interrupt line `gsi` to `msg`, or removes its route with `None`.
    fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> io::Result<()>;
    /// Makes a guest write of any size to MMIO address `addr` signal `event` instead of
    /// exiting to the VMM.
    fn register_ioevent(&self, event: &EventFd, addr: u64) -> io::Result<()>;
    /// Undoes [`VmOps::register_ioevent`].
    fn unregister_ioevent(&self, event: &EventFd, addr: u64) -> io::Result<()>;
    /// Sets the level of IOAPIC pin `gsi` (a PCI INTx line: high while the device has an
    /// interrupt pending).
    fn set_irq_line(&self, gsi: u32, high: bool) -> io::Result<()>;
}

/// A [`VmOps`] that records the current routes and ioevent addresses (for tests, and for
/// running device models without a VM).
#[derive(Debug, Default)]
pub struct RecordingVmOps {
    state: Mutex<Recorded>,
}

/// What a [`RecordingVmOps`] was asked, as it stands now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Current MSI routes by GSI.
    pub routes: BTreeMap<u32, MsiMessage>,
    /// Number of route changes asked for.
    pub route_updates: usize,
    /// Registered ioevent addresses, sorted.
    pub ioevents: Vec<u64>,
    /// Number of ioevent registrations and removals asked for.
    pub ioevent_calls: usize,
    /// IOAPIC pins currently high.
    pub lines_high: Vec<u32>,
    /// Number of line level changes asked for.
    pub line_changes: usize,
}

impl RecordingVmOps {
    /// What was asked so far.
    pub fn recorded(&self) -> Recorded {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl VmOps for RecordingVmOps {
    fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> io::Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.route_updates += 1;
        match msg {
            Some(msg) => s.routes.insert(gsi, msg),
            None => s.routes.remove(&gsi),
        };
        Ok(())
    }

    fn register_ioevent(&self, _event: &EventFd, addr: u64) -> io::Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.ioevent_calls += 1;
        if s.ioevents.contains(&addr) {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        s.ioevents.push(addr);
        s.ioevents.sort_unstable();
        Ok(())
    }

    fn unregister_ioevent(&self, _event: &EventFd, addr: u64) -> io::Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.ioevent_calls += 1;
        let before = s.ioevents.len();
        s.ioevents.retain(|&a| a != addr);
        if s.ioevents.len() == before {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        Ok(())
    }

    fn set_irq_line(&self, gsi: u32, high: bool) -> io::Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.line_changes += 1;
        s.lines_high.retain(|&g| g != gsi);
        if high {
            s.lines_high.push(gsi);
        }
        Ok(())
    }
}
