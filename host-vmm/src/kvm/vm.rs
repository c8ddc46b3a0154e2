//! The VM: created, given its RAM, then its in-kernel irqchip, in the order measured to be
//! fast (docs/kvm.md §8.3): `KVM_SET_USER_MEMORY_REGION` after `KVM_CREATE_IRQCHIP` stalls
//! for milliseconds.

use super::routing::KvmVmOps;
use super::vcpu::{Vcpu, VcpuCaps};
use super::{Kvm, KvmError};
use crate::memory::GuestMemoryMmap;
use crate::memory::GuestRam;
use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, kvm_userspace_memory_region};
use kvm_ioctls::{Cap, VmFd};
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
    pub(super) fd: Arc<VmFd>,
    /// The memory slots as registered (re-registered to switch dirty logging).
    slots: Vec<kvm_userspace_memory_region>,
    /// The MSRs vCPU state carries, and the feature MSRs (see `state`), asked once.
    msr_index: Arc<[u32]>,
    feature_msrs: Arc<[u32]>,
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
        let mut slots = Vec::new();
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
            slots.push(region);
        }
        let tss = usize::try_from(pages.tss)
            .map_err(|_| KvmError::Ioctl("KVM_SET_TSS_ADDR", einval()))?;
        fd.set_tss_address(tss)
            .map_err(KvmError::ioctl("KVM_SET_TSS_ADDR"))?;
        fd.set_identity_map_address(pages.identity_map)
            .map_err(KvmError::ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
        fd.create_irq_chip()
            .map_err(KvmError::ioctl("KVM_CREATE_IRQCHIP"))?;
        let (msr_index, feature_msrs) = super::snapshot::msr_index(kvm)?;
        let fd = Arc::new(fd);
        Ok(Vm {
            slots,
            msr_index,
            feature_msrs,
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
        let xsave_size = match self.fd.check_extension(Cap::Xsave) {
            false => 0,
            // KVM_CAP_XSAVE2 answers the buffer size (at least the 4 KiB of `kvm_xsave`).
            true => usize::try_from(self.fd.check_extension_int(Cap::Xsave2))
                .unwrap_or(0)
                .max(std::mem::size_of::<kvm_bindings::kvm_xsave>()),
        };
        let caps = VcpuCaps {
            xsave_size,
            xcrs: self.fd.check_extension(Cap::Xcrs),
            msr_index: self.msr_index.clone(),
            feature_msrs: self.feature_msrs.clone(),
        };
        Ok(Vcpu::new(fd, caps))
    }

    /// Turns KVM's dirty-page logging of every memory slot on or off, by registering the
    /// slots again with or without `KVM_MEM_LOG_DIRTY_PAGES`. Turning it on starts with a
    /// clean log: only writes from then on are reported.
    pub fn set_dirty_logging(&self, on: bool) -> Result<(), KvmError> {
        for slot in &self.slots {
            let region = kvm_userspace_memory_region {
                flags: if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
                ..*slot
            };
            // SAFETY: the same range `new` registered, still mapped by `self._mem` (kept
            // until after the VM fd is closed); only the flags change.
            unsafe { self.fd.set_user_memory_region(region) }
                .map_err(KvmError::ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(())
    }

    /// Takes KVM's log of pages the vCPUs wrote since the last take (or since logging was
    /// turned on) and clears it: one bit per 4 KiB page from guest address 0, in `u64`
    /// words, as [`GuestRam::take_host_dirty`]. Fails if logging is off.
    pub fn take_dirty_log(&self) -> Result<Vec<u64>, KvmError> {
        let page = crate::memory::PAGE_SIZE;
        let end = self
            .slots
            .iter()
            .map(|s| s.guest_phys_addr + s.memory_size)
            .max()
            .unwrap_or(0);
        let pages = end.div_ceil(page);
        let mut words = vec![0u64; usize::try_from(pages.div_ceil(64)).unwrap_or(0)];
        for slot in &self.slots {
            let size = usize::try_from(slot.memory_size)
                .map_err(|_| KvmError::Ioctl("KVM_GET_DIRTY_LOG", einval()))?;
            let log = self
                .fd
                .get_dirty_log(slot.slot, size)
                .map_err(KvmError::ioctl("KVM_GET_DIRTY_LOG"))?;
            let first = slot.guest_phys_addr / page;
            let slot_pages = slot.memory_size.div_ceil(page);
            if first.is_multiple_of(64) {
                // The common case (one slot at 0): whole words line up.
                let at = (first / 64) as usize;
                for (dst, src) in words[at..].iter_mut().zip(&log) {
                    *dst |= *src;
                }
            } else {
                for bit in 0..slot_pages {
                    let set = log
                        .get((bit / 64) as usize)
                        .is_some_and(|w| w & (1 << (bit % 64)) != 0);
                    if set {
                        let at = first + bit;
                        words[(at / 64) as usize] |= 1 << (at % 64);
                    }
                }
            }
        }
        Ok(words)
    }
}

fn einval() -> kvm_ioctls::Error {
    kvm_ioctls::Error::new(libc::EINVAL)
}
