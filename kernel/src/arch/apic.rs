//! The local APIC (xAPIC, memory-mapped) and its timer.
//!
//! KVM and QEMU put the LAPIC at its reset address, 0xFEE0_0000; the kernel maps that page
//! uncached at boot ([`super::paging`]). Each register access is an MMIO exit, so the kernel
//! touches the LAPIC only to arm the timer and, once, to enable it.

use super::msr;
use core::ptr;

/// Physical (and, identity-mapped, virtual) address of the LAPIC registers.
pub const LAPIC_BASE: u64 = 0xFEE0_0000;
/// The EOI register, written by the timer stub in [`super::idt`].
pub const EOI_ADDRESS: u64 = LAPIC_BASE + 0xB0;
/// Vector of the LAPIC timer interrupt (its gate is built in link.ld).
pub const TIMER_VECTOR: u8 = 32;
/// Vector of the NIC's "frames arrived" interrupt (MSI-X entry 0, or INTx through the
/// IOAPIC); its gate is built in link.ld.
pub const NET_QUEUE_VECTOR: u8 = 33;
/// Vector of the NIC's "configuration changed" interrupt (MSI-X entry 1).
pub const NET_CONFIG_VECTOR: u8 = 34;
/// Vector of the VF's queue-pair interrupt (MSI-X entry 0).
pub const VF_QUEUE_VECTOR: u8 = 35;
/// Vector of the VF's mailbox/link ("other") interrupt (MSI-X entry 1).
pub const VF_OTHER_VECTOR: u8 = 36;
/// Vector of the control channel (virtio-console) to host-vmm.
pub const CONTROL_VECTOR: u8 = 37;
/// Vector of virtio-net's virtio-mmio interrupt line (level-triggered through the IOAPIC;
/// its stub acknowledges the device, [`super::idt::set_net_line`]).
pub const NET_LINE_VECTOR: u8 = 38;
/// Spurious-interrupt vector (its gate is built in link.ld).
pub const SPURIOUS_VECTOR: u8 = 255;

const REG_ID: u64 = 0x20;
const REG_SVR: u64 = 0xF0;
const REG_LVT_TIMER: u64 = 0x320;
const REG_TIMER_INITIAL: u64 = 0x380;
const REG_TIMER_CURRENT: u64 = 0x390;
const REG_TIMER_DIVIDE: u64 = 0x3E0;

const SVR_APIC_ENABLE: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
const LVT_TSC_DEADLINE: u32 = 0b10 << 17;
/// Divide configuration 0b1011: the timer counts at the bus frequency.
const DIVIDE_BY_1: u32 = 0b1011;

/// How the timer is armed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerMode {
    /// Fires when the TSC reaches the value in `IA32_TSC_DEADLINE`.
    TscDeadline,
    /// Counts down from an initial count at the bus frequency, once.
    OneShot,
}

fn write(reg: u64, value: u32) {
    // SAFETY: LAPIC_BASE is mapped uncached by paging::init before any timer use, `reg` is
    // one of the xAPIC register offsets above, and register writes have no memory effects.
    unsafe { ptr::write_volatile((LAPIC_BASE + reg) as *mut u32, value) };
}

fn read(reg: u64) -> u32 {
    // SAFETY: as for `write`; reading these registers has no side effects.
    unsafe { ptr::read_volatile((LAPIC_BASE + reg) as *const u32) }
}

/// This CPU's local APIC ID (the destination for device interrupts). One exit.
pub fn id() -> u8 {
    (read(REG_ID) >> 24) as u8
}

/// Software-enables the LAPIC and points its timer at [`TIMER_VECTOR`] in `mode`.
pub fn enable_timer(mode: TimerMode) {
    write(REG_SVR, SVR_APIC_ENABLE | u32::from(SPURIOUS_VECTOR));
    match mode {
        TimerMode::TscDeadline => write(REG_LVT_TIMER, LVT_TSC_DEADLINE | u32::from(TIMER_VECTOR)),
        TimerMode::OneShot => {
            write(REG_TIMER_DIVIDE, DIVIDE_BY_1);
            write(REG_LVT_TIMER, u32::from(TIMER_VECTOR));
        }
    }
}

/// Arms the TSC-deadline timer to fire at TSC value `tsc` (at once if it has passed).
pub fn arm_deadline(tsc: u64) {
    // SAFETY: IA32_TSC_DEADLINE only arms the LAPIC timer; its interrupt has a gate.
    unsafe { msr::wrmsr(msr::IA32_TSC_DEADLINE, tsc) };
}

/// Arms the one-shot timer to fire after `ticks` bus cycles (0 cancels it).
pub fn arm_one_shot(ticks: u32) {
    write(REG_TIMER_INITIAL, ticks);
}

/// Starts the timer counting down from `u32::MAX` with its interrupt masked: for
/// calibration against another clock with [`current_count`].
pub fn start_free_running() {
    write(REG_TIMER_DIVIDE, DIVIDE_BY_1);
    write(REG_LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
    write(REG_TIMER_INITIAL, u32::MAX);
}

/// The timer's current count.
pub fn current_count() -> u32 {
    read(REG_TIMER_CURRENT)
}
