//! The virtio 1.x PCI transport, modern only (virtio 1.x, 4.1), laid out as QEMU lays out
//! `virtio-*-pci,disable-legacy=on`, so a driver written against QEMU finds the same thing:
//!
//! | where | what |
//! |---|---|
//! | IDs | vendor 0x1AF4, device 0x1040 + type (0x1041 for net), revision 1, subsystem 0x1AF4/type |
//! | BAR 1 | 4 KiB, 32-bit: MSI-X table at 0, pending bits at 0x800 |
//! | BAR 4 | 16 KiB, 64-bit prefetchable: common config 0x0000, ISR 0x1000, device config 0x2000, notify 0x3000 (multiplier 4, queue N at 0x3000 + 4N) |
//! | capabilities | MSI-X, then the vendor capabilities common, ISR, device, notify and PCI-config access |
//!
//! Queue notifications: every queue has an eventfd. While the device runs (DRIVER_OK
//! accepted) and BAR 4 decodes inside the MMIO window, each is registered as an ioeventfd on
//! its notify address, so a guest kick never exits to the VMM; the registration follows the
//! BAR if the guest moves it or turns decoding off while the device runs. Not before
//! DRIVER_OK: a driver sizes BARs (decoding off, all ones written, restored) several times
//! while it probes, and a `KVM_IOEVENTFD` may wait for an SRCU grace period in KVM (up to
//! 12 ms measured here), so following every flip cost ~200 ms of boot; before DRIVER_OK a
//! kick does nothing anyway. A kick that does reach the VMM (no ioeventfd) writes the same
//! eventfd, so all queue work happens on the I/O thread ([`VirtioPciHandler`]).
//!
//! Interrupts: with MSI-X enabled, queue N raises its `queue_msix_vector` and configuration
//! changes raise `config_msix_vector` (NO_VECTOR: nothing). With MSI-X disabled the device
//! falls back to INTx on its INTA pin ([`IntxLine`]), with QEMU's semantics: the line is high
//! exactly while the ISR is non-zero (and the command register does not disable INTx), and
//! reading the ISR lowers it. A driver may program the IOAPIC pin level- or edge-triggered.
//!
//! Migration state ([`VirtioPciState`]): the function's configuration header (command,
//! BARs as the guest programmed them, MSI-X control), the MSI-X table and pending bits, the
//! common configuration (feature selects, negotiated features, device status, config
//! generation, config vector, queue select), the ISR, and per queue its registers (size,
//! vector, enable, descriptor/driver/device addresses) and ring positions (`next_avail`,
//! `next_used`), plus the device's own part. Event-index use follows from the negotiated
//! features; notification suppression (`avail_event`, the used ring's NO_NOTIFY flag) lives
//! in guest RAM and moves with it. Whether the device runs follows from the status
//! (DRIVER_OK without NEEDS_RESET or FAILED). Restoring ([`VirtioPci`]'s
//! [`Persist::restore`]) rebuilds the host side from those: MSI-X routes, the notify
//! ioeventfds at the restored BAR 4 address, the INTx level, and the device's queues,
//! checked as at DRIVER_OK.
//!
//! Layout: this file is the transport (the PCI function and its I/O-thread handler);
//! `state.rs` holds [`VirtioPciState`] and [`VirtqueueState`] as plain data, and `tests.rs`
//! the unit tests.

mod state;

#[cfg(test)]
mod tests;

pub use state::{VirtioPciState, VirtqueueState};

use super::queue::QueueRegs;
use super::{
    GuestError, NO_VECTOR, QueueSet, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK,
    STATUS_NEEDS_RESET, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VirtioDevice,
};
use super::{STATUS_ACKNOWLEDGE, STATUS_DRIVER};
use crate::devices::pci::PciDevice;
use crate::devices::pci::config::{
    BarInfo, BarKind, COMMAND, COMMAND_INTX_DISABLE, ConfigSpace, LayoutError, PciIds, STATUS,
    STATUS_INTERRUPT,
};
use crate::devices::pci::msix::{self, Msix, MsixVector};
use crate::devices::vm_ops::VmOps;
use crate::devices::{DeviceStateError, Persist};
use crate::io_thread::{Interest, IoHandler};
use crate::memory::GuestMemoryMmap;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, PoisonError};
use vmm_sys_util::eventfd::EventFd;

/// Virtio's PCI vendor ID.
pub const VIRTIO_PCI_VENDOR: u16 = 0x1AF4;
/// Modern device IDs are this plus the virtio device type.
pub const VIRTIO_PCI_DEVICE_BASE: u16 = 0x1040;
/// The BAR holding the MSI-X table and pending bits.
pub const MSIX_BAR: usize = 1;
/// Its size.
pub const MSIX_BAR_SIZE: u64 = 0x1000;
/// Offset of the pending bit array in [`MSIX_BAR`].
pub const MSIX_PBA_OFFSET: u64 = 0x800;
/// The BAR holding the virtio structures.
pub const VIRTIO_BAR: usize = 4;
/// Its size.
pub const VIRTIO_BAR_SIZE: u64 = 0x4000;
/// Offset of the common configuration in [`VIRTIO_BAR`].
pub const COMMON_OFFSET: u64 = 0x0000;
/// Offset of the ISR byte.
pub const ISR_OFFSET: u64 = 0x1000;
/// Offset of the device configuration.
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
/// Offset of the notification area.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Size of each of the four regions.
pub const REGION_SIZE: u64 = 0x1000;
/// Bytes between two queues' notify addresses.
pub const NOTIFY_MULTIPLIER: u32 = 4;

/// Vendor-specific capability ID (virtio structures).
const CAP_ID_VENDOR: u8 = 0x09;
/// `cfg_type` values of `virtio_pci_cap`.
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const CAP_PCI_CFG: u8 = 5;
/// ISR bits.
const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;
/// Size of the common configuration structure (through `queue_reset`).
const COMMON_LEN: u64 = 0x3C;

/// The function's INTx line: an IOAPIC pin whose level the device sets through
/// [`VmOps::set_irq_line`] (a syscall per change; INTx is the fallback path, MSI-X the fast
/// one). Its number is in the interrupt line register, as firmware would leave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntxLine {
    /// The IOAPIC pin (GSI).
    pub gsi: u8,
}

/// Every device status bit the specification defines.
const STATUS_BITS: u8 = STATUS_ACKNOWLEDGE
    | STATUS_DRIVER
    | STATUS_DRIVER_OK
    | STATUS_FEATURES_OK
    | STATUS_NEEDS_RESET
    | STATUS_FAILED;

/// A virtio device on PCI.
pub struct VirtioPci<D: VirtioDevice> {
    config: ConfigSpace,
    msix_cap: usize,
    pci_cfg_cap: usize,
    msix: Msix,
    intx: Option<IntxLine>,
    device: D,
    mem: GuestMemoryMmap,
    vm: Arc<dyn VmOps>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    config_generation: u8,
    config_vector: u16,
    queue_select: u16,
    queues: Vec<QueueRegs>,
    isr: u8,
    /// The INTx level last set.
    intx_high: bool,
    /// One eventfd per queue, written by guest kicks.
    notify: Vec<EventFd>,
    /// Where the notify eventfds are registered as ioeventfds (BAR 4's base), if anywhere.
    notify_base: Option<u64>,
    /// DRIVER_OK accepted and not failed since.
    running: bool,
}

impl<D: VirtioDevice> std::fmt::Debug for VirtioPci<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPci")
            .field("device", &self.device.name())
            .field("status", &format_args!("{:#x}", self.status))
            .field("running", &self.running)
            .finish()
    }
}

/// Why a transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The configuration header could not be laid out (a bug).
    #[error("cannot lay out the PCI header")]
    Layout(#[from] LayoutError),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}

impl<D: VirtioDevice> VirtioPci<D> {
    /// Puts `device` behind a PCI function. `vectors` are its MSI-X lines (one per queue
    /// plus one for configuration changes is what drivers expect), `intx` its INTA line.
    pub fn new(
        device: D,
        mem: GuestMemoryMmap,
        vm: Arc<dyn VmOps>,
        vectors: Vec<MsixVector>,
        intx: Option<IntxLine>,
    ) -> Result<Self, TransportError> {
        let device_type = device.device_type();
        let mut config = ConfigSpace::new(PciIds {
            vendor: VIRTIO_PCI_VENDOR,
            device: VIRTIO_PCI_DEVICE_BASE + device_type,
            revision: 1,
            class: class_of(device_type),
            subsystem_vendor: VIRTIO_PCI_VENDOR,
            subsystem: device_type,
        });
        config.add_bar(
            MSIX_BAR,
            BarInfo {
                size: MSIX_BAR_SIZE,
                kind: BarKind::Memory32,
            },
        )?;
        config.add_bar(
            VIRTIO_BAR,
            BarInfo {
                size: VIRTIO_BAR_SIZE,
                kind: BarKind::Memory64 { prefetchable: true },
            },
        )?;
        if let Some(line) = &intx {
            config.set_interrupt(1, line.gsi);
        }
        let msix = Msix::new(vectors, vm.clone());
        let (body, wmask) = msix.capability(MSIX_BAR as u8, 0, MSIX_BAR as u8, 0x800);
        let msix_cap = config.add_capability(msix::CAP_ID_MSIX, &body, &wmask)?;
        for (kind, offset) in [
            (CAP_COMMON, COMMON_OFFSET),
            (CAP_ISR, ISR_OFFSET),
            (CAP_DEVICE, DEVICE_CFG_OFFSET),
        ] {
            let body = virtio_cap(16, kind, offset, REGION_SIZE);
            config.add_capability(CAP_ID_VENDOR, &body[..14], &[0; 14])?;
        }
        let mut notify_body = virtio_cap(20, CAP_NOTIFY, NOTIFY_OFFSET, REGION_SIZE);
        notify_body[14..18].copy_from_slice(&NOTIFY_MULTIPLIER.to_le_bytes());
        config.add_capability(CAP_ID_VENDOR, &notify_body, &[0; 18])?;
        // VIRTIO_PCI_CAP_PCI_CFG: bar, offset, length and the data window are writable.
        let cfg_body = virtio_cap(20, CAP_PCI_CFG, 0, 0);
        let mut cfg_mask = [0u8; 18];
        cfg_mask[2] = 0xFF;
        cfg_mask[6..18].fill(0xFF);
        let pci_cfg_cap = config.add_capability(CAP_ID_VENDOR, &cfg_body, &cfg_mask)?;

        let queues: Vec<QueueRegs> = device
            .queue_max_sizes()
            .iter()
            .map(|&max| QueueRegs::new(max))
            .collect();
        let notify = queues
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(TransportError::EventFd)?;
        Ok(VirtioPci {
            config,
            msix_cap,
            pci_cfg_cap,
            msix,
            intx,
            device,
            mem,
            vm,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            config_vector: NO_VECTOR,
            queue_select: 0,
            queues,
            isr: 0,
            intx_high: false,
            notify,
            notify_base: None,
            running: false,
        })
    }

    /// The device model.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device status register.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// The guest-physical address of queue `queue`'s notify register, while BAR 4 decodes.
    pub fn notify_address(&self, queue: usize) -> Option<u64> {
        Some(self.notify_base? + NOTIFY_OFFSET + u64::from(NOTIFY_MULTIPLIER) * queue as u64)
    }

    /// An I/O-thread handler for the device behind `this`.
    pub fn io_handler(this: &Arc<Mutex<Self>>) -> VirtioPciHandler<D> {
        let dev = lock(this);
        let mut interests = Vec::new();
        let mut sources = Vec::new();
        for (q, evt) in dev.notify.iter().enumerate() {
            interests.push(Interest::level(evt.as_raw_fd()));
            sources.push(Source::Queue(q));
        }
        for (i, fd) in dev.device.event_fds().into_iter().enumerate() {
            interests.push(Interest::edge(fd));
            sources.push(Source::Device(i));
        }
        drop(dev);
        VirtioPciHandler {
            dev: this.clone(),
            interests,
            sources,
        }
    }

    /// The device, for host-side steps of a migration.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Kicks every queue as the driver would (through their eventfds, so the I/O thread
    /// serves them): after a rolled-back move, frames the device held go to the guest.
    pub fn kick_queues(&self) {
        if self.running {
            for evt in &self.notify {
                let _ = evt.write(1);
            }
        }
    }

    /// Queue `queue` was kicked (its eventfd already read).
    pub fn queue_notified(&mut self, queue: usize) {
        if !self.running {
            return;
        }
        let result = self.device.queue_notified(queue);
        self.after(result);
    }

    /// Device fd `index` became ready.
    pub fn device_event(&mut self, index: usize) {
        let result = self.device.device_event(index);
        if self.running {
            self.after(result);
        }
    }

    fn after(&mut self, result: Result<QueueSet, GuestError>) {
        match result {
            Ok(set) => {
                for q in 0..self.queues.len() {
                    if set.contains(q) {
                        self.signal_queue(q);
                    }
                }
            }
            Err(e) => self.fail(e),
        }
    }

    fn signal_queue(&mut self, queue: usize) {
        self.isr |= ISR_QUEUE;
        if self.msix.enabled() {
            self.msix.notify(self.queues[queue].msix_vector);
        } else {
            self.update_intx();
        }
    }

    fn signal_config(&mut self) {
        self.isr |= ISR_CONFIG;
        if self.msix.enabled() {
            self.msix.notify(self.config_vector);
        } else {
            self.update_intx();
        }
    }

    /// Sets the INTx line (and the status register's interrupt bit) from the ISR, MSI-X and
    /// the command register's INTx disable.
    fn update_intx(&mut self) {
        self.config.set_interrupt_status(self.isr != 0);
        let high = self.isr != 0
            && !self.msix.enabled()
            && self.config.command() & COMMAND_INTX_DISABLE == 0;
        if high == self.intx_high {
            return;
        }
        let Some(line) = self.intx else {
            return;
        };
        match self.vm.set_irq_line(u32::from(line.gsi), high) {
            Ok(()) => self.intx_high = high,
            Err(e) => log::warn!("{}: cannot set INTx: {e}", self.device.name()),
        }
    }

    /// The guest broke the rules: one warning, DEVICE_NEEDS_RESET, and the device stops.
    fn fail(&mut self, error: GuestError) {
        log::warn!("{}: {error}; the device needs a reset", self.device.name());
        self.device.reset();
        self.running = false;
        self.sync_notify();
        self.status |= STATUS_NEEDS_RESET;
        if self.status & STATUS_DRIVER_OK != 0 {
            self.signal_config();
        }
    }

    /// Device reset (status written 0): everything but the PCI state goes back to its
    /// initial value.
    fn reset(&mut self) {
        self.device.reset();
        self.running = false;
        self.sync_notify();
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.config_vector = NO_VECTOR;
        self.queue_select = 0;
        for q in &mut self.queues {
            *q = QueueRegs::new(q.max_size);
        }
        for evt in &self.notify {
            let _ = evt.read();
        }
        self.isr = 0;
        self.update_intx();
    }

    fn set_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        // Undefined bits are dropped, not kept: a saved status holds only defined bits (the
        // destination refuses others), so a guest that wrote some can still move. A driver
        // never clears a bit but by reset (virtio 1.2, 2.1.2): one that tries keeps the bits
        // it had, so a running device never shows DRIVER_OK without FEATURES_OK.
        let mut value = (value | self.status) & STATUS_BITS & !STATUS_NEEDS_RESET;
        let newly = value & !self.status;
        if newly & STATUS_FEATURES_OK != 0 && !self.features_acceptable() {
            // Left clear: the driver reads the status back and gives up (3.1.1).
            log::debug!(
                "{}: refusing features {:#x}",
                self.device.name(),
                self.driver_features
            );
            value &= !STATUS_FEATURES_OK;
        }
        self.status = value | (self.status & STATUS_NEEDS_RESET);
        if newly & STATUS_FAILED != 0 {
            self.device.reset();
            self.running = false;
            self.sync_notify();
        }
        if newly & STATUS_DRIVER_OK != 0 && self.status & (STATUS_NEEDS_RESET | STATUS_FAILED) == 0
        {
            match self.activate() {
                Ok(()) => {
                    self.running = true;
                    self.sync_notify();
                    // Look at the queues and the backend once: work may be waiting already.
                    for evt in &self.notify {
                        let _ = evt.write(1);
                    }
                }
                Err(e) => self.fail(e),
            }
        }
    }

    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.device.features() == 0
            && self.driver_features & VIRTIO_F_VERSION_1 != 0
    }

    fn activate(&mut self) -> Result<(), GuestError> {
        if self.status & STATUS_FEATURES_OK == 0 {
            return Err(GuestError::DriverOkTooEarly);
        }
        let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, regs) in self.queues.iter().enumerate() {
            queues.push(match regs.enabled {
                true => Some(regs.build(i, &self.mem, event_idx)?),
                false => None,
            });
        }
        self.device
            .activate(self.mem.clone(), self.driver_features, queues)
    }

    /// Registers, moves or removes the notify ioeventfds to follow BAR 4 while the device
    /// runs (none otherwise: see the module's notes).
    fn sync_notify(&mut self) {
        let want = self
            .config
            .decoded_bars()
            .find(|&(bar, ..)| bar == VIRTIO_BAR)
            .map(|(_, base, _)| base)
            .filter(|&base| {
                // The guest writes the BAR: its end may lie past the address space.
                self.running
                    && base >= crate::devices::pci::MMIO_WINDOW.start
                    && base
                        .checked_add(VIRTIO_BAR_SIZE)
                        .is_some_and(|end| end <= crate::devices::pci::MMIO_WINDOW.end)
            });
        if want == self.notify_base {
            return;
        }
        if self.notify_base.is_some() {
            for q in 0..self.notify.len() {
                let addr = self.notify_address(q).unwrap_or_default();
                if let Err(e) = self.vm.unregister_ioevent(&self.notify[q], addr) {
                    log::warn!(
                        "{}: cannot remove ioeventfd at {addr:#x}: {e}",
                        self.device.name()
                    );
                }
            }
        }
        self.notify_base = want;
        if self.notify_base.is_some() {
            for q in 0..self.notify.len() {
                let addr = self.notify_address(q).unwrap_or_default();
                if let Err(e) = self.vm.register_ioevent(&self.notify[q], addr) {
                    // Kicks still work, through an MMIO exit.
                    log::warn!(
                        "{}: cannot add ioeventfd at {addr:#x}: {e}",
                        self.device.name()
                    );
                }
            }
        }
    }

    fn selected_queue(&mut self) -> Option<&mut QueueRegs> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    /// A vector register value: kept if the table has it, else NO_VECTOR (4.1.5.1.2).
    fn checked_vector(&self, vector: u16) -> u16 {
        if usize::from(vector) < self.msix.len() {
            vector
        } else {
            NO_VECTOR
        }
    }

    fn read_common_field(&self, start: u64) -> u64 {
        let queue = self.queues.get(usize::from(self.queue_select));
        let q = |f: fn(&QueueRegs) -> u64| queue.map(f).unwrap_or(0);
        match start {
            0x00 => u64::from(self.device_feature_select),
            0x04 => match self.device_feature_select {
                0 => self.device.features() & 0xFFFF_FFFF,
                1 => self.device.features() >> 32,
                _ => 0,
            },
            0x08 => u64::from(self.driver_feature_select),
            0x0C => match self.driver_feature_select {
                0 => self.driver_features & 0xFFFF_FFFF,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            0x10 => u64::from(self.config_vector),
            0x12 => self.queues.len() as u64,
            0x14 => u64::from(self.status),
            0x15 => u64::from(self.config_generation),
            0x16 => u64::from(self.queue_select),
            0x18 => q(|r| u64::from(r.size)),
            0x1A => queue.map_or(u64::from(NO_VECTOR), |r| u64::from(r.msix_vector)),
            0x1C => q(|r| u64::from(r.enabled)),
            0x1E => queue.map_or(0, |_| u64::from(self.queue_select)),
            0x20 => q(|r| r.desc),
            0x28 => q(|r| r.driver),
            0x30 => q(|r| r.device),
            _ => 0,
        }
    }

    fn write_common_field(&mut self, start: u64, value: u64) {
        let locked = self.status & STATUS_DRIVER_OK != 0;
        match start {
            0x00 => self.device_feature_select = value as u32,
            0x08 => self.driver_feature_select = value as u32,
            0x0C if self.status & STATUS_FEATURES_OK == 0 => match self.driver_feature_select {
                0 => self.driver_features = (self.driver_features & !0xFFFF_FFFF) | value,
                1 => self.driver_features = (self.driver_features & 0xFFFF_FFFF) | value << 32,
                _ => {}
            },
            0x10 => self.config_vector = self.checked_vector(value as u16),
            0x14 => self.set_status(value as u8),
            0x16 => self.queue_select = value as u16,
            0x1A => {
                let vector = self.checked_vector(value as u16);
                if let Some(q) = self.selected_queue() {
                    q.msix_vector = vector;
                }
            }
            // Queue layout is fixed once the queue is enabled or the device runs.
            0x18 | 0x1C | 0x20 | 0x28 | 0x30 => {
                let Some(q) = self.selected_queue() else {
                    return;
                };
                if q.enabled || locked {
                    return;
                }
                match start {
                    0x18 => q.size = value as u16,
                    // Only 1 may be written (4.1.4.3.2).
                    0x1C => q.enabled = value == 1,
                    0x20 => q.desc = value,
                    0x28 => q.driver = value,
                    _ => q.device = value,
                }
            }
            _ => {}
        }
    }

    fn read_common(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            *byte = match common_field(at) {
                Some((start, _)) => (self.read_common_field(start) >> (8 * (at - start))) as u8,
                None => 0,
            };
        }
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let mut at = offset;
        let end = offset + data.len() as u64;
        while at < end {
            let Some((start, len)) = common_field(at) else {
                at += 1;
                continue;
            };
            let mut value = self.read_common_field(start).to_le_bytes();
            let field_end = (start + len).min(end);
            for a in at..field_end {
                value[(a - start) as usize] = data[(a - offset) as usize];
            }
            self.write_common_field(start, u64::from_le_bytes(value));
            at = field_end;
        }
    }

    fn read_virtio_bar(&mut self, offset: u64, data: &mut [u8]) {
        let region = offset & !(REGION_SIZE - 1);
        let within = offset - region;
        match region {
            COMMON_OFFSET => self.read_common(within, data),
            ISR_OFFSET => {
                data.fill(0);
                if within == 0 {
                    // Reading the ISR acknowledges it and lowers INTx (4.1.4.5).
                    data[0] = std::mem::take(&mut self.isr);
                    self.update_intx();
                }
            }
            DEVICE_CFG_OFFSET => self.device.read_config(within, data),
            _ => data.fill(0),
        }
    }

    fn write_virtio_bar(&mut self, offset: u64, data: &[u8]) {
        let region = offset & !(REGION_SIZE - 1);
        let within = offset - region;
        match region {
            COMMON_OFFSET => self.write_common(within, data),
            DEVICE_CFG_OFFSET => self.device.write_config(within, data),
            NOTIFY_OFFSET => {
                let queue = (within / u64::from(NOTIFY_MULTIPLIER)) as usize;
                if let Some(evt) = self.notify.get(queue) {
                    let _ = evt.write(1);
                }
            }
            _ => {}
        }
    }

    /// The BAR, offset and length a VIRTIO_PCI_CAP_PCI_CFG access currently points at.
    fn pci_cfg_target(&self) -> Option<(usize, u64, usize)> {
        let c = self.pci_cfg_cap;
        let bar = usize::from(self.config.read_u8(c + 4));
        let offset = u64::from(self.config.read_u32(c + 8));
        let len = self.config.read_u32(c + 12) as usize;
        let size = self.config.bar(bar)?.size;
        (matches!(len, 1 | 2 | 4)
            && offset.is_multiple_of(len as u64)
            && offset + len as u64 <= size)
            .then_some((bar, offset, len))
    }
}

impl<D: VirtioDevice> Persist for VirtioPci<D> {
    type State = VirtioPciState;

    /// The function's state for migration (call with the I/O thread paused and the vCPUs
    /// stopped, so no batch is half done).
    fn save(&self) -> VirtioPciState {
        let positions = self.device.queue_states();
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let p = positions.get(i).filter(|_| self.running);
                VirtqueueState {
                    size: r.size,
                    msix_vector: r.msix_vector,
                    enabled: r.enabled,
                    desc: r.desc,
                    driver: r.driver,
                    device: r.device,
                    next_avail: p.map_or(0, |p| p.next_avail),
                    next_used: p.map_or(0, |p| p.next_used),
                }
            })
            .collect();
        VirtioPciState {
            config: self.config.save_state(),
            msix: self.msix.save_state(),
            device_feature_select: self.device_feature_select,
            driver_feature_select: self.driver_feature_select,
            driver_features: self.driver_features,
            status: self.status,
            config_generation: self.config_generation,
            config_vector: self.config_vector,
            queue_select: self.queue_select,
            isr: self.isr,
            queues,
            device: self.device.save_device_state(),
        }
    }

    /// Applies a saved state to this freshly built function of the same kind: everything is
    /// checked first (header against this device, MSI-X table size, status and features,
    /// vector numbers, and for a running device every queue as at DRIVER_OK plus its ring
    /// positions); an invalid state changes nothing. Then the routes, ioeventfds and INTx
    /// level follow the restored registers, and a running device looks at its queues once.
    fn restore(&mut self, state: VirtioPciState) -> Result<(), DeviceStateError> {
        let name = self.device.name();
        let config = self.config.check_state(&state.config, name)?;
        let status_interrupt = config.read_u16(STATUS) & STATUS_INTERRUPT != 0;
        self.msix.check_state(&state.msix, name)?;
        let control = config.read_u16(self.msix_cap + 2)
            & (msix::CONTROL_ENABLE | msix::CONTROL_FUNCTION_MASK);
        let wanted = state.msix.control_bits();
        if control != wanted {
            return Err(DeviceStateError::invalid(
                name,
                "MSI-X control",
                "the header and the table disagree on enable or mask",
            ));
        }
        let status = state.status;
        if status & !STATUS_BITS != 0 {
            return Err(DeviceStateError::invalid(
                name,
                "device status",
                format!("{status:#04x} has undefined bits"),
            ));
        }
        if status & STATUS_FEATURES_OK != 0
            && (state.driver_features & !self.device.features() != 0
                || state.driver_features & VIRTIO_F_VERSION_1 == 0)
        {
            return Err(DeviceStateError::invalid(
                name,
                "driver features",
                format!(
                    "{:#x} accepted, the device offers {:#x}",
                    state.driver_features,
                    self.device.features()
                ),
            ));
        }
        let failed = status & (STATUS_NEEDS_RESET | STATUS_FAILED) != 0;
        if status & STATUS_DRIVER_OK != 0 && status & STATUS_FEATURES_OK == 0 && !failed {
            return Err(DeviceStateError::invalid(
                name,
                "device status",
                "DRIVER_OK without FEATURES_OK",
            ));
        }
        let running = status & STATUS_DRIVER_OK != 0 && !failed;
        if state.isr & !(ISR_QUEUE | ISR_CONFIG) != 0 {
            return Err(DeviceStateError::invalid(
                name,
                "ISR",
                format!("{:#04x}", state.isr),
            ));
        }
        let table = self.msix.len();
        let vector_ok = |v: u16| v == NO_VECTOR || usize::from(v) < table;
        if !vector_ok(state.config_vector) {
            return Err(DeviceStateError::invalid(
                name,
                "config MSI-X vector",
                format!("{} with {table} vectors", state.config_vector),
            ));
        }
        if state.queues.len() != self.queues.len() {
            return Err(DeviceStateError::mismatch(
                name,
                "queues",
                format!(
                    "{} saved, this device has {}",
                    state.queues.len(),
                    self.queues.len()
                ),
            ));
        }
        let event_idx = state.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut regs = Vec::with_capacity(self.queues.len());
        let mut built = Vec::with_capacity(self.queues.len());
        for (i, (q, mine)) in state.queues.iter().zip(&self.queues).enumerate() {
            let field = |f: &str| format!("queue {i} {f}");
            if !vector_ok(q.msix_vector) {
                return Err(DeviceStateError::invalid(
                    name,
                    field("MSI-X vector"),
                    format!("{} with {table} vectors", q.msix_vector),
                ));
            }
            let r = QueueRegs {
                max_size: mine.max_size,
                size: q.size,
                msix_vector: q.msix_vector,
                enabled: q.enabled,
                desc: q.desc,
                driver: q.driver,
                device: q.device,
            };
            regs.push(r);
            if !(running && q.enabled) {
                built.push(None);
                continue;
            }
            let mut queue = r
                .build(i, &self.mem, event_idx)
                .map_err(|e| DeviceStateError::invalid(name, field("rings"), e.to_string()))?;
            let in_flight = q.next_avail.wrapping_sub(q.next_used);
            if in_flight > q.size {
                return Err(DeviceStateError::invalid(
                    name,
                    field("ring positions"),
                    format!(
                        "next_avail {} is more than the queue size {} ahead of next_used {}",
                        q.next_avail, q.size, q.next_used
                    ),
                ));
            }
            virtio_queue::QueueT::set_next_avail(&mut queue, q.next_avail);
            virtio_queue::QueueT::set_next_used(&mut queue, q.next_used);
            built.push(Some(queue));
        }
        self.device.check_device_state(&state.device)?;

        // Everything checked: from a clean reset, the device first (its activate may still
        // refuse the queue set, e.g. a queue it needs disabled: it stays reset then).
        self.reset();
        if running {
            self.device
                .activate(self.mem.clone(), state.driver_features, built)
                .map_err(|e| {
                    self.device.reset();
                    DeviceStateError::invalid(name, "queues", e.to_string())
                })?;
        }
        self.device.apply_device_state(state.device);
        self.config = config;
        self.msix.restore_state(&state.msix);
        self.device_feature_select = state.device_feature_select;
        self.driver_feature_select = state.driver_feature_select;
        self.driver_features = state.driver_features;
        self.status = status;
        self.config_generation = state.config_generation;
        self.config_vector = state.config_vector;
        self.queue_select = state.queue_select;
        self.queues = regs;
        self.isr = state.isr;
        self.running = running;
        self.sync_notify();
        self.update_intx();
        // The status bit as the guest last saw it (with MSI-X on it is not kept current).
        self.config.set_interrupt_status(status_interrupt);
        if running {
            // As at DRIVER_OK: buffers made available during the move are picked up.
            for evt in &self.notify {
                let _ = evt.write(1);
            }
        }
        Ok(())
    }
}

impl<D: VirtioDevice> PciDevice for VirtioPci<D> {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn read_config(&mut self, offset: usize) -> u32 {
        if offset & !3 == self.pci_cfg_cap + 16 {
            let mut data = [0u8; 4];
            if let Some((bar, at, len)) = self.pci_cfg_target() {
                self.read_bar(bar, at, &mut data[..len]);
            }
            return u32::from_le_bytes(data);
        }
        self.config.read_u32(offset)
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        let end = offset + data.len();
        self.config.write(offset, data);
        let data_field = self.pci_cfg_cap + 16;
        if offset >= data_field
            && end <= data_field + 4
            && let Some((bar, at, len)) = self.pci_cfg_target()
        {
            let window = self.config.read_u32(data_field).to_le_bytes();
            self.write_bar(bar, at, &window[..len]);
        }
        let control = self.msix_cap + 2;
        if offset < control + 2 && end > control {
            let value = self.config.read_u16(control);
            self.msix.set_control(value);
            self.update_intx();
        }
        if offset < COMMAND + 2 && end > COMMAND || (0x10..0x28).contains(&offset) {
            self.sync_notify();
            self.update_intx();
        }
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        match bar {
            MSIX_BAR if offset < MSIX_PBA_OFFSET => self.msix.read_table(offset, data),
            MSIX_BAR => self.msix.read_pba(offset - MSIX_PBA_OFFSET, data),
            VIRTIO_BAR => self.read_virtio_bar(offset, data),
            _ => data.fill(0xFF),
        }
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match bar {
            MSIX_BAR if offset < MSIX_PBA_OFFSET => self.msix.write_table(offset, data),
            VIRTIO_BAR => self.write_virtio_bar(offset, data),
            _ => {}
        }
    }
}

/// The common configuration field holding byte `offset`: its start and size.
fn common_field(offset: u64) -> Option<(u64, u64)> {
    const FIELDS: [(u64, u64); 18] = [
        (0x00, 4), // device_feature_select
        (0x04, 4), // device_feature
        (0x08, 4), // driver_feature_select
        (0x0C, 4), // driver_feature
        (0x10, 2), // config_msix_vector
        (0x12, 2), // num_queues
        (0x14, 1), // device_status
        (0x15, 1), // config_generation
        (0x16, 2), // queue_select
        (0x18, 2), // queue_size
        (0x1A, 2), // queue_msix_vector
        (0x1C, 2), // queue_enable
        (0x1E, 2), // queue_notify_off
        (0x20, 8), // queue_desc
        (0x28, 8), // queue_driver
        (0x30, 8), // queue_device
        (0x38, 2), // queue_notif_config_data (NOTIF_CONFIG_DATA not offered: 0)
        (0x3A, 2), // queue_reset (RING_RESET not offered: 0)
    ];
    if offset >= COMMON_LEN {
        return None;
    }
    FIELDS
        .iter()
        .copied()
        .find(|&(start, len)| start <= offset && offset < start + len)
}

/// A `virtio_pci_cap` body after its ID and next bytes (18 bytes; the short capabilities use
/// the first 14).
fn virtio_cap(cap_len: u8, cfg_type: u8, offset: u64, length: u64) -> [u8; 18] {
    let mut b = [0u8; 18];
    b[0] = cap_len;
    b[1] = cfg_type;
    b[2] = if cfg_type == CAP_PCI_CFG {
        0
    } else {
        VIRTIO_BAR as u8
    };
    b[6..10].copy_from_slice(&(offset as u32).to_le_bytes());
    b[10..14].copy_from_slice(&(length as u32).to_le_bytes());
    b
}

/// PCI class code for a virtio device type.
fn class_of(device_type: u16) -> u32 {
    match device_type {
        1 => 0x02_00_00, // network controller, Ethernet
        _ => 0xFF_00_00, // unassigned class
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Clone, Copy, Debug)]
enum Source {
    Queue(usize),
    Device(usize),
}

/// Runs a virtio PCI device's queue and backend work on the I/O thread.
pub struct VirtioPciHandler<D: VirtioDevice> {
    dev: Arc<Mutex<VirtioPci<D>>>,
    interests: Vec<Interest>,
    sources: Vec<Source>,
}

impl<D: VirtioDevice> IoHandler for VirtioPciHandler<D> {
    fn interests(&self) -> Vec<Interest> {
        self.interests.clone()
    }

    fn handle(&mut self, index: usize) {
        let Some(&source) = self.sources.get(index) else {
            return;
        };
        let mut dev = lock(&self.dev);
        match source {
            Source::Queue(q) => {
                // Reset the counter first: a kick after this point wakes us again.
                let _ = dev.notify[q].read();
                dev.queue_notified(q);
            }
            Source::Device(i) => dev.device_event(i),
        }
    }
}
