//! The running clock and sleeping.
//!
//! - Monotonic time is the TSC since kernel entry, scaled by its frequency: from CPUID leaf
//!   0x4000_0010 when the hypervisor has it (host-vmm adds it; QEMU with
//!   `vmware-cpuid-freq=on`), otherwise calibrated against the PIT, otherwise taken from
//!   kvmclock's scale. It never goes back: every reading is compared with the last one, and
//!   if the TSC went back (a move to a host whose TSC is behind, when the VMM did not carry
//!   the TSC over) the clock is rebased to count on from the last reading.
//! - After a move ([`after_move`], on the agent's RESUMED) the clock is read once (catching a
//!   TSC step), Unix time is taken again from the destination's kvmclock, and the idle loop
//!   re-arms the LAPIC timer from the current clock on its way out of that wake: a restored
//!   TSC deadline that KVM computed against another TSC (far in the future, or past) is
//!   replaced. The loop rewrites the deadline on every pass anyway; what RESUMED adds is the
//!   wake-up itself (its interrupt) for a guest whose only timer is that stale deadline.
//! - Realtime is monotonic time plus the Unix time at boot, read from kvmclock the first time
//!   anyone asks (one-off MSR exits nobody pays for unless they need it). Without kvmclock it
//!   starts at 0, with one warning.
//! - Sleeping arms the LAPIC timer (TSC-deadline mode when the CPU has it, else one-shot at
//!   the bus frequency) and halts until its interrupt. Interrupts are set up on first sleep
//!   (or network bring-up): both 8259 PICs masked, the LAPIC enabled. Until the app has
//!   threads they are only enabled inside the halt; then app threads run with them on, the
//!   timer is also the scheduler's tick, and the idle thread (`sched`) runs this idle work.

use crate::arch::apic::{self, TimerMode};
use crate::arch::cpuid::Features;
use crate::arch::{cpu, entry_tsc, pit, pvclock};
use crate::clock::{self, Scale, TscClock};
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

/// Length of the PIT calibration interval: 10 ms, about 0.05% error at ~9 µs per poll.
const CALIBRATION_PIT_TICKS: u16 = 11_932;
/// KVM's LAPIC timer runs at 1 GHz; assumed if nothing says otherwise.
const KVM_APIC_BUS_HZ: u64 = 1_000_000_000;
/// Assumed TSC frequency when nothing can measure it (a warning says so).
const FALLBACK_TSC_HZ: u64 = 1_000_000_000;

// The clock, set by `init`; `ORIGIN` and `BASE_NS` move only if the TSC steps back (one CPU,
// read with interrupts off, by threads and the scheduler's interrupt path alike: relaxed is
// enough).
static ORIGIN: AtomicU64 = AtomicU64::new(0);
static BASE_NS: AtomicU64 = AtomicU64::new(0);
/// The last monotonic reading handed out: no later reading is below it.
static LAST_NS: AtomicU64 = AtomicU64::new(0);
/// Times the TSC was found behind the clock, and the nanoseconds it was behind in all.
static STEPS_BACK: AtomicU64 = AtomicU64::new(0);
static STEPPED_BACK_NS: AtomicU64 = AtomicU64::new(0);
static TSC_HZ: AtomicU64 = AtomicU64::new(1);
static NS_MULT: AtomicU64 = AtomicU64::new(0);
static TICKS_MULT: AtomicU64 = AtomicU64::new(0);
/// ns -> LAPIC bus ticks, for one-shot mode.
static APIC_MULT: AtomicU64 = AtomicU64::new(0);
static ONE_SHOT: AtomicBool = AtomicBool::new(false);
static KVM_CLOCK: AtomicBool = AtomicBool::new(false);
static INTERRUPTS_READY: AtomicBool = AtomicBool::new(false);

const REALTIME_UNKNOWN: u8 = 0;
const REALTIME_READY: u8 = 1;
static REALTIME_STATE: AtomicU8 = AtomicU8::new(REALTIME_UNKNOWN);
/// Unix time in ns at monotonic time 0.
static REALTIME_BASE: AtomicU64 = AtomicU64::new(0);

/// Where the TSC frequency came from, for the boot log.
#[derive(Clone, Copy, Debug)]
enum Source {
    CpuidLeaf,
    Pit,
    Kvmclock,
    Assumed,
}

/// Sets up the clock: TSC frequency and timer mode. Free when CPUID has the frequency; a
/// 10 ms PIT calibration otherwise.
pub fn init(features: &Features) {
    KVM_CLOCK.store(features.kvm_clock, Ordering::Relaxed);
    let one_shot = !features.tsc_deadline;
    ONE_SHOT.store(one_shot, Ordering::Relaxed);
    let mut apic_hz = features.apic_bus_khz.map(|khz| u64::from(khz) * 1000);

    let (tsc_hz, source) = if let Some(khz) = features.tsc_khz {
        (u64::from(khz) * 1000, Source::CpuidLeaf)
    } else {
        // Calibrate the LAPIC timer in the same interval if one-shot mode will need it.
        let measure_apic = one_shot && apic_hz.is_none();
        if measure_apic {
            apic::start_free_running();
        }
        let interval = pit::measure(CALIBRATION_PIT_TICKS, || {
            if measure_apic {
                apic::current_count()
            } else {
                0
            }
        });
        match interval {
            Some(i) => {
                if measure_apic {
                    apic_hz = Some(clock::frequency(i.apic_ticks, i.pit_ticks, pit::PIT_HZ));
                }
                (
                    clock::frequency(i.tsc_ticks, i.pit_ticks, pit::PIT_HZ),
                    Source::Pit,
                )
            }
            None => match features.kvm_clock.then(pvclock::read).flatten() {
                Some(reading) => (reading.scale.tsc_hz(), Source::Kvmclock),
                None => (FALLBACK_TSC_HZ, Source::Assumed),
            },
        }
    };
    let tsc_hz = tsc_hz.max(1);
    let (origin, hz, to_ns, to_ticks) = TscClock::new(entry_tsc(), tsc_hz).parts();
    ORIGIN.store(origin, Ordering::Relaxed);
    TSC_HZ.store(hz, Ordering::Relaxed);
    NS_MULT.store(to_ns.mult(), Ordering::Relaxed);
    TICKS_MULT.store(to_ticks.mult(), Ordering::Relaxed);

    match source {
        Source::Assumed => log::warn!(
            "clock: cannot measure the TSC frequency (no CPUID leaf 0x40000010, PIT or kvmclock); assuming 1 GHz"
        ),
        _ => log::info!("clock: TSC at {} kHz (from {source:?})", tsc_hz / 1000),
    }
    if one_shot {
        let apic_hz = apic_hz.filter(|hz| *hz > 0).unwrap_or(KVM_APIC_BUS_HZ);
        APIC_MULT.store(
            Scale::ratio(apic_hz, clock::NS_PER_SEC).mult(),
            Ordering::Relaxed,
        );
        log::info!("timer: LAPIC one-shot at {} kHz", apic_hz / 1000);
    } else {
        log::info!("timer: LAPIC TSC-deadline");
    }
}

fn tsc_clock() -> TscClock {
    let mut clock = TscClock::from_parts(
        ORIGIN.load(Ordering::Relaxed),
        TSC_HZ.load(Ordering::Relaxed),
        Scale::from_mult(NS_MULT.load(Ordering::Relaxed)),
        Scale::from_mult(TICKS_MULT.load(Ordering::Relaxed)),
    );
    clock.base_ns = BASE_NS.load(Ordering::Relaxed);
    clock
}

/// Nanoseconds since kernel entry (time the guest spent paused for a move may or may not
/// count, depending on the VMM); never less than an earlier reading.
pub fn now_ns() -> u64 {
    // With threads, a switch between reading the TSC and `LAST_NS` would let another
    // thread's later reading look like the TSC going back: read with interrupts off.
    let interrupts = cpu::disable_interrupts();
    let clock = tsc_clock();
    let tsc = cpu::rdtsc();
    let last = LAST_NS.load(Ordering::Relaxed);
    let ns = match clock.read_at_least(tsc, last) {
        Ok(ns) => {
            LAST_NS.store(ns, Ordering::Relaxed);
            ns
        }
        Err(rebased) => stepped_back(rebased, clock.ns_at(tsc), last),
    };
    cpu::restore_interrupts(interrupts);
    ns
}

/// The TSC went back: count on from `last` (no log here: the logger may read the clock).
#[cold]
fn stepped_back(rebased: TscClock, read: u64, last: u64) -> u64 {
    ORIGIN.store(rebased.origin, Ordering::Relaxed);
    BASE_NS.store(rebased.base_ns, Ordering::Relaxed);
    STEPS_BACK.fetch_add(1, Ordering::Relaxed);
    STEPPED_BACK_NS.fetch_add(last - read, Ordering::Relaxed);
    last
}

/// After a move (the agent's RESUMED): reads the clock once, so a TSC that went back is
/// caught and the clock rebased before anything arms a timer; forgets the Unix time at boot,
/// so the next realtime reading asks the destination's kvmclock. The LAPIC timer is re-armed
/// from the current clock when the idle loop leaves this wake (it always rewrites it).
/// Returns the monotonic time now.
pub fn after_move() -> u64 {
    let now = now_ns();
    REALTIME_STATE.store(REALTIME_UNKNOWN, Ordering::Relaxed);
    // The restored deadline was computed against another TSC: re-arm whatever is asked next.
    ARMED_NS.store(0, Ordering::Relaxed);
    let steps = STEPS_BACK.load(Ordering::Relaxed);
    if steps > 0 {
        log::info!(
            "clock: the TSC went back {steps} time(s), {} us in all; monotonic time held and counts on from {} us",
            STEPPED_BACK_NS.load(Ordering::Relaxed) / 1000,
            now / 1000
        );
    }
    now
}

/// Unix time in nanoseconds (since boot if kvmclock is missing).
pub fn realtime_ns() -> u64 {
    if REALTIME_STATE.load(Ordering::Relaxed) != REALTIME_READY {
        let base = read_realtime_base();
        REALTIME_BASE.store(base, Ordering::Relaxed);
        REALTIME_STATE.store(REALTIME_READY, Ordering::Relaxed);
    }
    REALTIME_BASE
        .load(Ordering::Relaxed)
        .saturating_add(now_ns())
}

fn read_realtime_base() -> u64 {
    if KVM_CLOCK.load(Ordering::Relaxed)
        && let Some(reading) = pvclock::read()
    {
        let base = reading
            .unix_ns
            .saturating_sub(tsc_clock().ns_at(reading.tsc));
        log::debug!(
            "clock: Unix time at boot {}.{:09} s (kvmclock)",
            base / clock::NS_PER_SEC,
            base % clock::NS_PER_SEC
        );
        return base;
    }
    log::warn!("clock: no KVM pvclock, so CLOCK_REALTIME counts from 0 at boot");
    0
}

/// Sleeps until monotonic time `deadline_ns`, halting the CPU in between (and doing the
/// network's work whenever it wakes).
pub fn sleep_until(deadline_ns: u64) {
    if crate::sched::active() {
        crate::sched::sleep_until(deadline_ns);
    } else {
        idle(Some(deadline_ns), || false);
    }
}

/// The idle loop: halts until `done` holds or monotonic time `deadline_ns` passes (never,
/// with `None`). Every wake-up (timer, NIC) first runs the network's pending work, then asks
/// `done`. The LAPIC timer is armed for the earlier of the deadline and the network's next
/// poll, so the CPU never spins. Returns whether `done` held.
///
/// Once threads exist the calling thread blocks instead and the idle thread does the
/// network's work (`sched::wait`).
pub fn idle(deadline_ns: Option<u64>, mut done: impl FnMut() -> bool) -> bool {
    if crate::sched::active() {
        return crate::sched::wait(deadline_ns, done);
    }
    prepare_interrupts();
    loop {
        // Under sustained load the loop can go seconds without halting (there is always a
        // frame to poll): take pending interrupts here too, or their events (the control
        // channel's requests, the VF's mailbox) wait for the load to end.
        cpu::accept_interrupts();
        let now = now_ns();
        let network = crate::net::service(now);
        if done() {
            return true;
        }
        if deadline_ns.is_some_and(|d| now >= d) {
            return false;
        }
        let wake = match (deadline_ns, network) {
            (Some(d), Some(n)) => Some(d.min(n)),
            (d, n) => d.or(n),
        };
        // The clock may have been rebased during this wake (a move): arm from it as it is.
        arm(&tsc_clock(), wake);
        if COUNT_HALTED.load(Ordering::Relaxed) {
            let before = cpu::rdtsc();
            cpu::wait_for_interrupt();
            HALTED_TICKS.fetch_add(cpu::rdtsc().wrapping_sub(before), Ordering::Relaxed);
        } else {
            cpu::wait_for_interrupt();
        }
    }
}

/// Whether [`idle`] counts the TSC ticks it spends halted (debug cost accounting only).
static COUNT_HALTED: AtomicBool = AtomicBool::new(false);
/// TSC ticks spent halted since counting started.
static HALTED_TICKS: AtomicU64 = AtomicU64::new(0);

/// Starts counting halted time (for the network's cost summaries at `log=debug`).
pub fn count_halted() {
    COUNT_HALTED.store(true, Ordering::Relaxed);
}

/// TSC ticks spent halted so far (0 unless [`count_halted`] was called).
pub fn halted_ticks() -> u64 {
    HALTED_TICKS.load(Ordering::Relaxed)
}

/// What the LAPIC timer was last armed for (monotonic ns; `u64::MAX`: disarmed; 0: unknown).
static ARMED_NS: AtomicU64 = AtomicU64::new(0);

/// Arms the LAPIC timer for monotonic time `at_ns` (or disarms it), unless it is already
/// armed for exactly that and it has not fired yet (`now_ns` is the caller's reading): the
/// scheduler asks for the same tick on every switch, and each write is an MSR or MMIO exit.
pub fn arm_at(at_ns: Option<u64>, now_ns: u64) {
    let at = at_ns.unwrap_or(u64::MAX);
    if at == ARMED_NS.load(Ordering::Relaxed) && (at == u64::MAX || now_ns < at) {
        return;
    }
    arm(&tsc_clock(), at_ns);
}

/// Arms the LAPIC timer to fire at monotonic time `at_ns`, or disarms it.
fn arm(c: &TscClock, at_ns: Option<u64>) {
    ARMED_NS.store(at_ns.unwrap_or(u64::MAX), Ordering::Relaxed);
    if ONE_SHOT.load(Ordering::Relaxed) {
        let ticks = match at_ns {
            Some(at) => {
                let now = now_ns();
                let ticks = Scale::from_mult(APIC_MULT.load(Ordering::Relaxed))
                    .apply(at.saturating_sub(now));
                ticks.clamp(1, u64::from(u32::MAX)) as u32
            }
            None => 0,
        };
        apic::arm_one_shot(ticks);
    } else {
        // A zero deadline disarms the timer.
        apic::arm_deadline(at_ns.map_or(0, |at| c.tsc_at(at).max(1)));
    }
}

/// Sleeps for `ns` nanoseconds.
pub fn sleep_ns(ns: u64) {
    sleep_until(now_ns().saturating_add(ns));
}

/// Once, at the first sleep or when a device is about to raise interrupts: masks the PICs,
/// software-enables the LAPIC and points its timer at its vector (four exits). A LAPIC that
/// is still software-disabled drops the interrupts it is sent (KVM does), so device setup
/// calls this before enabling MSI-X or routing INTx.
pub fn prepare_interrupts() {
    if INTERRUPTS_READY.swap(true, Ordering::Relaxed) {
        return;
    }
    pit::mask_pics();
    let mode = if ONE_SHOT.load(Ordering::Relaxed) {
        TimerMode::OneShot
    } else {
        TimerMode::TscDeadline
    };
    apic::enable_timer(mode);
}
