//! The network: brings the NICs and the stack up on first use ([`init`]) and does all
//! network work from the idle loop ([`service`]), never in interrupt handlers.
//!
//! Bring-up: parse `ip=`/`gw=` from the command line, enumerate PCI, and take the first
//! virtio-net function and the first 82599 VF (either may be missing, not both); on a
//! machine without PCI (QEMU microvm) virtio-net is the first virtio-mmio transport that
//! the command line's `virtio_mmio.device=` words name and that holds one
//! ([`probe_virtio_mmio`]: its line level-triggered through the IOAPIC on
//! [`apic::NET_LINE_VECTOR`], acknowledged by its interrupt stub). Give PCI functions'
//! unassigned memory BARs addresses (machines without firmware), map every memory BAR
//! uncached, probe them with MSI-X (virtio-net on [`apic::NET_QUEUE_VECTOR`] /
//! [`apic::NET_CONFIG_VECTOR`], INTx through the IOAPIC if MSI-X is not usable; the VF on
//! [`apic::VF_QUEUE_VECTOR`] / [`apic::VF_OTHER_VECTOR`]), put both under netstack's
//! failover device (one MAC, one address; [`vf`] keeps the VF's life cycle), start the
//! smoltcp stack and announce the address once a link is up. A virtio-console, when there
//! is one, becomes the control channel to host-vmm ([`control`]).
//!
//! The interrupt stubs only record events (`idt::take_net_events`); [`service`] runs when the
//! idle loop wakes, acknowledges INTx if that is the mode, checks links, answers the control
//! channel, polls the stack, and tells the idle loop when smoltcp next needs a poll, so the
//! CPU halts in between.

mod control;
mod vf;

use crate::arch::{apic, bootmem, cpu, idt, ioapic, paging, pci::PortConfig};
use crate::hal::KernelHal;
use crate::sync::Mutex;
use crate::{cmdline, timer};
use core::fmt;
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use drivers::net::NetDevice;
use drivers::pci::{self, Bdf, bar};
use drivers::virtio_mmio;
use drivers::virtio_net::{self, Interrupt, InterruptRequest, VirtioNet};
use netstack::{Failover, Instant, SocketTable, Stack};

/// virtio-net as the kernel runs it.
pub type Virtio = VirtioNet<KernelHal>;
/// The 82599 VF as the kernel runs it.
pub type Vf = vf::Vf;
/// The device the stack runs on: the VF and virtio-net under one MAC.
pub type Device = Failover<Vf, Virtio>;

/// Addresses for memory BARs that firmware left unassigned (host-vmm has no firmware): the
/// 32-bit PCI hole above host-vmm's RAM (at most 3 GiB) and below the IOAPIC.
const BAR_WINDOW: bar::Window = bar::Window::new(0xC000_0000, 0xFEC0_0000);
/// Without any interrupt the stack is polled this often.
const POLL_WITHOUT_IRQ_NS: u64 = 10_000_000;
/// Least time between two polls that smoltcp asks for "now" (say, a socket waiting for a
/// free transmit buffer): the idle loop never spins.
const MIN_REPOLL_NS: u64 = 200_000;
/// Frames one [`service`] takes in at most. The guest has no preemption: an unbounded poll
/// under a flood (a TCP sender filling the window) kept the app, the control channel and
/// pending interrupts waiting for seconds here, where each frame costs milliseconds of
/// emulated code. Sixteen frames is half a VF ring, a short burst on real hardware.
const INGRESS_BUDGET: usize = 16;

/// The running network.
struct Net {
    stack: Stack<Device>,
    sockets: SocketTable,
    /// The VF's slot on the bus and its watchdog.
    vf: vf::Watch,
    /// The control channel to host-vmm, when there is one.
    control: Option<control::Control>,
    /// INTx (virtio-net): the ISR must be read (which lowers the line) on every interrupt.
    intx: bool,
    /// No interrupt at all: poll on a timer.
    polled: bool,
    /// Configuration changes arrive on the queue vector (single MSI-X entry, or INTx).
    config_shared: bool,
    /// Monotonic ns at which the stack wants polling; `u64::MAX` for never.
    next_poll: u64,
    /// Cost accounting, only at `log=debug`.
    cost: Cost,
}

/// What received frames cost, at `log=debug`: TSC ticks in [`service`] calls that received
/// frames, and all busy ticks (everything but halting: interrupt entry, idle loop, stack,
/// driver, socket calls and the app) since the last summary. Under QEMU's TCG with
/// `-icount shift=0` a TSC tick is one guest instruction, so these count instructions;
/// under KVM they are time.
#[derive(Default)]
struct Cost {
    frames: u64,
    ticks: u64,
    min: u64,
    max: u64,
    /// TSC and halted ticks when this summary period started.
    start: (u64, u64),
    tx_start: u64,
}

/// Frames between two cost summaries in the debug log.
const COST_REPORT_FRAMES: u64 = 16;

static NET: Mutex<Option<Net>> = Mutex::new(None);

/// The stack's socket events (`note_progress`): a blocked socket call waits for it to move,
/// then tries again.
static PROGRESS: AtomicU64 = AtomicU64::new(0);

/// `Net::next_poll`, readable without the lock (the scheduler decides from it whether the
/// idle thread is due).
static NEXT_POLL: AtomicU64 = AtomicU64::new(u64::MAX);

/// Where bring-up stands: not tried, up, or failed (and why: `InitError as u8 + FAILED`).
const NOT_STARTED: u8 = 0;
const UP: u8 = 1;
const FAILED: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(NOT_STARTED);

/// Why the network did not come up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum InitError {
    /// No `ip=` on the command line, or a bad one (reported in the log).
    NotConfigured,
    /// Neither a virtio-net device (PCI or virtio-mmio) nor a VF.
    NoDevice,
    /// The device would not come up (reported in the log).
    DeviceFailed,
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InitError::NotConfigured => "no usable ip= on the command line",
            InitError::NoDevice => {
                "no network device (virtio-net on PCI or virtio-mmio, or an 82599 VF)"
            }
            InitError::DeviceFailed => "the network device failed to start",
        })
    }
}

/// Monotonic nanoseconds as smoltcp time.
pub(super) fn instant(ns: u64) -> Instant {
    Instant::from_micros((ns / 1000) as i64)
}

fn instant_ns(i: Instant) -> u64 {
    u64::try_from(i.total_micros())
        .unwrap_or(0)
        .saturating_mul(1000)
}

/// Brings the network up, once; later calls return the first call's result.
pub fn init() -> Result<(), InitError> {
    match STATE.load(Ordering::Relaxed) {
        NOT_STARTED => {}
        UP => return Ok(()),
        s if s == FAILED + InitError::NotConfigured as u8 => {
            return Err(InitError::NotConfigured);
        }
        s if s == FAILED + InitError::NoDevice as u8 => return Err(InitError::NoDevice),
        _ => return Err(InitError::DeviceFailed),
    }
    // Threads: nobody else may start a second bring-up meanwhile.
    let _alone = crate::sync::PreemptOff::new();
    let started = timer::now_ns();
    match bring_up() {
        Ok(net) => {
            NEXT_POLL.store(net.next_poll, Ordering::Relaxed);
            *NET.lock() = Some(net);
            STATE.store(UP, Ordering::Relaxed);
            log::info!("net: up after {} us", (timer::now_ns() - started) / 1000);
            Ok(())
        }
        Err(e) => {
            match e {
                InitError::NotConfigured => log::warn!("net: {e}; no network"),
                _ => log::error!("net: {e}"),
            }
            STATE.store(FAILED + e as u8, Ordering::Relaxed);
            Err(e)
        }
    }
}

fn bring_up() -> Result<Net, InitError> {
    let text = core::str::from_utf8(bootmem::cmdline()).map_err(|_| InitError::NotConfigured)?;
    let config = match netstack::config::parse(cmdline::words(text)) {
        Ok(Some(config)) => config,
        Ok(None) => return Err(InitError::NotConfigured),
        Err(e) => {
            log::error!("cmdline: {e}");
            return Err(InitError::NotConfigured);
        }
    };

    let mut access = PortConfig;
    let functions = pci::enumerate(&access);
    for f in &functions {
        log::debug!("pci {f}");
    }
    // The LAPIC must accept a device's first interrupt, which may come as soon as MSI-X is
    // on: a software-disabled LAPIC drops it, and with event-index suppression virtio-net
    // would then never signal again.
    timer::prepare_interrupts();
    let apic_id = apic::id();

    let mut virtio = None;
    let (mut intx, mut polled, mut config_shared) = (false, false, false);
    let mut virtio_failed = false;
    if let Some(nic) = functions.iter().find(|f| virtio_net::matches(f)) {
        match probe_virtio(&mut access, nic.bdf, apic_id) {
            Ok((device, mode)) => {
                (intx, polled, config_shared) = mode;
                virtio = Some(device);
            }
            Err(e) => {
                log::error!("net: virtio-net at {}: {e}", nic.bdf);
                virtio_failed = true;
            }
        }
    } else {
        match probe_virtio_mmio(text, apic_id) {
            Ok(Some((device, mode))) => {
                (intx, polled, config_shared) = mode;
                virtio = Some(device);
            }
            Ok(None) => {}
            Err(_) => virtio_failed = true,
        }
    }
    let mac = virtio.as_ref().map(|v| v.mac_address());
    let vf_bdf = functions
        .iter()
        .find(|f| drivers::ixgbevf::pci::matches(f))
        .map(|f| f.bdf);
    let mut vf_bars = None;
    let vf = vf_bdf
        .and_then(|bdf| vf::bring_up(&mut access, bdf, mac, apic_id, &mut None, &mut vf_bars));
    if virtio.is_none() && vf.is_none() {
        if functions.is_empty() && virtio_mmio::devices(text).next().is_none() {
            // The likely mistake: QEMU microvm with ACPI on lists its devices only there.
            log::error!(
                "net: no PCI bus and no {}= on the command line (QEMU microvm appends it only with `-M microvm,acpi=off`)",
                virtio_mmio::PARAM
            );
        }
        return Err(if vf_bdf.is_some() || virtio_failed {
            InitError::DeviceFailed
        } else {
            InitError::NoDevice
        });
    }
    let control = control::bring_up(&mut access, &functions, apic_id);

    let device = Failover::new(vf, virtio);
    log::info!(
        "net: MAC {}, {}/{} gw {:?}, virtio-net {}, VF {}, control channel {}",
        device.mac_address(),
        config.address.address(),
        config.address.prefix_len(),
        config.gateway,
        match device.virtio().map(|v| v.interrupt()) {
            None => "absent",
            Some(Interrupt::Line(_)) => "virtio-mmio, level line",
            Some(Interrupt::Intx(_)) if intx => "INTx",
            Some(_) if polled => "polled",
            Some(_) => "MSI-X",
        },
        if device.vf().is_some() {
            "MSI-X"
        } else {
            "absent"
        },
        if control.is_some() { "up" } else { "absent" },
    );

    if log::log_enabled!(log::Level::Debug) {
        timer::count_halted();
    }
    let now = timer::now_ns();
    let mut stack = Stack::new(device, config, crate::abi::random_u64(), instant(now));
    stack.check_failover();
    stack.poll(instant(now));
    Ok(Net {
        stack,
        sockets: SocketTable::new(crate::abi::random_u64()),
        vf: vf::Watch::new(vf_bdf, vf_bars, now),
        control,
        intx,
        polled,
        config_shared,
        next_poll: now,
        cost: Cost::default(),
    })
}

/// How virtio-net signals: (INTx, polled, configuration changes on the queue vector).
type VirtioMode = (bool, bool, bool);

/// Probes virtio-net at `bdf` with its interrupts on this CPU.
fn probe_virtio(
    access: &mut PortConfig,
    bdf: Bdf,
    apic_id: u8,
) -> Result<(Virtio, VirtioMode), InitError> {
    log::info!("net: virtio-net at {bdf}");
    let bars = map_bars(access, bdf)?;
    let irq = InterruptRequest {
        apic_id,
        queue_vector: apic::NET_QUEUE_VECTOR,
        config_vector: apic::NET_CONFIG_VECTOR,
    };
    let mut device = Virtio::probe(access, bdf, &bars, irq).map_err(|e| {
        log::error!("pci {bdf}: {e}");
        InitError::DeviceFailed
    })?;
    let mode = match device.interrupt() {
        Interrupt::Msix { config_shared } => (false, false, config_shared),
        Interrupt::Intx(line)
            if ioapic::route(
                line.line,
                apic::NET_QUEUE_VECTOR,
                apic_id,
                ioapic::Trigger::Edge,
            ) =>
        {
            // The entry is edge-triggered: if the line went up before it was programmed, no
            // edge would ever come. Reading the ISR lowers it; from now on every event is an
            // edge the IOAPIC sees.
            device.ack_interrupt();
            log::info!("net: INTx pin {} on IOAPIC input {}", line.pin, line.line);
            (true, false, true)
        }
        other => {
            log::warn!("net: no usable interrupt ({other:?}); polling every 10 ms");
            (false, true, true)
        }
    };
    Ok((device, mode))
}

/// Probes the first virtio-net device among the virtio-mmio transports the command line
/// `text` names, with its line on this CPU; `Ok(None)` when it names none (or only other
/// devices, or ranges without a virtio device), an error when the first virtio-net among
/// them fails.
fn probe_virtio_mmio(text: &str, apic_id: u8) -> Result<Option<(Virtio, VirtioMode)>, InitError> {
    for entry in virtio_mmio::devices(text) {
        let mmio = match entry {
            Ok(mmio) => mmio,
            Err(e) => {
                log::error!("cmdline: {}=: {e}; ignored", virtio_mmio::PARAM);
                continue;
            }
        };
        // Mapped here, so a range the page tables refuse (RAM, say) is an error, not the
        // HAL's panic.
        if let Err(e) = paging::map_mmio(mmio.base, mmio.size) {
            log::error!("net: virtio-mmio {mmio}: cannot map it: {e}");
            continue;
        }
        let device = match Virtio::probe_mmio(&mmio) {
            Ok(device) => device,
            Err(virtio_net::ProbeError::NotNetwork(_)) => continue,
            // No virtio device there (bad magic or version, device ID 0): not ours either.
            Err(e @ virtio_net::ProbeError::Mmio(_)) => {
                log::warn!("net: virtio-mmio {mmio}: {e}; skipped");
                continue;
            }
            Err(e) => {
                log::error!("net: virtio-mmio {mmio}: {e}");
                return Err(InitError::DeviceFailed);
            }
        };
        log::info!("net: virtio-net on virtio-mmio {mmio}");
        // The stub must know the device before the line can fire; level-triggered, a line
        // already up is delivered as soon as the entry is unmasked.
        idt::set_net_line(mmio.base);
        if !ioapic::route(
            mmio.irq,
            apic::NET_LINE_VECTOR,
            apic_id,
            ioapic::Trigger::Level,
        ) {
            log::warn!(
                "net: the IOAPIC has no input {}; polling every 10 ms",
                mmio.irq
            );
            return Ok(Some((device, (false, true, true))));
        }
        return Ok(Some((device, (false, false, false))));
    }
    Ok(None)
}

/// Sizes the BARs of `bdf` (once: the driver's probe takes them from here), assigns
/// addresses to unassigned memory BARs and maps every memory BAR uncached, so the drivers'
/// HAL only ever finds them mapped.
pub(crate) fn map_bars(
    access: &mut PortConfig,
    bdf: Bdf,
) -> Result<[Option<bar::Bar>; bar::BAR_COUNT as usize], InitError> {
    let mut window = BAR_WINDOW;
    let bars = bar::read_assigned(access, bdf, Some(&mut window)).map_err(|e| {
        log::error!("pci {bdf}: {e}");
        InitError::DeviceFailed
    })?;
    for (index, b) in bars.iter().enumerate() {
        let Some(b) = *b else { continue };
        let Some((address, size)) = b.memory() else {
            continue;
        };
        log::debug!("pci {bdf}: BAR {index}: {b}");
        if let Err(e) = paging::map_mmio(address, size) {
            log::error!("pci {bdf}: cannot map BAR {index} ({b}): {e}");
            return Err(InitError::DeviceFailed);
        }
    }
    Ok(bars)
}

/// Does the network's pending work (called by the idle loop each time it wakes, with the
/// current monotonic time) and returns when it next needs to run, if ever.
pub fn service(now_ns: u64) -> Option<u64> {
    if STATE.load(Ordering::Relaxed) != UP {
        return None;
    }
    let events = idt::take_net_events();
    let mut guard = NET.lock();
    let net = guard.as_mut()?;
    if events == 0 && now_ns < net.next_poll {
        return Some(net.next_poll).filter(|t| *t != u64::MAX);
    }
    let start = log::log_enabled!(log::Level::Debug)
        .then(|| (cpu::rdtsc(), net.stack.device_mut().stats().rx_frames));
    let mut config_changed = events & idt::NET_CONFIG_EVENT != 0;
    if net.intx && events & idt::NET_QUEUE_EVENT != 0 {
        // Reading the ISR lowers the INTx line, so the next event is a fresh edge.
        config_changed |= net.stack.device_mut().ack_interrupt().config;
    } else if net.config_shared && events & idt::NET_QUEUE_EVENT != 0 {
        config_changed = true;
    }
    // The VF's "other" vector (mailbox, link) and its watchdog, which also notices a VF that
    // was unplugged (it cannot interrupt any more) or plugged back in.
    config_changed |= net
        .vf
        .service(&mut net.stack, events & idt::VF_OTHER_EVENT != 0, now_ns);
    if (config_changed || net.polled)
        && let Some(switched) = net.stack.check_failover()
    {
        log::info!("net: traffic now on {} (automatic)", switched.to);
    }
    // The control channel is looked at on every pass, not only after its interrupt: under
    // sustained load this loop may not halt for seconds, and on this nested KVM an interrupt
    // that arrives meanwhile was seen to wait until the next halt (requests then timed out).
    // An empty channel costs one read of the used ring's index.
    if let Some(control) = net.control.as_mut() {
        control.service(&mut net.stack, &mut net.vf);
    }
    let now = instant(now_ns);
    // Listeners are re-armed after every frame (SocketTable::poll), so a SYN always finds
    // a socket in Listen while the backlog has room.
    let polled = net.sockets.poll(&mut net.stack, now, INGRESS_BUDGET);
    note_progress(net);
    let mut next = net.stack.poll_at(now).map_or(u64::MAX, |t| {
        instant_ns(t).max(now_ns.saturating_add(MIN_REPOLL_NS))
    });
    if polled.more {
        // Frames are still waiting: come back as soon as the app has had its turn.
        next = now_ns;
    }
    // The VF masks its vectors when it sends them: unmask once its work is done. A frame
    // that came in meanwhile raised no interrupt, so poll again soon instead.
    if events & (idt::VF_QUEUE_EVENT | idt::VF_OTHER_EVENT) != 0
        && let Some(vf) = net.stack.device_mut().vf_mut()
        && vf.rearm_interrupts()
    {
        next = next.min(now_ns.saturating_add(MIN_REPOLL_NS));
    }
    if net.polled {
        next = next.min(now_ns.saturating_add(POLL_WITHOUT_IRQ_NS));
    }
    if net.control.as_ref().is_some_and(control::Control::chatters) {
        // The agent.test=chatter knob: flood the control channel without pause.
        next = now_ns;
    }
    next = next.min(net.vf.next_check());
    if let Some(at) = net
        .control
        .as_ref()
        .and_then(|c| c.next_step(&net.vf, now_ns))
    {
        // A request under way (PREPARE, RESUMED): its next step after this pass.
        next = next.min(at);
    }
    set_next_poll(net, next);
    if let Some((tsc, rx_before)) = start {
        let ticks = cpu::rdtsc().wrapping_sub(tsc);
        let stats = net.stack.device_mut().stats();
        account(&mut net.cost, stats.rx_frames - rx_before, ticks, stats);
    }
    Some(next).filter(|t| *t != u64::MAX)
}

/// Adds one `service` call that received `frames` frames in `ticks` TSC ticks; logs a
/// summary every [`COST_REPORT_FRAMES`] frames.
fn account(cost: &mut Cost, frames: u64, ticks: u64, stats: drivers::net::Stats) {
    if frames == 0 {
        return;
    }
    let per_frame = ticks / frames;
    if cost.frames == 0 {
        cost.min = per_frame;
        // The period starts just before this call's frames arrived.
        cost.start = (cpu::rdtsc().wrapping_sub(ticks), timer::halted_ticks());
        cost.tx_start = stats.tx_frames;
    }
    cost.frames += frames;
    cost.ticks += ticks;
    cost.min = cost.min.min(per_frame);
    cost.max = cost.max.max(per_frame);
    if cost.frames >= COST_REPORT_FRAMES {
        let elapsed = cpu::rdtsc().wrapping_sub(cost.start.0);
        let busy = elapsed.saturating_sub(timer::halted_ticks().wrapping_sub(cost.start.1));
        log::debug!(
            "net: {} frames in, {} out; TSC ticks per frame in: service avg {} min {} max {}, all busy {}; device rx {} tx {} rx errors {} tx dropped {}",
            cost.frames,
            stats.tx_frames - cost.tx_start,
            cost.ticks / cost.frames,
            cost.min,
            cost.max,
            busy / cost.frames,
            stats.rx_frames,
            stats.tx_frames,
            stats.rx_errors,
            stats.tx_dropped
        );
        *cost = Cost::default();
    }
}

/// Runs a socket operation on the table and the stack, bringing the network up on first
/// use, then runs the stack's egress so whatever the operation queued goes out at once.
pub fn with_sockets<R>(
    f: impl FnOnce(&mut SocketTable, &mut Stack<Device>) -> R,
) -> Result<R, InitError> {
    init()?;
    let mut guard = NET.lock();
    let net = guard.as_mut().ok_or(InitError::DeviceFailed)?;
    let result = f(&mut net.sockets, &mut net.stack);
    poll_now(net);
    crate::sched::remember_net_progress(PROGRESS.load(Ordering::Relaxed));
    Ok(result)
}

/// Like [`with_sockets`] for calls that send nothing (reading state, accepting,
/// receiving): no egress pass.
pub fn query_sockets<R>(
    f: impl FnOnce(&mut SocketTable, &mut Stack<Device>) -> R,
) -> Result<R, InitError> {
    init()?;
    let mut guard = NET.lock();
    let net = guard.as_mut().ok_or(InitError::DeviceFailed)?;
    let result = f(&mut net.sockets, &mut net.stack);
    crate::sched::remember_net_progress(PROGRESS.load(Ordering::Relaxed));
    Ok(result)
}

/// Asks for a stack poll at the idle loop's next wake: after a receive took data, so a
/// window update goes out even if the app sends nothing. An echo's receive-then-send thus
/// costs one egress pass, not two.
pub fn poll_soon() {
    if let Some(net) = NET.lock().as_mut() {
        set_next_poll(net, 0);
    }
}

/// Sends what the sockets queued and re-arms the stack's next poll.
fn poll_now(net: &mut Net) {
    let now_ns = timer::now_ns();
    net.stack.poll_egress(instant(now_ns));
    net.sockets.update(&mut net.stack);
    note_progress(net);
    // Timers the operation started (retransmission, say) count from now. Never later than
    // already asked for: `service` may have left frames waiting (its budget ran out, or the
    // VF's vectors are still masked), and their interrupt has already been taken.
    let due = net.stack.poll_at(instant(now_ns)).map_or(u64::MAX, |t| {
        instant_ns(t).max(now_ns.saturating_add(MIN_REPOLL_NS))
    });
    let next = net.next_poll.min(due);
    set_next_poll(net, next);
}

fn set_next_poll(net: &mut Net, at: u64) {
    net.next_poll = at;
    NEXT_POLL.store(at, Ordering::Relaxed);
}

/// When the stack next wants [`service`] (monotonic ns; `u64::MAX`: not before an event).
pub fn next_poll_ns() -> u64 {
    NEXT_POLL.load(Ordering::Relaxed)
}

/// Publishes the stack's count of socket events: only a pass that worked on a socket wakes
/// the threads blocked on the network (a ping, an ARP or an agent step wakes nobody).
fn note_progress(net: &Net) {
    PROGRESS.store(net.stack.socket_events(), Ordering::Relaxed);
}

/// Socket events so far (see `netstack::Stack::socket_events`): the idle thread wakes
/// threads blocked on the network when it moves.
pub fn progress() -> u64 {
    PROGRESS.load(Ordering::Relaxed)
}

/// Whether the network is up (socket calls on a machine without one fail fast).
pub fn is_up() -> bool {
    STATE.load(Ordering::Relaxed) == UP
}

/// Halts until the stack has worked on a socket (something may have changed for a blocked
/// socket call) or until monotonic time `deadline_ns`; `false` on timeout.
pub fn wait_for_progress(deadline_ns: Option<u64>) -> bool {
    // With threads, from what the thread's last socket call saw: the network may have moved
    // since (the idle thread, or another thread's call), and that must not be missed.
    let seen =
        crate::sched::net_progress_seen().unwrap_or_else(|| PROGRESS.load(Ordering::Relaxed));
    timer::idle(deadline_ns, || PROGRESS.load(Ordering::Relaxed) != seen)
}
