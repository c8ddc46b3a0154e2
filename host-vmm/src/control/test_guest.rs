//! A fake guest for the control tests: a thread on the device end of a console port (the
//! byte interface the virtio-console model serves its queues from) that answers requests,
//! either with the real guest agent over a fake NIC pair, or with whatever bytes a test
//! wants (late, malformed, in pieces).

use crate::devices::virtio::console::{self, DevicePort, HostPort};
use agent_proto::{Decoded, Nic, NicStatus, Request, Status, SwitchError};
use migration_client::agent::{Agent, NicControl, Step};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A port whose device end a test drives.
pub fn pair() -> (HostPort, GuestEnd) {
    let (device, host) = console::port().unwrap();
    (host, GuestEnd { port: device })
}

/// The device end of a port.
pub struct GuestEnd {
    port: DevicePort,
}

/// A running fake guest; stops when dropped.
pub struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl GuestEnd {
    /// Bytes queued for the guest and not taken.
    pub fn unsent(&self) -> usize {
        let mut out = Vec::new();
        self.port.take_for_guest(&mut out)
    }

    /// Answers every request with the chunks `answer(seq, request)` returns (sent with a
    /// short pause between them).
    pub fn answer_with(
        self,
        mut answer: impl FnMut(u16, Request) -> Vec<Vec<u8>> + Send + 'static,
    ) -> Running {
        self.spawn(move |port, buf| {
            loop {
                match agent_proto::decode::<Request>(buf) {
                    Decoded::Incomplete => break,
                    Decoded::Frame { seq, message, len } => {
                        buf.drain(..len);
                        for chunk in answer(seq, message) {
                            port.deliver_from_guest(&chunk);
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                    Decoded::Invalid { skip, .. } => {
                        buf.drain(..skip);
                    }
                }
            }
        })
    }

    /// Sends bytes that are no frame, as fast as it can, until `stop`; returns how many.
    pub fn chatter(self, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
        std::thread::spawn(move || {
            let noise = [b'.'; 4096];
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                self.port.deliver_from_guest(&noise);
                sent += noise.len() as u64;
            }
            sent
        })
    }

    /// Runs the real guest agent over `nics`.
    pub fn run_agent(self, nics: Arc<Mutex<FakeNics>>) -> Running {
        let mut agent = Agent::new();
        self.spawn(move |port, buf| {
            let mut nics = nics.lock().unwrap();
            let mut send = |reply: &[u8]| port.deliver_from_guest(reply);
            // As the kernel does: a job runs to its end before more is read, and no more
            // is read than the agent has room for.
            loop {
                while agent.busy() {
                    agent.advance(&mut *nics, &mut send);
                }
                if buf.is_empty() {
                    break;
                }
                let n = agent.room().min(buf.len());
                agent.on_input(&buf[..n], &mut *nics, &mut send);
                buf.drain(..n);
            }
        })
    }

    fn spawn(
        self,
        mut on_bytes: impl FnMut(&DevicePort, &mut Vec<u8>) + Send + 'static,
    ) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if self.port.take_for_guest(&mut buf) > 0 {
                        on_bytes(&self.port, &mut buf);
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        Running {
            stop,
            thread: Some(thread),
        }
    }
}

/// Two NICs on paper for the real agent: switching needs the NIC present with its link up;
/// `bus_vf` is the VF a PCI scan finds after a move (the destination's).
#[derive(Debug, Default)]
pub struct FakeNics {
    /// What `status` reports (and `switch` changes).
    pub status: Status,
    /// A VF on the bus, and whether its link comes up (`None`: the machine has none).
    pub bus_vf: Option<bool>,
    /// How many times the clock was checked after a move.
    pub moves: u32,
    /// Gratuitous ARPs sent.
    pub announcements: u32,
}

impl FakeNics {
    /// Both NICs present and up, virtio-net active.
    pub fn both_up() -> Arc<Mutex<FakeNics>> {
        let up = NicStatus {
            present: true,
            link_up: true,
            rx: 10,
            tx: 20,
            rx_errors: 0,
            tx_dropped: 0,
        };
        Arc::new(Mutex::new(FakeNics {
            status: Status {
                active: Some(Nic::Virtio),
                vf: up,
                virtio: up,
                switches: 0,
            },
            bus_vf: Some(true),
            ..FakeNics::default()
        }))
    }
}

impl NicControl for FakeNics {
    fn switch(&mut self, nic: Nic) -> Result<(), SwitchError> {
        let s = match nic {
            Nic::Vf => self.status.vf,
            Nic::Virtio => self.status.virtio,
        };
        if !s.present {
            return Err(SwitchError::NotPresent);
        }
        if !s.link_up {
            return Err(SwitchError::LinkDown);
        }
        if self.status.active != Some(nic) {
            self.status.active = Some(nic);
            self.status.switches += 1;
        }
        Ok(())
    }

    fn status(&self) -> Status {
        self.status
    }

    fn release_vf(&mut self) -> Step<bool> {
        let had = self.status.vf.present;
        self.status.vf.present = false;
        self.status.vf.link_up = false;
        Step::Done(had)
    }

    fn after_move(&mut self) {
        self.moves += 1;
    }

    fn reattach_vf(&mut self) -> Step<bool> {
        if !self.status.vf.present
            && let Some(link_up) = self.bus_vf
        {
            self.status.vf.present = true;
            self.status.vf.link_up = link_up;
        }
        Step::Done(self.status.vf.present)
    }

    fn announce(&mut self) -> bool {
        self.announcements += 1;
        self.status.active.is_some()
    }
}
