//! The control channel to host-vmm: a virtio-console whose bytes go to migration-client's
//! agent, which carries out the operator's requests (switch NIC, status) and a move's
//! PREPARE / RESUMED on the failover device, the VF's life cycle ([`super::vf::Watch`]) and
//! the clock, and answers on the same channel.
//!
//! Bytes arrive with an interrupt on [`apic::CONTROL_VECTOR`]; [`Control::service`] runs from
//! the network's idle-loop work, so a request is handled between two stack polls and never
//! in the middle of one. PREPARE and RESUMED wait on the VF (a drain, its bring-up): the
//! agent takes one step of them per pass ([`Control::next_step`] says when), and the network
//! is served in between. Every pass that did agent work is timed; SERVICE reports the
//! longest.
//!
//! Test knobs (`agent.test=` on the command line, docs/boot-abi.md; production guests set
//! none): `refuse-prepare` and `stall-prepare` make the agent refuse or never answer
//! PREPARE ([`OnPrepare`]); `chatter` makes the guest send bytes that are no frame on every
//! pass and come back at once ([`Control::chatters`]), a guest flooding its channel.

use super::{Device, Stack, vf};
use crate::arch::{apic, bootmem, pci::PortConfig};
use crate::cmdline;
use crate::hal::KernelHal;
use agent_proto::{Nic, Status, SwitchError};
use drivers::pci;
use drivers::virtio_console::{self, Console};
use drivers::virtio_net::{Interrupt, InterruptRequest};
use migration_client::agent::{Agent, NicControl, OnPrepare, Step};

/// Bytes the `chatter` knob sends per pass: no frame magic (`F7 52`) in them.
const CHATTER: &[u8; 64] = b"chatter chatter chatter chatter chatter chatter chatter chatter\n";
/// Copies of [`CHATTER`] per pass.
const CHATTER_REPEAT: usize = 16;

/// The channel and the agent behind it.
pub struct Control {
    console: Console<KernelHal>,
    agent: Agent,
    chatter: bool,
}

/// The agent and the chatter the command line's test knobs ask for.
fn from_knobs() -> (Agent, bool) {
    let text = core::str::from_utf8(bootmem::cmdline()).unwrap_or("");
    let knobs = cmdline::agent_test(text);
    if let Some(unknown) = knobs.unknown {
        log::warn!("control: agent.test: unknown knob `{unknown}` ignored");
    }
    let on_prepare = if knobs.stall_prepare {
        OnPrepare::Stall
    } else if knobs.refuse_prepare {
        OnPrepare::Refuse
    } else {
        OnPrepare::Obey
    };
    if on_prepare != OnPrepare::Obey || knobs.chatter {
        log::warn!(
            "control: test knobs: PREPARE {on_prepare:?}, chatter {}",
            knobs.chatter
        );
    }
    (Agent::with_prepare(on_prepare), knobs.chatter)
}

/// Brings up the first virtio-console on the bus, if any, with MSI-X on this CPU.
pub fn bring_up(
    access: &mut PortConfig,
    functions: &[pci::Function],
    apic_id: u8,
) -> Option<Control> {
    let f = functions.iter().find(|f| virtio_console::matches(f))?;
    let bars = match super::map_bars(access, f.bdf) {
        Ok(bars) => bars,
        Err(e) => {
            log::error!("control: virtio-console at {}: {e}", f.bdf);
            return None;
        }
    };
    let irq = InterruptRequest {
        apic_id,
        queue_vector: apic::CONTROL_VECTOR,
        config_vector: apic::CONTROL_VECTOR,
    };
    match Console::probe(access, f.bdf, &bars, irq) {
        Ok(console) if matches!(console.interrupt(), Interrupt::Msix { .. }) => {
            log::info!("control: virtio-console at {}", f.bdf);
            let (agent, chatter) = from_knobs();
            Some(Control {
                console,
                agent,
                chatter,
            })
        }
        Ok(_) => {
            // INTx would need a second IOAPIC route and acknowledgement for a channel that
            // carries a handful of requests; host-vmm always offers MSI-X.
            log::warn!(
                "control: virtio-console at {} has no MSI-X; not used",
                f.bdf
            );
            None
        }
        Err(e) => {
            log::error!("control: virtio-console at {}: {e}", f.bdf);
            None
        }
    }
}

impl Control {
    /// Whether the `chatter` knob is on: the network comes back at once after each pass.
    pub fn chatters(&self) -> bool {
        self.chatter
    }

    /// Takes one step of the request under way, or reads what host-vmm sent and answers
    /// every complete request (then chatters, if the knob says so).
    pub fn service(&mut self, stack: &mut Stack<Device>, vf: &mut vf::Watch) {
        let start = crate::timer::now_ns();
        if self.answer(stack, vf) {
            let took = crate::timer::now_ns().saturating_sub(start);
            self.agent.record_step(took);
            log::debug!(
                "control: agent step took {} us{}",
                took / 1000,
                if self.agent.busy() {
                    " (more to come)"
                } else {
                    ""
                }
            );
        }
        if self.chatter {
            for _ in 0..CHATTER_REPEAT {
                if self.console.send(CHATTER).is_err() {
                    break;
                }
            }
        }
    }

    /// When the request under way wants its next step (monotonic ns), if one is.
    pub fn next_step(&self, vf: &vf::Watch, now_ns: u64) -> Option<u64> {
        self.agent.busy().then(|| vf.step_due(now_ns))
    }

    /// One step of the job under way, else what the channel has: whether the agent did
    /// any work.
    fn answer(&mut self, stack: &mut Stack<Device>, vf: &mut vf::Watch) -> bool {
        let mut nics = Nics { stack, vf };
        if self.agent.busy() {
            // Requests that came meanwhile wait in the channel: one step per pass.
            self.agent
                .advance(&mut nics, &mut sender(&mut self.console));
            return true;
        }
        let mut bytes = [0u8; agent_proto::MAX_FRAME];
        let mut worked = false;
        while !self.agent.busy() {
            let room = self.agent.room();
            let n = match self.console.recv(&mut bytes[..room]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    log::warn!("control: receive failed: {e}");
                    break;
                }
            };
            worked = true;
            self.agent
                .on_input(&bytes[..n], &mut nics, &mut sender(&mut self.console));
        }
        if self.agent.busy() {
            // The job's first step in the same pass: usually its only one.
            self.agent
                .advance(&mut nics, &mut sender(&mut self.console));
        }
        worked
    }
}

/// Sends the agent's replies on the channel; a reply that cannot go is logged.
fn sender(console: &mut Console<KernelHal>) -> impl FnMut(&[u8]) + '_ {
    |reply: &[u8]| {
        if let Err(e) = console.send(reply) {
            log::warn!("control: reply lost: {e}");
        }
    }
}

/// The failover device, the VF's life cycle and the clock, as the agent sees them.
struct Nics<'a> {
    stack: &'a mut Stack<Device>,
    vf: &'a mut vf::Watch,
}

impl NicControl for Nics<'_> {
    fn switch(&mut self, nic: Nic) -> Result<(), SwitchError> {
        let switched = self.stack.switch_nic(nic)?;
        // The failover device logs a change of NIC itself; a line costs milliseconds of
        // emulated serial output here, inside the agent's step.
        log::debug!("control: traffic now on {nic} (from {:?})", switched.from);
        Ok(())
    }

    fn status(&self) -> Status {
        let device = self.stack.device();
        Status {
            active: device.active(),
            vf: device.counters(Nic::Vf),
            virtio: device.counters(Nic::Virtio),
            switches: device.switches(),
        }
    }

    fn release_vf(&mut self) -> Step<bool> {
        self.vf.release(self.stack, crate::timer::now_ns())
    }

    fn after_move(&mut self) {
        crate::timer::after_move();
    }

    fn reattach_vf(&mut self) -> Step<bool> {
        self.vf.reattach(self.stack, crate::timer::now_ns())
    }

    fn announcements(&self) -> u64 {
        self.stack.announcements()
    }

    fn announce(&mut self) -> bool {
        let sent = self.stack.announce();
        if sent {
            log::debug!(
                "control: announced {} after the move",
                self.stack.config().address.address()
            );
        } else {
            log::warn!("control: no transmit buffer for the gratuitous ARP after the move");
        }
        sent
    }
}
