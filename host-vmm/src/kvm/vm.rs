//! The VM: created, given its RAM, then its in-kernel irqchip, in the order KVM-NOTES
//! (gotcha 3) measured to be fast: `KVM_SET_USER_MEMORY_REGION` after `KVM_CREATE_IRQCHIP`
//! stalls for milliseconds.

use super::routing::KvmVmOps;
use super::vcpu::Vcpu;
use super::{Kvm, KvmError};
use crate::memory::GuestMemoryMmap;
use crate::memory::GuestRam;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use std::sync::Arc;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;

/// Placement of the pages KVM needs for itself on Intel hosts, outside guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvmPages {
    /// `KVM_SET_TSS_ADDR` (three pages).
    pub tss: u64,
    /// `KVM_SET_IDENTITY_MAP_ADDR` (one page).
    pub identity_map: u64,
}

/// A VM with its RAM registered and its in-kernel irqchip (PIC, IOAPIC, LAPIC) created.
#[derive(Debug)]
pub struct Vm {
    // Declared first so it is closed before the mapping below goes away. Shared with
    // [`KvmVmOps`] handles, which keep their own reference to the mapping for the same reason.
    fd: Arc<VmFd>,
    /// The one GSI routing table and the other device services (no syscalls until used).
    ops: Arc<KvmVmOps>,
    /// Keeps guest RAM mapped for as long as KVM may access it.
    _mem: GuestMemoryMmap,
}

impl Vm {
    /// Creates the VM, registers every region of `ram`, then sets the TSS and identity-map
    /// pages and creates the in-kernel irqchip (no PIT: nothing uses it).
    pub fn new(kvm: &Kvm, ram: &GuestRam, pages: KvmPages) -> Result<Self, KvmError> {
        let fd = kvm
            .raw()
            .create_vm()
            .map_err(KvmError::ioctl("KVM_CREATE_VM"))?;
        let mem = ram.memory().clone();
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| KvmError::Ioctl("KVM_SET_USER_MEMORY_REGION", einval()))?;
            let region = kvm_userspace_memory_region {
                slot: u32::try_from(slot)
                    .map_err(|_| KvmError::Ioctl("KVM_SET_USER_MEMORY_REGION", einval()))?,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: `userspace_addr..+memory_size` is one live read/write mapping owned by
            // `mem`'s region; `Vm` keeps `mem` (and so the mapping) alive until after the VM
            // fd is closed, so KVM never sees the range unmapped while the VM exists.
            unsafe { fd.set_user_memory_region(region) }
                .map_err(KvmError::ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        }
        let tss = usize::try_from(pages.tss)
            .map_err(|_| KvmError::Ioctl("KVM_SET_TSS_ADDR", einval()))?;
        fd.set_tss_address(tss)
            .map_err(KvmError::ioctl("KVM_SET_TSS_ADDR"))?;
        fd.set_identity_map_address(pages.identity_map)
            .map_err(KvmError::ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
        fd.create_irq_chip()
            .map_err(KvmError::ioctl("KVM_CREATE_IRQCHIP"))?;
        let fd = Arc::new(fd);
        Ok(Vm {
            ops: Arc::new(KvmVmOps::new(fd.clone(), mem.clone())),
            fd,
            _mem: mem,
        })
    }

    /// The handle devices use to route MSIs, set INTx levels and register ioeventfds
    /// ([`crate::devices::VmOps`]); every call returns the same one, since it owns the VM's
    /// GSI routing table.
    pub fn device_ops(&self) -> Arc<KvmVmOps> {
        self.ops.clone()
    }

    /// Makes a write to `event` raise interrupt line `gsi` (an irqfd).
    pub fn register_irqfd(&self, event: &EventFd, gsi: u32) -> Result<(), KvmError> {
        self.fd
            .register_irqfd(event, gsi)
            .map_err(KvmError::ioctl("KVM_IRQFD"))
    }

    /// Creates vCPU `id`.
    pub fn create_vcpu(&self, id: u64) -> Result<Vcpu, KvmError> {
        let fd = self
            .fd
            .create_vcpu(id)
            .map_err(KvmError::ioctl("KVM_CREATE_VCPU"))?;
        Ok(Vcpu::new(fd))
    }
}

fn einval() -> kvm_ioctls::Error {
    kvm_ioctls::Error::new(libc::EINVAL)
}
