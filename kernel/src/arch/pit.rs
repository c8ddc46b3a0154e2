//! The 8254 PIT and the 8259 PICs: calibration and masking only.
//!
//! Channel 2's gate is controlled through port 0x61 and its output can be read back there,
//! which lets the kernel time a known interval without taking any interrupt. Machines
//! without that port (QEMU microvm has a PIT but no speaker port, so 0x61 reads all ones)
//! get channel 0 instead, read back with latch commands. Neither takes an interrupt.

use super::{cpu, port};

/// PIT input clock in Hz.
pub const PIT_HZ: u64 = 1_193_182;

const CHANNEL0_DATA: u16 = 0x40;
const CHANNEL2_DATA: u16 = 0x42;
const COMMAND: u16 = 0x43;
const GATE_PORT: u16 = 0x61;
const GATE_ENABLE: u8 = 1 << 0;
const SPEAKER_ENABLE: u8 = 1 << 1;
const OUT2_STATE: u8 = 1 << 5;
/// Channel 2, lobyte/hibyte access, mode 0 (interrupt on terminal count), binary.
const CHANNEL2_MODE0: u8 = 0b1011_0000;
/// Channel 0, lobyte/hibyte access, mode 2 (rate generator), binary.
const CHANNEL0_MODE2: u8 = 0b0011_0100;
/// Channel 0, lobyte/hibyte, mode 0: with no count written after it, the channel stops.
const CHANNEL0_STOP: u8 = 0b0011_0000;
/// Latch channel 0's count for reading.
const CHANNEL0_LATCH: u8 = 0b0000_0000;
/// Polls of channel 0 without any change after which it counts as absent.
const STALL_POLLS: u32 = 16;
/// Bound on status polls: about 10x the polls a real count takes at ~9 µs per exit.
const MAX_POLLS: u32 = 20_000;

/// One timed interval: the TSC and the LAPIC timer count at its start and end.
#[derive(Clone, Copy, Debug)]
pub struct Interval {
    /// PIT ticks the interval lasted.
    pub pit_ticks: u64,
    /// TSC ticks over the interval.
    pub tsc_ticks: u64,
    /// LAPIC timer counts over the interval (when it was free-running).
    pub apic_ticks: u64,
}

/// Times `pit_ticks` (at most 0xFFFF) PIT ticks and measures the TSC and the LAPIC timer
/// (through `apic_count`) over them. `None` when there is no PIT (or it does not count).
pub fn measure(pit_ticks: u16, apic_count: impl Fn() -> u32) -> Option<Interval> {
    if port::inb(GATE_PORT) == 0xFF {
        return measure_channel0(pit_ticks, apic_count);
    }
    measure_channel2(pit_ticks, apic_count)
}

/// Channel 2 counts down once (mode 0) while its output is polled through port 0x61.
fn measure_channel2(pit_ticks: u16, apic_count: impl Fn() -> u32) -> Option<Interval> {
    let gate = port::inb(GATE_PORT) & !SPEAKER_ENABLE;
    // SAFETY: ports 0x61 and 0x42/0x43 control only the PIT's channel 2 and the speaker
    // gate (left off), which have no memory effects.
    unsafe {
        port::outb(GATE_PORT, gate & !GATE_ENABLE);
        port::outb(COMMAND, CHANNEL2_MODE0);
        port::outb(CHANNEL2_DATA, pit_ticks as u8);
        port::outb(CHANNEL2_DATA, (pit_ticks >> 8) as u8);
    }
    // Mode 0 drives OUT2 low once the count is written.
    if port::inb(GATE_PORT) & OUT2_STATE != 0 {
        return None;
    }
    let apic_start = apic_count();
    let tsc_start = cpu::rdtsc();
    // SAFETY: as above; raising the gate starts the count.
    unsafe { port::outb(GATE_PORT, gate | GATE_ENABLE) };
    let mut previous = tsc_start;
    for _ in 0..MAX_POLLS {
        let high = port::inb(GATE_PORT) & OUT2_STATE != 0;
        let now = cpu::rdtsc();
        if high {
            // OUT2 rose between the previous poll and this one: take the midpoint.
            let end = previous + (now - previous) / 2;
            let apic_end = apic_count();
            return Some(Interval {
                pit_ticks: u64::from(pit_ticks),
                tsc_ticks: end - tsc_start,
                apic_ticks: u64::from(apic_start.wrapping_sub(apic_end)),
            });
        }
        previous = now;
    }
    None
}

/// Reads channel 0's current count (three exits).
fn channel0_count() -> u16 {
    // SAFETY: latching a PIT count has no memory effects.
    unsafe { port::outb(COMMAND, CHANNEL0_LATCH) };
    let low = port::inb(CHANNEL0_DATA);
    let high = port::inb(CHANNEL0_DATA);
    u16::from_le_bytes([low, high])
}

/// Channel 0 runs freely (mode 2, period 65535 ticks, ~55 ms) and is read back until
/// `pit_ticks` have passed; then it is stopped. Its IRQ 0 is never taken: interrupts are off
/// and both PICs get masked before they are ever enabled.
fn measure_channel0(pit_ticks: u16, apic_count: impl Fn() -> u32) -> Option<Interval> {
    // SAFETY: programming PIT channel 0 has no memory effects; its interrupt stays off.
    unsafe {
        port::outb(COMMAND, CHANNEL0_MODE2);
        port::outb(CHANNEL0_DATA, 0xFF);
        port::outb(CHANNEL0_DATA, 0xFF);
    }
    let start = channel0_count();
    let tsc_start = cpu::rdtsc();
    let apic_start = apic_count();
    let mut result = None;
    for poll in 0..MAX_POLLS {
        let count = channel0_count();
        let now = cpu::rdtsc();
        // Counting down, wrapping at most once in the interval (it is shorter than a period).
        let elapsed = start.wrapping_sub(count);
        // A real PIT moves ~30 ticks per poll; one that never moves is absent (reads 0xFFFF).
        if elapsed == 0 && poll >= STALL_POLLS {
            break;
        }
        if elapsed >= pit_ticks && elapsed < 0xFFFF {
            result = Some(Interval {
                pit_ticks: u64::from(elapsed),
                tsc_ticks: now - tsc_start,
                apic_ticks: u64::from(apic_start.wrapping_sub(apic_count())),
            });
            break;
        }
    }
    // SAFETY: as above; mode 0 without a count stops the channel.
    unsafe { port::outb(COMMAND, CHANNEL0_STOP) };
    result
}

/// Masks every line of both 8259 PICs, so that nothing they deliver (under SeaBIOS the PIT
/// arrives on vector 8) reaches the CPU once interrupts are enabled.
pub fn mask_pics() {
    // SAFETY: writing the interrupt mask registers (OCW1) of the PICs only masks lines.
    unsafe {
        port::outb(0x21, 0xFF);
        port::outb(0xA1, 0xFF);
    }
}
