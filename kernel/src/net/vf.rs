//! The VF's life cycle: bring-up on the PCI bus, the watchdog, removal and re-plug.
//!
//! A VF can vanish at any moment (the operator unplugs it, or a real PF goes away): it then
//! cannot interrupt, so a watchdog looks at it every [`WATCH_NS`] (three register reads:
//! VFSTATUS, the mailbox, VFLINKS). Once it is gone the failover device carries traffic on
//! virtio-net, and the watchdog instead reads the slot's IDs every [`REPROBE_NS`]; when a VF
//! answers there again it is brought up afresh and handed back to the failover device.
//!
//! Around a move the agent drives it instead, one step per network pass ([`Phase`]):
//! [`Watch::release`] (PREPARE) lets frames on their way in arrive, then resets the VF and
//! parks the driver, and the watchdog then leaves the slot alone (the source's VF must stay
//! unused during the move); [`Watch::reattach`] (RESUMED) looks at the VF's last slot, and
//! scans the whole bus only when it is not there (the destination may have its VF at another
//! slot or none), and brings up what it finds on the parked driver's rings and buffers. The
//! watchdog stays off while either is under way.
//! Those are allocated once, at boot: clearing 132 KiB of fresh DMA memory costs ~6 ms of
//! emulated guest code here, all of it time the network would not be served.

use super::{Device, InitError, Stack, map_bars};
use crate::arch::{apic, pci::PortConfig};
use crate::hal::{KernelDma, KernelHal};
use crate::timer;
use drivers::hal::Mmio;
use drivers::ixgbevf::pci::{self as vf_pci, InterruptRequest};
use drivers::ixgbevf::{self, Ixgbevf};
use drivers::net::{MacAddress, NetDevice};
use drivers::pci::{self, Bdf, ConfigAccess, bar};
use migration_client::agent::Step;

/// How long PREPARE keeps taking frames from the VF after the switch to virtio-net.
const DRAIN_NS: u64 = 3_000_000;

/// The VF as the kernel runs it.
pub type Vf = Ixgbevf<Mmio, KernelDma>;

/// How often a present VF is checked (removal, missed link messages).
const WATCH_NS: u64 = 100_000_000;
/// How often an unplugged VF's slot is looked at.
const REPROBE_NS: u64 = 500_000_000;

/// Who looks after the VF now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The watchdog (and its re-probe once the VF is gone).
    Watching,
    /// PREPARE: traffic is on virtio-net; frames already on their way to the VF are taken
    /// in by the network passes until `until`, then it is released.
    Draining { until: u64 },
    /// Released for a move: neither watched nor re-probed until RESUMED.
    Released,
    /// Bringing a VF back since `started`, one stage per network pass: for RESUMED
    /// (`agent`: the agent steps it), or after a re-plug (the watchdog does).
    Attaching {
        started: u64,
        stage: Attach,
        agent: bool,
    },
}

/// RESUMED's stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attach {
    /// Is the VF in use still there?
    Check,
    /// Where is a VF: its last slot, else the bus.
    Find,
    /// Bring up the VF found here.
    BringUp(Bdf),
    /// The parked driver's bring-up on it, one stage per step ([`Ixgbevf::step`]).
    Driver,
}

/// The VF's slot and when to look at it next.
#[derive(Debug)]
pub struct Watch {
    /// Where the VF was last found (`None`: there never was one).
    bdf: Option<Bdf>,
    next: u64,
    phase: Phase,
    /// The driver of a VF that was released or went away: stopped, its rings and buffers
    /// kept for the next VF ([`Ixgbevf::attach`]).
    parked: Option<Vf>,
    /// The BARs of the VF at `bdf` as its last bring-up sized and mapped them: a VF that
    /// comes back with the same addresses is not sized again (each sizing flips the
    /// function's decoding off and on, exits to the VMM several times per BAR, and was
    /// measured at ~14 ms of a re-attach here).
    bars: Option<Bars>,
}

/// A function's BARs as [`map_bars`] found them.
pub type Bars = [Option<bar::Bar>; bar::BAR_COUNT as usize];

impl Watch {
    /// Watches the VF at `bdf`, if there is one (brought up with `bars`).
    pub fn new(bdf: Option<Bdf>, bars: Option<Bars>, now_ns: u64) -> Watch {
        Watch {
            bars,
            bdf,
            next: now_ns.saturating_add(WATCH_NS),
            phase: Phase::Watching,
            parked: None,
        }
    }

    /// One step of PREPARE's release (traffic is on virtio-net already). First step: frames
    /// already on their way to the VF (sent before the switch's gratuitous ARP reached the
    /// bridge) are let in for [`DRAIN_NS`] by the network passes; their answers leave on
    /// virtio-net. Measured: without this a ping every 10 ms lost one request in about one
    /// move of three. Last step: bus mastering off (no DMA can follow, even from a
    /// misbehaving device), the driver masks its interrupts and resets the VF and is parked
    /// with its rings; the failover device has no VF and the watchdog does not bring it
    /// back. Done with whether a VF was in use.
    pub fn release(&mut self, stack: &mut Stack<Device>, now_ns: u64) -> Step<bool> {
        match self.phase {
            Phase::Draining { until } if now_ns < until => return Step::Pending,
            Phase::Draining { .. } => {}
            _ if stack.device_mut().vf_mut().is_none() => {
                // A re-plugged VF still coming up (the watchdog's bring-up) stops here too:
                // the source's VF must do nothing during the move.
                if let Some(vf) = self.parked.as_mut().filter(|vf| vf.bringing_up()) {
                    vf.detach();
                    log::debug!("net: the VF's bring-up stopped for a move");
                }
                self.phase = Phase::Released;
                return Step::Done(false);
            }
            _ => {
                self.phase = Phase::Draining {
                    until: now_ns.saturating_add(DRAIN_NS),
                };
                return Step::Pending;
            }
        }
        self.phase = Phase::Released;
        let Some(mut vf) = stack.take_vf() else {
            return Step::Done(false);
        };
        if let Some(bdf) = self.bdf
            && !vf.is_removed()
        {
            let mut access = PortConfig;
            let command = pci::command(&access, bdf);
            pci::set_command(&mut access, bdf, command & !pci::COMMAND_BUS_MASTER);
        }
        vf.detach();
        self.parked = Some(vf);
        log::debug!(
            "net: VF at {} released for a move; traffic on {}",
            DisplaySlot(self.bdf),
            stack
                .device()
                .active()
                .map_or("no NIC", agent_proto::Nic::name)
        );
        Step::Done(true)
    }

    /// One step of RESUMED: keeps a VF in use that still answers; otherwise looks for one
    /// (its last slot first, then the bus) and brings it up with the failover device's MAC.
    /// Done: lifts the virtio-net pin PREPARE set, so traffic returns to the VF now if its
    /// link is up, or when it comes up; the result says whether a VF is in use.
    pub fn reattach(&mut self, stack: &mut Stack<Device>, now_ns: u64) -> Step<bool> {
        let (started, stage, agent) = match self.phase {
            Phase::Attaching {
                started,
                stage,
                agent,
            } => (started, stage, agent),
            _ => (now_ns, Attach::Check, true),
        };
        let next = match stage {
            Attach::Check => {
                let answers = stack
                    .device_mut()
                    .vf_mut()
                    .map(|vf| !vf.service().removed && !vf.is_removed());
                match answers {
                    Some(true) => return self.attached(stack, true, started, now_ns),
                    Some(false) => self.parked = stack.take_vf(),
                    None => {}
                }
                Attach::Find
            }
            Attach::Find => {
                let access = PortConfig;
                // Its last slot first (one read, and where host-vmm puts it back); the whole
                // bus only when the VF is not there (another machine may place it elsewhere).
                let found = self.bdf.filter(|&bdf| is_vf(&access, bdf)).or_else(|| {
                    pci::enumerate(&access)
                        .iter()
                        .find(|f| vf_pci::matches(f))
                        .map(|f| f.bdf)
                });
                let Some(bdf) = found else {
                    log::info!("net: no VF on this machine; traffic stays on virtio-net");
                    return self.attached(stack, false, started, now_ns);
                };
                if Some(bdf) != self.bdf {
                    log::info!(
                        "net: the VF is now at {bdf} (was {})",
                        DisplaySlot(self.bdf)
                    );
                    self.bars = None;
                }
                self.bdf = Some(bdf);
                Attach::BringUp(bdf)
            }
            Attach::BringUp(bdf) if self.parked.is_none() => {
                // No driver to reuse (no VF since boot): a fresh one, rings allocated and
                // cleared, in one go.
                let mut access = PortConfig;
                let mac = stack.device().mac_address();
                let vf = bring_up(
                    &mut access,
                    bdf,
                    Some(mac),
                    apic::id(),
                    &mut self.parked,
                    &mut self.bars,
                );
                let present = vf.is_some();
                if present {
                    stack.set_vf(vf);
                }
                return self.attached(stack, present, started, now_ns);
            }
            Attach::BringUp(bdf) => {
                let mut access = PortConfig;
                match (
                    open(&mut access, bdf, apic::id(), &mut self.bars),
                    &mut self.parked,
                ) {
                    (Ok(registers), Some(vf)) => vf.begin_attach(registers),
                    (Err(e), _) => {
                        log::error!("net: VF at {bdf}: {e}");
                        return self.attached(stack, false, started, now_ns);
                    }
                    (Ok(_), None) => return self.attached(stack, false, started, now_ns),
                }
                Attach::Driver
            }
            Attach::Driver => {
                let Some(vf) = self.parked.as_mut() else {
                    return self.attached(stack, false, started, now_ns);
                };
                match vf.step(now_ns) {
                    ixgbevf::Progress::Ready | ixgbevf::Progress::Waiting { .. } => Attach::Driver,
                    ixgbevf::Progress::Done(Ok(())) => {
                        check_mac(Some(stack.device().mac_address()), vf);
                        stack.set_vf(self.parked.take());
                        return self.attached(stack, true, started, now_ns);
                    }
                    ixgbevf::Progress::Done(Err(e)) => {
                        // Stopped again: nothing of a half brought-up VF may run.
                        vf.detach();
                        log::error!("net: VF at {}: {e}", DisplaySlot(self.bdf));
                        return self.attached(stack, false, started, now_ns);
                    }
                }
            }
        };
        self.phase = Phase::Attaching {
            started,
            stage: next,
            agent,
        };
        Step::Pending
    }

    /// RESUMED's end: the watchdog takes over again and traffic may return to the VF.
    fn attached(
        &mut self,
        stack: &mut Stack<Device>,
        present: bool,
        started: u64,
        now_ns: u64,
    ) -> Step<bool> {
        self.phase = Phase::Watching;
        self.next = now_ns.saturating_add(WATCH_NS);
        if let Some(switched) = stack.unpin_virtio() {
            log::debug!("net: traffic now on {} (VF back)", switched.to);
        }
        log::debug!(
            "control: VF re-attach took {} us, the network served between its steps",
            timer::now_ns().saturating_sub(started) / 1000
        );
        Step::Done(present)
    }

    /// When the release or re-attach under way wants its next step: at the drain's end, or
    /// at the next pass.
    pub fn step_due(&self, now_ns: u64) -> u64 {
        match self.phase {
            Phase::Draining { until } => until,
            _ => now_ns,
        }
    }

    /// When [`Watch::service`] next has work even without an interrupt.
    pub fn next_check(&self) -> u64 {
        if let Phase::Attaching { agent: false, .. } = self.phase {
            // A re-plugged VF coming up: its next stage at the next pass.
            return 0;
        }
        if self.bdf.is_some() && self.phase == Phase::Watching {
            self.next
        } else {
            u64::MAX
        }
    }

    /// Handles the VF's "other" interrupt (`signalled`) and the watchdog when it is due.
    /// Returns whether a link may have changed (the caller re-checks the failover).
    pub fn service(&mut self, stack: &mut Stack<Device>, signalled: bool, now_ns: u64) -> bool {
        let Some(bdf) = self.bdf else {
            return false;
        };
        if let Phase::Attaching { agent: false, .. } = self.phase {
            return self.reattach(stack, now_ns) != Step::Pending;
        }
        if self.phase != Phase::Watching || (!signalled && now_ns < self.next) {
            return false;
        }
        let Some(vf) = stack.device_mut().vf_mut() else {
            self.next = now_ns.saturating_add(REPROBE_NS);
            return self.replug(stack, bdf, now_ns);
        };
        self.next = now_ns.saturating_add(WATCH_NS);
        if !vf.bringing_up() {
            // (Not during a bring-up: its mailbox exchange reads the same signals.)
            let events = vf.service();
            if events.removed || vf.is_removed() {
                // It never touches the device again; its rings wait for the VF's return.
                self.parked = stack.take_vf();
                log::warn!("net: the VF at {bdf} is gone; traffic stays on virtio-net");
                return true;
            }
            if !events.reset_needed {
                return events.link_changed;
            }
            // The PF reset it (or asked for a reset): the bring-up again, in steps between
            // network passes like RESUMED's; the VF carries nothing meanwhile.
            if vf.begin_reinit().is_err() {
                return true;
            }
        }
        match vf.step(now_ns) {
            ixgbevf::Progress::Ready | ixgbevf::Progress::Waiting { .. } => {
                self.next = now_ns;
                false
            }
            ixgbevf::Progress::Done(Ok(())) => true,
            ixgbevf::Progress::Done(Err(e)) => {
                // It asks again (`reset_needed`) at the next look.
                log::warn!("net: the VF did not come back from its reset: {e}");
                true
            }
        }
    }

    /// Brings the VF back if its slot answers again: the same stages as RESUMED's, stepped
    /// by the watchdog.
    fn replug(&mut self, stack: &mut Stack<Device>, bdf: Bdf, now_ns: u64) -> bool {
        if !is_vf(&PortConfig, bdf) {
            return false;
        }
        log::info!("net: the VF at {bdf} is back");
        self.phase = Phase::Attaching {
            started: now_ns,
            stage: Attach::BringUp(bdf),
            agent: false,
        };
        self.reattach(stack, now_ns) != Step::Pending
    }
}

/// Whether an 82599 VF answers at `bdf`.
fn is_vf(access: &PortConfig, bdf: Bdf) -> bool {
    let ids = access.read32(bdf, pci::VENDOR_DEVICE);
    ids as u16 == ixgbevf_regs::VENDOR_ID && (ids >> 16) as u16 == ixgbevf_regs::DEVICE_ID_82599_VF
}

/// A slot that may be unknown, for logs.
struct DisplaySlot(Option<Bdf>);

impl core::fmt::Display for DisplaySlot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(bdf) => write!(f, "{bdf}"),
            None => f.write_str("no slot"),
        }
    }
}

/// Brings up the VF at `bdf` with MAC `mac` (the failover device's; `None` keeps the one the
/// PF assigned) and its two MSI-X vectors on this CPU: on the `parked` driver's rings if
/// there is one (taken on success, left parked and stopped on failure), else on new ones.
/// `bars`: what the last bring-up at `bdf` found, reused if the BARs still hold those
/// addresses, else sized and mapped again (and recorded). Failures are logged: the network
/// then runs without the VF.
pub fn bring_up(
    access: &mut PortConfig,
    bdf: Bdf,
    mac: Option<MacAddress>,
    apic_id: u8,
    parked: &mut Option<Vf>,
    bars: &mut Option<Bars>,
) -> Option<Vf> {
    match try_bring_up(access, bdf, mac, apic_id, parked, bars) {
        Ok(vf) => Some(vf),
        Err(e) => {
            log::error!("net: VF at {bdf}: {e}");
            None
        }
    }
}

/// Why the VF could not be brought up.
enum VfError {
    Map(InitError),
    Driver(ixgbevf::Error),
}

impl core::fmt::Display for VfError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VfError::Map(e) => write!(f, "{e}"),
            VfError::Driver(e) => write!(f, "{e}"),
        }
    }
}

fn try_bring_up(
    access: &mut PortConfig,
    bdf: Bdf,
    mac: Option<MacAddress>,
    apic_id: u8,
    parked: &mut Option<Vf>,
    known: &mut Option<Bars>,
) -> Result<Vf, VfError> {
    let registers = open(access, bdf, apic_id, known)?;
    let vf = match parked {
        Some(vf) => {
            if let Err(e) = vf.attach(registers, &mut spin_us) {
                // Stopped again: nothing of a half brought-up VF may run.
                vf.detach();
                return Err(VfError::Driver(e));
            }
            parked
                .take()
                .ok_or(VfError::Driver(ixgbevf::Error::Removed))?
        }
        None => {
            let config = ixgbevf::Config { mac };
            Ixgbevf::new(registers, KernelDma, &mut spin_us, config).map_err(VfError::Driver)?
        }
    };
    check_mac(mac, &vf);
    Ok(vf)
}

/// The VF function at `bdf` made ready for its driver: BARs mapped (`known`: what the last
/// bring-up there found, reused if the BARs kept those addresses, else sized and recorded),
/// IDs checked, MSI-X on this CPU's vectors. Returns its register window.
fn open(
    access: &mut PortConfig,
    bdf: Bdf,
    apic_id: u8,
    known: &mut Option<Bars>,
) -> Result<Mmio, VfError> {
    log::debug!("net: 82599 VF at {bdf}");
    // Sized once: the mapping reads them, the probe takes what it read; a VF brought up
    // again with the same addresses (mapped already) is not sized at all.
    let bars = match known.filter(|b| bar::unchanged(access, bdf, b)) {
        Some(bars) => bars,
        None => map_bars(access, bdf).map_err(VfError::Map)?,
    };
    *known = Some(bars);
    let function = vf_pci::probe_sized(access, bdf, &bars).map_err(VfError::Driver)?;
    let irq = InterruptRequest {
        apic_id,
        queue_vector: apic::VF_QUEUE_VECTOR,
        other_vector: apic::VF_OTHER_VECTOR,
    };
    let table = drivers::hal::map::<KernelHal>(function.msix_table);
    function
        .enable_msix(access, table, irq)
        .map_err(VfError::Driver)?;
    Ok(drivers::hal::map::<KernelHal>(function.registers))
}

/// Logs a MAC the PF did not let the VF take.
fn check_mac(mac: Option<MacAddress>, vf: &Vf) {
    if mac.is_some_and(|m| m != vf.mac_address()) {
        log::warn!(
            "net: the PF refused MAC {}; the VF keeps {}",
            mac.unwrap_or_default(),
            vf.mac_address()
        );
    }
}

/// Waits `us` microseconds by watching the clock (VF bring-up polls only).
fn spin_us(us: u32) {
    let end = timer::now_ns().saturating_add(u64::from(us) * 1000);
    while timer::now_ns() < end {
        core::hint::spin_loop();
    }
}
