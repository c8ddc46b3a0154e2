//! What the home agent answers a datagram on UDP port 434 (RFC 5944 §3.8), decided without
//! any I/O: [`decide`] reads the binding list and returns the Reply and what should change.
//! The messages, their authentication and the timestamp check are the `mip` crate's.
//!
//! Checks, in this order; the first that fails decides, and a refusal changes nothing:
//!
//! | check | code | Reply signed |
//! |---|---|---|
//! | not a Request (Type ≠ 1), shorter than the fixed 24 bytes, or an unknown non-skippable extension (RFC 5944 §1.9: silently discarded) | none | — |
//! | poorly formed: broken extensions, an MHAE not last, a home address that is not unicast, a care-of address that cannot be one (unspecified, loopback, multicast, broadcast, ours, or the home address with a non-zero lifetime) | 134 | no |
//! | no MHAE, an SPI the key file does not give for this home address, a wrong authenticator | 131 | no |
//! | Identification outside the SA's skew of our clock, or not above the last accepted | 133, Identification = our clock's seconds + the Request's low 32 bits | yes |
//! | Home Agent field not one of our addresses | 136, Home Agent = the `--listen` address | yes |
//! | minimal (M) or GRE (G) encapsulation asked for | 139 | yes |
//! | accepted: lifetime 0 deregisters, else binds (capped at 600 s) | 0, or 1 when S was set | yes |
//!
//! A denial to a Request that did not authenticate carries no MHAE: signing a Reply whose
//! Identification an unauthenticated sender chose would hand out authenticated denials
//! that could be replayed at the real mobile node. Nothing is answered to datagrams too
//! short to carry a home address and Identification (a Reply could not be matched, and
//! answering would make the home agent a reflector).
//!
//! S (simultaneous bindings) is not supported: such a Request is accepted as if S were 0
//! (the new binding replaces the old) and answered with code 1, as RFC 5944 §3.8.3 allows.
//! B (broadcasts) is accepted and not acted on: no broadcast is tunnelled. D and T are
//! supported: the care-of address may be co-located (D) or not, packets go to it either
//! way; with T, reverse-tunnelled packets from it are forwarded.

use super::binding::{Binding, BindingList};
use mip::{
    DecodeError, KeyTable, REQUEST_LEN, REQUEST_TYPE, RegistrationReply, RegistrationRequest,
    ReplyCode, SecurityAssociation,
};
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

/// What a datagram leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Dropped without an answer.
    Ignored {
        /// Why, for the log.
        reason: String,
    },
    /// Refused: nothing changes.
    Denied {
        /// The Reply's code.
        code: ReplyCode,
        /// The home address, when the fixed part could be read.
        home: Option<Ipv4Addr>,
        /// The care-of address, when the fixed part could be read.
        care_of: Option<Ipv4Addr>,
        /// Why, for the log and the event.
        reason: String,
    },
    /// Bind `binding.home` to `binding.care_of`, replacing its binding.
    Register {
        /// The new binding (lifetime granted, deadline from now).
        binding: Binding,
        /// 0, or 1 when simultaneous bindings were asked for.
        code: ReplyCode,
    },
    /// A deregistration: remove the binding of `home` at `care_of` (all of them when
    /// `care_of == home`), and accept `identification`.
    Deregister {
        /// The home address.
        home: Ipv4Addr,
        /// The care-of address it leaves (the home address when it is back home).
        care_of: Ipv4Addr,
        /// The Request's Identification (the new high-water mark).
        identification: u64,
    },
}

/// The answer to one datagram: what to change, and the Reply to send (if any), signed with
/// `sa` when the Request authenticated.
#[derive(Clone, Debug)]
pub struct Decision {
    /// What should change.
    pub outcome: Outcome,
    /// The Reply, not signed yet.
    pub reply: Option<RegistrationReply>,
    /// The security association that authenticated the Request.
    pub sa: Option<SecurityAssociation>,
}

impl Decision {
    fn ignored(reason: impl Into<String>) -> Decision {
        Decision {
            outcome: Outcome::Ignored {
                reason: reason.into(),
            },
            reply: None,
            sa: None,
        }
    }

    /// A refusal of `request` with `code`, the Reply signed with `sa` if given.
    fn denied(
        request: &RegistrationRequest,
        code: ReplyCode,
        sa: Option<&SecurityAssociation>,
        reason: impl Into<String>,
    ) -> Decision {
        Decision {
            outcome: Outcome::Denied {
                code,
                home: Some(request.home_address),
                care_of: Some(request.care_of),
                reason: reason.into(),
            },
            reply: Some(RegistrationReply::for_request(request, code, 0)),
            sa: sa.cloned(),
        }
    }

    /// Turns an accepted registration into a refusal with `code` (the home agent could not
    /// carry it out): the Reply keeps its signature, says `code` and grants nothing.
    pub fn fail(&mut self, code: ReplyCode, reason: impl Into<String>) {
        let (home, care_of) = match &self.outcome {
            Outcome::Register { binding, .. } => (Some(binding.home), Some(binding.care_of)),
            Outcome::Deregister { home, care_of, .. } => (Some(*home), Some(*care_of)),
            Outcome::Denied { home, care_of, .. } => (*home, *care_of),
            Outcome::Ignored { .. } => (None, None),
        };
        self.outcome = Outcome::Denied {
            code,
            home,
            care_of,
            reason: reason.into(),
        };
        if let Some(reply) = &mut self.reply {
            reply.code = code;
            reply.lifetime = 0;
        }
    }

    /// The Reply's bytes, with its MHAE when the Request authenticated.
    pub fn reply_bytes(&self) -> Option<Vec<u8>> {
        let mut reply = self.reply.clone()?;
        if let Some(sa) = &self.sa {
            mip::sign_reply(&mut reply, sa);
        }
        Some(reply.encode())
    }
}

/// Whether `addr` can be a care-of address of a home agent whose addresses are `ours`.
fn usable_care_of(addr: Ipv4Addr, ours: &[Ipv4Addr]) -> bool {
    !(addr.is_unspecified()
        || addr.is_loopback()
        || addr.is_multicast()
        || addr.is_broadcast()
        || ours.contains(&addr))
}

/// The home agent's answer to `datagram`, at wall-clock time `now`. `ours` are the home
/// agent's addresses, the `--listen` one first (named in a 136 Reply); `bindings` gives
/// the Identification high-water marks.
pub fn decide(
    datagram: &[u8],
    keys: &KeyTable,
    ours: &[Ipv4Addr],
    bindings: &BindingList,
    now: SystemTime,
) -> Decision {
    // 0. Only Requests are answered: answering a Reply (or noise) could start a ping-pong
    //    between two agents.
    if datagram.first() != Some(&REQUEST_TYPE) {
        return Decision::ignored("not a Registration Request");
    }
    // 1. Well formed (134).
    let request = match RegistrationRequest::decode(datagram) {
        Ok(request) => request,
        Err(e @ DecodeError::UnknownExtension { .. }) => return Decision::ignored(e.to_string()),
        Err(e) => {
            // The fixed part alone decodes if there is one: answer with its fields.
            return match datagram
                .get(..REQUEST_LEN)
                .and_then(|fixed| RegistrationRequest::decode(fixed).ok())
            {
                Some(fixed) => Decision::denied(
                    &fixed,
                    ReplyCode::HaPoorlyFormedRequest,
                    None,
                    e.to_string(),
                ),
                None => Decision::ignored(e.to_string()),
            };
        }
    };
    let poorly_formed =
        |reason: String| Decision::denied(&request, ReplyCode::HaPoorlyFormedRequest, None, reason);
    let home = request.home_address;
    if home.is_unspecified() || home.is_multicast() || home.is_broadcast() {
        return poorly_formed(format!("home address {home} is not a unicast address"));
    }
    let deregistration = request.lifetime == 0;
    if !deregistration {
        if request.care_of == home {
            return poorly_formed(format!(
                "care-of address {} is the home address, with lifetime {} (deregister with 0)",
                request.care_of, request.lifetime
            ));
        }
        if !usable_care_of(request.care_of, ours) {
            return poorly_formed(format!("{} cannot be a care-of address", request.care_of));
        }
    }

    // 2. Authentication (131): the SA the key file gives this home address for the SPI.
    let Some(auth) = request.mhae() else {
        return Decision::denied(
            &request,
            ReplyCode::HaMobileNodeAuthFailed,
            None,
            "no Mobile-Home Authentication Extension",
        );
    };
    let Some(sa) = keys.for_request(home, auth.spi) else {
        return Decision::denied(
            &request,
            ReplyCode::HaMobileNodeAuthFailed,
            None,
            format!("no security association with SPI {} for {home}", auth.spi),
        );
    };
    if let Err(e) = mip::verify(datagram, sa) {
        return Decision::denied(
            &request,
            ReplyCode::HaMobileNodeAuthFailed,
            None,
            format!("SPI {}: {e}", auth.spi),
        );
    }

    // 3. Identification (133): within the SA's skew of our clock, above the last accepted.
    let clock = mip::ntp_from_system_time(now);
    if let Err(e) = mip::check_timestamp(
        request.identification,
        bindings.last_identification(home),
        clock,
        sa.skew(),
    ) {
        let mut d = Decision::denied(
            &request,
            ReplyCode::HaIdentificationMismatch,
            Some(sa),
            e.to_string(),
        );
        if let Some(reply) = &mut d.reply {
            reply.identification = mip::resync_identification(clock, request.identification);
        }
        return d;
    }

    // 4. Addressed to us (136; the Reply names our address).
    if !ours.contains(&request.home_agent) {
        let mut d = Decision::denied(
            &request,
            ReplyCode::HaUnknownHomeAgent,
            Some(sa),
            format!("{} is not this home agent's address", request.home_agent),
        );
        if let (Some(reply), Some(&ours)) = (&mut d.reply, ours.first()) {
            reply.home_agent = ours;
        }
        return d;
    }

    // 5. Encapsulation (139): IP-in-IP only.
    let flags = request.flags;
    if flags.minimal_encapsulation || flags.gre {
        let asked = if flags.gre { "GRE" } else { "minimal" };
        return Decision::denied(
            &request,
            ReplyCode::HaEncapsulationUnavailable,
            Some(sa),
            format!("{asked} encapsulation asked for; only IP-in-IP is spoken"),
        );
    }

    // Accepted.
    if deregistration {
        return Decision {
            outcome: Outcome::Deregister {
                home,
                care_of: request.care_of,
                identification: request.identification,
            },
            reply: Some(RegistrationReply::for_request(
                &request,
                ReplyCode::Accepted,
                0,
            )),
            sa: Some(sa.clone()),
        };
    }
    let lifetime = BindingList::grant(request.lifetime);
    let code = if flags.simultaneous_bindings {
        ReplyCode::AcceptedNoSimultaneousBindings
    } else {
        ReplyCode::Accepted
    };
    Decision {
        outcome: Outcome::Register {
            binding: Binding {
                home,
                care_of: request.care_of,
                lifetime,
                expires: now + Duration::from_secs(u64::from(lifetime)),
                identification: request.identification,
                spi: sa.spi(),
                reverse: flags.reverse_tunnel,
            },
            code,
        },
        reply: Some(RegistrationReply::for_request(&request, code, lifetime)),
        sa: Some(sa.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mip::{Flags, Message};
    use std::path::Path;

    const HOME: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
    const HA: Ipv4Addr = Ipv4Addr::new(198, 18, 20, 2);
    const HA_HOME_LINK: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const FA: Ipv4Addr = Ipv4Addr::new(198, 18, 21, 2);
    const KEY: &str = "000102030405060708090a0b0c0d0e0f";
    const OURS: [Ipv4Addr; 2] = [HA, HA_HOME_LINK];

    fn keys() -> KeyTable {
        let text = format!(
            "spi=256 home={HOME} key={KEY}\n\
             spi=257 home=198.18.0.11 key=ffffffffffffffffffffffffffffffff skew=30\n"
        );
        KeyTable::parse(&text, Path::new("keys")).unwrap()
    }

    fn sa() -> SecurityAssociation {
        keys().for_request(HOME, 256).unwrap().clone()
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn request(lifetime: u16) -> RegistrationRequest {
        RegistrationRequest {
            flags: Flags::ROAM,
            lifetime,
            home_address: HOME,
            home_agent: HA,
            care_of: FA,
            identification: mip::ntp_from_system_time(now()),
            extensions: Vec::new(),
        }
    }

    fn signed(mut r: RegistrationRequest, sa: &SecurityAssociation) -> Vec<u8> {
        mip::sign_request(&mut r, sa);
        r.encode()
    }

    fn run(datagram: &[u8], bindings: &BindingList) -> Decision {
        decide(datagram, &keys(), &OURS, bindings, now())
    }

    fn code(d: &Decision) -> Option<u8> {
        match &d.outcome {
            Outcome::Denied { code, .. } | Outcome::Register { code, .. } => Some(code.to_u8()),
            Outcome::Deregister { .. } => Some(0),
            Outcome::Ignored { .. } => None,
        }
    }

    /// The Reply as the mobile node sees it: decoded, and verified when it is signed.
    fn reply(d: &Decision) -> RegistrationReply {
        let bytes = d.reply_bytes().expect("a reply");
        let decoded = RegistrationReply::decode(&bytes).unwrap();
        if decoded.mhae().is_some() {
            assert_eq!(
                mip::verify(&bytes, &sa()),
                Ok(Message::Reply(decoded.clone())),
                "signed with the request's SA"
            );
        }
        decoded
    }

    #[test]
    fn a_good_registration_is_accepted_with_the_granted_lifetime() {
        let d = run(&signed(request(300), &sa()), &BindingList::new());
        let Outcome::Register { binding, code } = &d.outcome else {
            panic!("{:?}", d.outcome)
        };
        assert_eq!(*code, ReplyCode::Accepted);
        assert_eq!((binding.home, binding.care_of), (HOME, FA));
        assert_eq!(binding.expires, now() + Duration::from_secs(300));
        assert!(binding.reverse);
        assert_eq!(binding.spi, 256);
        let r = reply(&d);
        assert_eq!(r.code, ReplyCode::Accepted);
        assert_eq!(r.lifetime, 300);
        assert_eq!(r.identification, request(300).identification);
        assert!(r.mhae().is_some());
        // The HA may be named by its home-link address too; long lifetimes are capped.
        let mut other = request(0xFFFF);
        other.home_agent = HA_HOME_LINK;
        let r = reply(&run(&signed(other, &sa()), &BindingList::new()));
        assert_eq!((r.code, r.lifetime), (ReplyCode::Accepted, 600));
    }

    #[test]
    fn simultaneous_bindings_are_accepted_as_one_with_code_1() {
        let mut r = request(300);
        r.flags.simultaneous_bindings = true;
        let d = run(&signed(r, &sa()), &BindingList::new());
        assert!(matches!(d.outcome, Outcome::Register { .. }));
        assert_eq!(code(&d), Some(1));
        assert_eq!(reply(&d).code, ReplyCode::AcceptedNoSimultaneousBindings);
    }

    #[test]
    fn lifetime_zero_deregisters() {
        let mut r = request(0);
        r.care_of = HOME;
        let d = run(&signed(r.clone(), &sa()), &BindingList::new());
        assert_eq!(
            d.outcome,
            Outcome::Deregister {
                home: HOME,
                care_of: HOME,
                identification: r.identification
            }
        );
        assert_eq!(reply(&d).lifetime, 0);
    }

    #[test]
    fn not_requests_and_short_or_unknown_non_skippable_ones_get_no_answer() {
        let b = BindingList::new();
        let mut reply_msg = RegistrationReply::for_request(&request(300), ReplyCode::Accepted, 1);
        mip::sign_reply(&mut reply_msg, &sa());
        for datagram in [vec![], reply_msg.encode(), vec![1; 10], vec![9; 40]] {
            let d = run(&datagram, &b);
            assert!(matches!(d.outcome, Outcome::Ignored { .. }), "{datagram:?}");
            assert!(d.reply_bytes().is_none());
        }
        let mut unknown = request(300).encode();
        unknown.extend_from_slice(&[5, 2, 0, 0]);
        assert!(matches!(run(&unknown, &b).outcome, Outcome::Ignored { .. }));
    }

    #[test]
    fn each_check_has_its_code_in_order() {
        let b = BindingList::new();
        let good = signed(request(300), &sa());

        // 134: an extension running past the end; the Reply echoes the fixed part.
        let mut overrun = request(300).encode();
        overrun.extend_from_slice(&[32, 20, 0, 0, 1]);
        let d = run(&overrun, &b);
        assert_eq!(code(&d), Some(134));
        let r = reply(&d);
        assert_eq!(
            (r.home_address, r.identification),
            (HOME, request(300).identification)
        );
        assert!(r.mhae().is_none());
        // 134 comes before authentication: a bad care-of address with a bad key.
        let mut bad_coa = request(300);
        bad_coa.care_of = Ipv4Addr::new(224, 0, 0, 1);
        let wrong = SecurityAssociation::new(256, vec![7; 16]).unwrap();
        assert_eq!(code(&run(&signed(bad_coa, &wrong), &b)), Some(134));
        let mut at_home = request(300);
        at_home.care_of = HOME;
        assert_eq!(code(&run(&signed(at_home, &sa()), &b)), Some(134));
        let mut to_us = request(300);
        to_us.care_of = HA;
        assert_eq!(code(&run(&signed(to_us, &sa()), &b)), Some(134));

        // 131: no MHAE, an unknown SPI, an SPI of another home address, a wrong key.
        assert_eq!(code(&run(&request(300).encode(), &b)), Some(131));
        let other_spi = SecurityAssociation::new(999, KEY_BYTES.to_vec()).unwrap();
        assert_eq!(code(&run(&signed(request(300), &other_spi), &b)), Some(131));
        let not_yours = keys()
            .for_request(Ipv4Addr::new(198, 18, 0, 11), 257)
            .unwrap()
            .clone();
        assert_eq!(code(&run(&signed(request(300), &not_yours), &b)), Some(131));
        let d = run(&signed(request(300), &wrong), &b);
        assert_eq!(code(&d), Some(131));
        assert!(reply(&d).mhae().is_none(), "no signed denial for a forger");
        // 131 comes before 133: a replay with a bad key is an authentication failure.
        let mut stale = request(300);
        stale.identification -= 3600 << 32;
        assert_eq!(code(&run(&signed(stale.clone(), &wrong), &b)), Some(131));

        // 133: outside the skew (7 s by default), with the resynchronising Identification.
        let d = run(&signed(stale.clone(), &sa()), &b);
        assert_eq!(code(&d), Some(133));
        let r = reply(&d);
        let clock = mip::ntp_from_system_time(now());
        assert_eq!(r.identification >> 32, clock >> 32);
        assert_eq!(
            r.identification & 0xFFFF_FFFF,
            stale.identification & 0xFFFF_FFFF
        );
        // ... and a replay of an accepted Identification.
        let mut seen = BindingList::new();
        seen.accept_identification(HOME, request(300).identification);
        assert_eq!(code(&run(&good, &seen)), Some(133));
        // 133 comes before 136.
        let mut stale_elsewhere = stale;
        stale_elsewhere.home_agent = Ipv4Addr::new(198, 18, 99, 1);
        assert_eq!(code(&run(&signed(stale_elsewhere, &sa()), &b)), Some(133));

        // 136: another home agent; the Reply names ours.
        let mut elsewhere = request(300);
        elsewhere.home_agent = Ipv4Addr::new(198, 18, 99, 1);
        let d = run(&signed(elsewhere.clone(), &sa()), &b);
        assert_eq!(code(&d), Some(136));
        assert_eq!(reply(&d).home_agent, HA);
        // 136 comes before 139.
        elsewhere.flags.gre = true;
        assert_eq!(code(&run(&signed(elsewhere, &sa()), &b)), Some(136));

        // 139: GRE or minimal encapsulation.
        for (m, g) in [(true, false), (false, true)] {
            let mut r = request(300);
            r.flags.minimal_encapsulation = m;
            r.flags.gre = g;
            let d = run(&signed(r, &sa()), &b);
            assert_eq!(code(&d), Some(139));
            assert!(reply(&d).mhae().is_some());
        }

        // And the good one passes them all.
        assert_eq!(code(&run(&good, &b)), Some(0));
    }

    const KEY_BYTES: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

    #[test]
    fn a_failure_after_acceptance_becomes_a_signed_denial() {
        let mut d = run(&signed(request(300), &sa()), &BindingList::new());
        d.fail(ReplyCode::HaInsufficientResources, "netlink refused");
        assert!(matches!(
            d.outcome,
            Outcome::Denied {
                code: ReplyCode::HaInsufficientResources,
                ..
            }
        ));
        let r = reply(&d);
        assert_eq!((r.code.to_u8(), r.lifetime), (130, 0));
        assert!(r.mhae().is_some());
    }
}
