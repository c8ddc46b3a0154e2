//! What the home agent and a network-paging edge share: the registration socket and its
//! checks' inputs (keys, our addresses, the binding list), the state file and the events.
//! Each agent carries out an accepted registration its own way (a tunnel route, an
//! nftables swap); taking Requests in, answering them, saving and reporting is done here.

use super::binding::BindingList;
use super::registration::{self, Decision, Outcome};
use super::state;
use crate::events::EventMonitor;
use mip::KeyTable;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::SystemTime;

/// Requests taken per wake-up at most, so the other work of the loop is not starved.
pub(super) const BATCH: usize = 32;

/// An agent's registration front end.
pub(super) struct Front {
    /// The security associations.
    pub keys: KeyTable,
    /// Our addresses (the Home Agent field must name one).
    pub ours: Vec<Ipv4Addr>,
    /// The bindings.
    pub bindings: BindingList,
    /// Where Requests arrive and Replies leave.
    pub udp: UdpSocket,
    /// Where the bindings are saved, if anywhere.
    pub state: Option<PathBuf>,
    /// The event monitor.
    pub events: EventMonitor,
    /// The agent, as logs name it ("home agent", "nat edge").
    pub who: &'static str,
    /// Its events' source.
    pub source: &'static str,
    /// What its events call the bound address ("care-of", "location").
    pub place: &'static str,
}

impl Front {
    /// Writes an event about `home` bound to `at` with `more` properties.
    pub fn event(&self, name: &str, home: Ipv4Addr, at: Ipv4Addr, more: &[(&str, String)]) {
        let mut props = vec![("home", home.to_string()), (self.place, at.to_string())];
        props.extend(more.iter().map(|(k, v)| (*k, v.clone())));
        self.events.emit(self.source, name, &props);
    }

    /// Rewrites the state file, if there is one. A failure is logged: the bindings in
    /// memory stay right, and the next change tries again.
    pub fn persist(&self) {
        if let Some(path) = &self.state
            && let Err(e) = state::save(&self.bindings, path)
        {
            log::error!("{}: cannot save the bindings: {e}", self.who);
        }
    }

    /// The next Request waiting on the socket, checked (`None`: none waits).
    pub fn next_request(&self) -> Option<(Decision, SocketAddr)> {
        let mut buf = [0u8; 2048];
        let (n, from) = match self.udp.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) => {
                log::warn!("{}: receiving a registration: {e}", self.who);
                return None;
            }
        };
        let decision = registration::decide(
            &buf[..n],
            &self.keys,
            &self.ours,
            &self.bindings,
            SystemTime::now(),
        );
        Some((decision, from))
    }

    /// Sends `decision`'s Reply (if it has one) to `from`.
    pub fn reply(&self, decision: &Decision, from: SocketAddr) {
        if let Some(reply) = decision.reply_bytes()
            && let Err(e) = self.udp.send_to(&reply, from)
        {
            log::warn!("{}: replying to {from}: {e}", self.who);
        }
    }

    /// Logs and reports a refused registration.
    pub fn denied(&self, decision: &Decision, from: SocketAddr) {
        let Outcome::Denied {
            code,
            home,
            care_of,
            reason,
        } = &decision.outcome
        else {
            return;
        };
        log::warn!(
            "{}: denied a registration from {from} with code {}: {reason}",
            self.who,
            code.to_u8()
        );
        let unknown = || "-".to_owned();
        self.events.emit(
            self.source,
            "registration-denied",
            &[
                ("code", code.to_u8().to_string()),
                ("home", home.map_or_else(unknown, |a| a.to_string())),
                (self.place, care_of.map_or_else(unknown, |a| a.to_string())),
                ("reason", reason.clone()),
            ],
        );
    }
}
