//! Interrupt routing, INTx levels and ioeventfds for devices: [`KvmVmOps`] implements
//! [`crate::devices::VmOps`] over the VM fd.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole table (docs/kvm.md §8.3), so this module owns
//! the table: KVM's default routes for the irqchip (GSI 0–15 to both PICs and the IOAPIC,
//! 16–23 to the IOAPIC only, which the serial port's GSI 4 and PCI INTx pins rely on) plus
//! one MSI route per GSI a device asked for. Every change rewrites the lot. Nothing calls
//! this until a device exists, so a VM without devices keeps KVM's built-in table.

use super::KvmError;
use crate::devices::vm_ops::{MsiMessage, VmOps};
use crate::memory::GuestMemoryMmap;
use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KvmIrqRouting, kvm_irq_routing_entry,
    kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip, kvm_irq_routing_msi,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use vmm_sys_util::eventfd::EventFd;

/// IOAPIC pins (GSIs 0..24) routed by default.
pub const IOAPIC_PINS: u32 = 24;
/// First GSI free for MSI routes.
pub const FIRST_MSI_GSI: u32 = IOAPIC_PINS;

/// Device services over a VM fd.
#[derive(Debug)]
pub struct KvmVmOps {
    // Declared first: closed before the mapping below may go away.
    fd: Arc<VmFd>,
    /// Keeps guest RAM mapped while this handle can still reach the VM.
    _mem: GuestMemoryMmap,
    /// MSI routes by GSI.
    msi: Mutex<BTreeMap<u32, MsiMessage>>,
    /// `KVM_IOEVENTFD` calls made (adds and removes, failed ones too), for `vm.counters`:
    /// one may wait for an SRCU grace period in KVM, so churn shows up as boot time.
    ioeventfd_calls: AtomicU64,
}

impl KvmVmOps {
    pub(super) fn new(fd: Arc<VmFd>, mem: GuestMemoryMmap) -> Self {
        KvmVmOps {
            fd,
            _mem: mem,
            msi: Mutex::new(BTreeMap::new()),
            ioeventfd_calls: AtomicU64::new(0),
        }
    }

    /// `KVM_IOEVENTFD` calls made so far (registrations and removals).
    pub fn ioeventfd_calls(&self) -> u64 {
        self.ioeventfd_calls.load(Ordering::Relaxed)
    }
}

/// The full routing table: the irqchip defaults, then `msi`.
pub fn routing_table(msi: &BTreeMap<u32, MsiMessage>) -> Vec<kvm_irq_routing_entry> {
    let irqchip = |gsi: u32, chip: u32, pin: u32| kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            irqchip: kvm_irq_routing_irqchip { irqchip: chip, pin },
        },
        ..Default::default()
    };
    let mut table = Vec::with_capacity(40 + msi.len());
    for gsi in 0..IOAPIC_PINS {
        table.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        if gsi < 16 {
            let pic = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            table.push(irqchip(gsi, pic, gsi % 8));
        }
    }
    for (&gsi, m) in msi {
        table.push(kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            u: kvm_irq_routing_entry__bindgen_ty_1 {
                msi: kvm_irq_routing_msi {
                    address_lo: m.address as u32,
                    address_hi: (m.address >> 32) as u32,
                    data: m.data,
                    ..Default::default()
                },
            },
            ..Default::default()
        });
    }
    table
}

fn to_io(e: KvmError) -> io::Error {
    match e {
        KvmError::Ioctl(_, e) => io::Error::from_raw_os_error(e.errno()),
        other => io::Error::other(other.to_string()),
    }
}

impl VmOps for KvmVmOps {
    fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> io::Result<()> {
        if gsi < FIRST_MSI_GSI {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut msi = self.msi.lock().unwrap_or_else(PoisonError::into_inner);
        let before = msi.clone();
        match msg {
            Some(m) => msi.insert(gsi, m),
            None => msi.remove(&gsi),
        };
        let table = KvmIrqRouting::from_entries(&routing_table(&msi)).map_err(|_| {
            *msi = before.clone();
            io::Error::from_raw_os_error(libc::E2BIG)
        })?;
        if let Err(e) = self.fd.set_gsi_routing(&table) {
            *msi = before;
            return Err(to_io(KvmError::Ioctl("KVM_SET_GSI_ROUTING", e)));
        }
        Ok(())
    }

    fn register_ioevent(&self, event: &EventFd, addr: u64) -> io::Result<()> {
        self.ioeventfd_calls.fetch_add(1, Ordering::Relaxed);
        self.fd
            .register_ioevent(event, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| to_io(KvmError::Ioctl("KVM_IOEVENTFD", e)))
    }

    fn unregister_ioevent(&self, event: &EventFd, addr: u64) -> io::Result<()> {
        self.ioeventfd_calls.fetch_add(1, Ordering::Relaxed);
        self.fd
            .unregister_ioevent(event, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| to_io(KvmError::Ioctl("KVM_IOEVENTFD", e)))
    }

    fn set_irq_line(&self, gsi: u32, high: bool) -> io::Result<()> {
        if gsi >= IOAPIC_PINS {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.fd
            .set_irq_line(gsi, high)
            .map_err(|e| to_io(KvmError::Ioctl("KVM_IRQ_LINE", e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_keeps_the_irqchip_defaults() {
        let mut msi = BTreeMap::new();
        msi.insert(
            24,
            MsiMessage {
                address: 0xFEE0_0000,
                data: 0x41,
            },
        );
        let table = routing_table(&msi);
        assert_eq!(table.len(), 24 + 16 + 1);
        let chips: Vec<(u32, u32, u32)> = table
            .iter()
            .filter(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP)
            // SAFETY: irqchip entries were built with the `irqchip` member.
            .map(|e| unsafe { (e.gsi, e.u.irqchip.irqchip, e.u.irqchip.pin) })
            .collect();
        assert!(chips.contains(&(4, KVM_IRQCHIP_IOAPIC, 4)), "COM1");
        assert!(chips.contains(&(4, KVM_IRQCHIP_PIC_MASTER, 4)));
        assert!(chips.contains(&(10, KVM_IRQCHIP_PIC_SLAVE, 2)));
        assert!(chips.contains(&(23, KVM_IRQCHIP_IOAPIC, 23)));
        assert!(
            !chips
                .iter()
                .any(|&(gsi, chip, _)| gsi >= 16 && chip != KVM_IRQCHIP_IOAPIC)
        );
        let last = table.last().unwrap();
        assert_eq!((last.gsi, last.type_), (24, KVM_IRQ_ROUTING_MSI));
        // SAFETY: the MSI entry was built with the `msi` member.
        let m = unsafe { last.u.msi };
        assert_eq!((m.address_lo, m.address_hi, m.data), (0xFEE0_0000, 0, 0x41));
    }
}
