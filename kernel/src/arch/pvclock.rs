//! KVM's paravirtual clock (kvmclock), used once to learn the Unix time at a known TSC.
//!
//! The guest hands KVM the physical address of two structures through MSRs and KVM fills
//! them in: the wall-clock time at the moment KVM's system time was zero, and the current
//! system time with the TSC scale that extends it. Wall clock + system time = Unix time.
//! Afterwards the kernel turns system-time updates off again, so KVM does not keep writing
//! guest memory behind its back.

use super::{cpu, msr};
use crate::clock::PvclockScale;
use core::cell::UnsafeCell;
use core::ptr::{addr_of, read_volatile};
use core::sync::atomic::{Ordering, fence};

/// `struct pvclock_wall_clock`.
#[repr(C)]
struct WallClock {
    version: u32,
    sec: u32,
    nsec: u32,
}

/// `struct pvclock_vcpu_time_info`.
#[repr(C, align(32))]
struct TimeInfo {
    version: u32,
    pad0: u32,
    tsc_timestamp: u64,
    system_time: u64,
    tsc_to_system_mul: u32,
    tsc_shift: i8,
    flags: u8,
    pad: [u8; 2],
}

/// Memory KVM writes into: only ever read volatile, and only by this module.
struct Shared<T>(UnsafeCell<T>);

// SAFETY: one CPU; the only writer besides the hypervisor is nobody, readers use volatile
// reads under the version protocol.
unsafe impl<T> Sync for Shared<T> {}

static WALL: Shared<WallClock> = Shared(UnsafeCell::new(WallClock {
    version: 0,
    sec: 0,
    nsec: 0,
}));
static TIME: Shared<TimeInfo> = Shared(UnsafeCell::new(TimeInfo {
    version: 0,
    pad0: 0,
    tsc_timestamp: 0,
    system_time: 0,
    tsc_to_system_mul: 0,
    tsc_shift: 0,
    flags: 0,
    pad: [0; 2],
}));

/// A reading of kvmclock: Unix time in ns at TSC value `tsc`, and the TSC scale.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    /// Unix time in nanoseconds at `tsc`.
    pub unix_ns: u64,
    /// The TSC value of the reading.
    pub tsc: u64,
    /// kvmclock's TSC-to-ns scale (it also gives the TSC frequency).
    pub scale: PvclockScale,
}

/// Reads kvmclock, or `None` if KVM did not fill the structures in (or kept them torn). Callers must have
/// checked that KVM offers it ([`super::cpuid::Features::kvm_clock`]). Three MSR writes.
pub fn read() -> Option<Reading> {
    let wall = WALL.0.get();
    let time = TIME.0.get();
    // SAFETY: both structures are statics in the identity-mapped image (virtual = physical
    // address), sized and aligned as KVM expects; KVM writes them only while these MSRs point
    // at them, and the system-time MSR is switched off again below.
    unsafe {
        msr::wrmsr(msr::MSR_KVM_WALL_CLOCK_NEW, wall as u64);
        msr::wrmsr(msr::MSR_KVM_SYSTEM_TIME_NEW, time as u64 | 1);
    }
    let wall_clock = read_consistent(
        // SAFETY: `wall` is valid for reads (see above); fields are read volatile.
        || unsafe { read_volatile(addr_of!((*wall).version)) },
        // SAFETY: as above.
        || unsafe {
            (
                read_volatile(addr_of!((*wall).sec)),
                read_volatile(addr_of!((*wall).nsec)),
            )
        },
    );
    let system = read_consistent(
        // SAFETY: `time` is valid for reads (see above); fields are read volatile.
        || unsafe { read_volatile(addr_of!((*time).version)) },
        // SAFETY: as above.
        || unsafe {
            (
                read_volatile(addr_of!((*time).system_time)),
                read_volatile(addr_of!((*time).tsc_timestamp)),
                PvclockScale {
                    mul: read_volatile(addr_of!((*time).tsc_to_system_mul)),
                    shift: read_volatile(addr_of!((*time).tsc_shift)),
                },
            )
        },
    );
    let tsc = cpu::rdtsc();
    // SAFETY: disabling system-time updates (enable bit clear) only stops KVM's writes.
    unsafe { msr::wrmsr(msr::MSR_KVM_SYSTEM_TIME_NEW, 0) };
    let ((sec, nsec), (system_time, tsc_timestamp, scale)) = (wall_clock?, system?);
    // All zeros: KVM did not fill the structures in.
    if scale.mul == 0 || sec == 0 {
        return None;
    }
    let system_now = system_time + scale.ticks_to_ns(tsc.saturating_sub(tsc_timestamp));
    let wall_ns = u64::from(sec) * 1_000_000_000 + u64::from(nsec);
    Some(Reading {
        unix_ns: wall_ns + system_now,
        tsc,
        scale,
    })
}

/// Attempts at a consistent read before giving up (KVM updates take microseconds).
const MAX_TRIES: u32 = 1000;

/// pvclock's version protocol: an odd version means an update is in progress, a changed
/// version means the fields were torn. `None` if no consistent read came in time.
fn read_consistent<T>(version: impl Fn() -> u32, fields: impl Fn() -> T) -> Option<T> {
    for _ in 0..MAX_TRIES {
        let before = version();
        fence(Ordering::Acquire);
        let value = fields();
        fence(Ordering::Acquire);
        if before & 1 == 0 && version() == before {
            return Some(value);
        }
    }
    None
}
