//! The address translation of a network-paging edge (`host-vmm nat-edge`) as nftables
//! text, and `nft -f -` to apply it: one table, two maps, three rules, every change one
//! transaction.
//!
//! ```text
//! table ip roam_nat {
//!     map inbound  { type ipv4_addr : ipv4_addr; }   # address on the link side -> inside
//!     map outbound { type ipv4_addr : ipv4_addr; }   # inside -> address on the link side
//!     chain prerouting {
//!         type filter hook prerouting priority raw; policy accept;
//!         iifname "LINK" ip daddr set ip daddr map @inbound notrack
//!         iifname != "LINK" ip saddr @outbound notrack
//!     }
//!     chain postrouting {
//!         type filter hook postrouting priority srcnat; policy accept;
//!         oifname "LINK" ip saddr set ip saddr map @outbound
//!     }
//! }
//! ```
//!
//! For a VM with address A at location L, a **client** edge (LINK: the correspondents'
//! side) holds `inbound {A : L}` and `outbound {L : A}`: what correspondents send to A goes
//! to L, and what comes back from L reaches them from A. A **site** edge (LINK: its WAN
//! side) holds `inbound {L : A}` and `outbound {A : L}`. Without `--link` the rules match on
//! every interface.
//!
//! **Stateless.** The rewrite is a payload write, done before routing (priority raw, so
//! routing already sees the new destination) on every packet, not a NAT binding kept in a
//! conntrack entry: the very next packet after a transaction follows the new map, whatever
//! flow it belongs to, and there is nothing to flush. The translated packets are not
//! tracked at all (`notrack`, both directions), so no conntrack entry is made for them
//! even where something else on the host loads conntrack. A map lookup that finds nothing
//! ends the rule: other traffic is left alone. Writing `ip saddr`/`ip daddr` updates the
//! IPv4 header checksum and, since nft marks both as part of the pseudo-header, the TCP
//! and UDP checksums too (tests/nat_edge.rs checks the result on the wire).
//!
//! **Atomic.** A move is one batch: `delete element` of the old entries and `add element`
//! of the new ones in both maps. `nft -f` sends a batch as one nf_tables transaction: a
//! packet sees the old pair or the new one, never half of it, and a batch the kernel
//! refuses changes nothing.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The table every edge uses (family `ip`).
pub const TABLE: &str = "roam_nat";

/// Which side of the WAN an edge translates for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// In front of the correspondents: their traffic to a VM's address goes to its
    /// location.
    Client,
    /// At a foreign site: traffic to a VM's location address goes to the VM, which still
    /// uses its own address.
    Site,
}

impl Role {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Site => "site",
        }
    }

    /// The `inbound` and `outbound` entries for a VM with address `home` at `location`.
    pub fn entries(self, home: Ipv4Addr, location: Ipv4Addr) -> Entries {
        match self {
            Role::Client => Entries {
                inbound: (home, location),
                outbound: (location, home),
            },
            Role::Site => Entries {
                inbound: (location, home),
                outbound: (home, location),
            },
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        match text {
            "client" => Ok(Role::Client),
            "site" => Ok(Role::Site),
            other => Err(format!("`{other}`: expected client or site")),
        }
    }
}

/// One binding's map entries (key, value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entries {
    /// In `inbound`.
    pub inbound: (Ipv4Addr, Ipv4Addr),
    /// In `outbound`.
    pub outbound: (Ipv4Addr, Ipv4Addr),
}

/// Whether `name` can be written into the ruleset as an interface name: what Linux takes
/// (1–15 bytes) and nothing that needs quoting beyond the double quotes.
pub fn valid_link(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

/// The whole table for `role`, with `bindings` (home address, location) in its maps: one
/// batch that first removes any table of that name (a crashed edge's included), so it is
/// what an edge applies on start.
pub fn ruleset(role: Role, link: Option<&str>, bindings: &[(Ipv4Addr, Ipv4Addr)]) -> String {
    let (iif, iif_not, oif) = match link {
        Some(l) => (
            format!("iifname \"{l}\" "),
            format!("iifname != \"{l}\" "),
            format!("oifname \"{l}\" "),
        ),
        None => (String::new(), String::new(), String::new()),
    };
    let elements = |pick: fn(&Entries) -> (Ipv4Addr, Ipv4Addr)| {
        let items: Vec<String> = bindings
            .iter()
            .map(|(home, loc)| {
                let (k, v) = pick(&role.entries(*home, *loc));
                format!("{k} : {v}")
            })
            .collect();
        if items.is_empty() {
            String::new()
        } else {
            format!("\t\telements = {{ {} }}\n", items.join(", "))
        }
    };
    let mut s = String::new();
    // `add` makes sure it exists, so that `delete` cannot fail: one batch, old or new.
    let _ = writeln!(s, "add table ip {TABLE}");
    let _ = writeln!(s, "delete table ip {TABLE}");
    let _ = writeln!(s, "table ip {TABLE} {{");
    let _ = write!(
        s,
        "\tmap inbound {{\n\t\ttype ipv4_addr : ipv4_addr\n{}\t}}\n",
        elements(|e| e.inbound)
    );
    let _ = write!(
        s,
        "\tmap outbound {{\n\t\ttype ipv4_addr : ipv4_addr\n{}\t}}\n",
        elements(|e| e.outbound)
    );
    let _ = write!(
        s,
        "\tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority raw; policy accept;\n\
         \t\t{iif}ip daddr set ip daddr map @inbound notrack\n\
         \t\t{iif_not}ip saddr @outbound notrack\n\
         \t}}\n"
    );
    let _ = write!(
        s,
        "\tchain postrouting {{\n\
         \t\ttype filter hook postrouting priority srcnat; policy accept;\n\
         \t\t{oif}ip saddr set ip saddr map @outbound\n\
         \t}}\n"
    );
    s.push_str("}\n");
    s
}

/// The batch that moves one VM (address `home`) from `old` to `new` location (`None`: it
/// had no entry / is to have none): deletions first, then additions, one transaction.
/// Empty if nothing changes.
pub fn swap(role: Role, home: Ipv4Addr, old: Option<Ipv4Addr>, new: Option<Ipv4Addr>) -> String {
    let mut s = String::new();
    if old == new {
        return s;
    }
    if let Some(loc) = old {
        let e = role.entries(home, loc);
        let _ = writeln!(s, "delete element ip {TABLE} inbound {{ {} }}", e.inbound.0);
        let _ = writeln!(
            s,
            "delete element ip {TABLE} outbound {{ {} }}",
            e.outbound.0
        );
    }
    if let Some(loc) = new {
        let e = role.entries(home, loc);
        let _ = writeln!(
            s,
            "add element ip {TABLE} inbound {{ {} : {} }}",
            e.inbound.0, e.inbound.1
        );
        let _ = writeln!(
            s,
            "add element ip {TABLE} outbound {{ {} : {} }}",
            e.outbound.0, e.outbound.1
        );
    }
    s
}

/// The batch that removes the table (an edge stopping).
pub fn remove() -> String {
    format!("add table ip {TABLE}\ndelete table ip {TABLE}\n")
}

/// Why a batch did not apply.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` could not be started or fed.
    #[error("cannot run `{program} -f -` (is nftables installed?): {error}")]
    Spawn {
        /// The program.
        program: String,
        /// What failed.
        error: io::Error,
    },
    /// `nft` refused the batch (nothing of it applied).
    #[error("nft refused the batch ({status}): {stderr}")]
    Refused {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it said, on one line.
        stderr: String,
    },
}

/// Runs `program -f -` with `batch` on its stdin (one transaction); returns how long it
/// took. An empty batch is not run.
pub fn apply(program: &str, batch: &str) -> Result<Duration, NftError> {
    let start = Instant::now();
    if batch.is_empty() {
        return Ok(Duration::ZERO);
    }
    let spawn_error = |error| NftError::Spawn {
        program: program.to_owned(),
        error,
    };
    let mut child = Command::new(program)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(batch.as_bytes()));
    let out = child.wait_with_output().map_err(spawn_error)?;
    if !out.status.success() {
        return Err(NftError::Refused {
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        });
    }
    if let Some(Err(error)) = written {
        return Err(spawn_error(error));
    }
    Ok(start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
    const LA: Ipv4Addr = Ipv4Addr::new(198, 18, 21, 10);
    const LB: Ipv4Addr = Ipv4Addr::new(198, 18, 22, 10);

    #[test]
    fn a_client_edge_sends_the_address_to_the_location_and_back() {
        let text = ruleset(Role::Client, Some("w-c"), &[(A, LA)]);
        assert_eq!(
            text,
            "add table ip roam_nat\n\
             delete table ip roam_nat\n\
             table ip roam_nat {\n\
             \tmap inbound {\n\
             \t\ttype ipv4_addr : ipv4_addr\n\
             \t\telements = { 198.18.0.10 : 198.18.21.10 }\n\
             \t}\n\
             \tmap outbound {\n\
             \t\ttype ipv4_addr : ipv4_addr\n\
             \t\telements = { 198.18.21.10 : 198.18.0.10 }\n\
             \t}\n\
             \tchain prerouting {\n\
             \t\ttype filter hook prerouting priority raw; policy accept;\n\
             \t\tiifname \"w-c\" ip daddr set ip daddr map @inbound notrack\n\
             \t\tiifname != \"w-c\" ip saddr @outbound notrack\n\
             \t}\n\
             \tchain postrouting {\n\
             \t\ttype filter hook postrouting priority srcnat; policy accept;\n\
             \t\toifname \"w-c\" ip saddr set ip saddr map @outbound\n\
             \t}\n\
             }\n"
        );
    }

    #[test]
    fn a_site_edge_maps_the_other_way_and_without_a_link_everywhere() {
        let text = ruleset(
            Role::Site,
            None,
            &[(A, LA), (Ipv4Addr::new(198, 18, 0, 11), LB)],
        );
        assert!(text.contains(
            "\t\telements = { 198.18.21.10 : 198.18.0.10, 198.18.22.10 : 198.18.0.11 }\n"
        ));
        assert!(text.contains(
            "\t\telements = { 198.18.0.10 : 198.18.21.10, 198.18.0.11 : 198.18.22.10 }\n"
        ));
        assert!(text.contains("\t\tip daddr set ip daddr map @inbound notrack\n"));
        assert!(text.contains("\t\tip saddr @outbound notrack\n"));
        assert!(text.contains("\t\tip saddr set ip saddr map @outbound\n"));
        assert!(!text.contains("ifname"));
        // No binding: empty maps (no `elements` line).
        assert!(!ruleset(Role::Site, None, &[]).contains("elements"));
    }

    #[test]
    fn a_move_is_one_batch_deletions_first() {
        assert_eq!(
            swap(Role::Client, A, Some(LA), Some(LB)),
            "delete element ip roam_nat inbound { 198.18.0.10 }\n\
             delete element ip roam_nat outbound { 198.18.21.10 }\n\
             add element ip roam_nat inbound { 198.18.0.10 : 198.18.22.10 }\n\
             add element ip roam_nat outbound { 198.18.22.10 : 198.18.0.10 }\n"
        );
        assert_eq!(
            swap(Role::Site, A, None, Some(LA)),
            "add element ip roam_nat inbound { 198.18.21.10 : 198.18.0.10 }\n\
             add element ip roam_nat outbound { 198.18.0.10 : 198.18.21.10 }\n"
        );
        assert_eq!(
            swap(Role::Client, A, Some(LB), None),
            "delete element ip roam_nat inbound { 198.18.0.10 }\n\
             delete element ip roam_nat outbound { 198.18.22.10 }\n"
        );
        // A renewal at the same place changes nothing.
        assert_eq!(swap(Role::Client, A, Some(LA), Some(LA)), "");
        assert_eq!(swap(Role::Client, A, None, None), "");
        assert_eq!(
            remove(),
            "add table ip roam_nat\ndelete table ip roam_nat\n"
        );
    }

    #[test]
    fn roles_and_links_parse() {
        assert_eq!("client".parse(), Ok(Role::Client));
        assert_eq!("site".parse::<Role>().map(Role::name), Ok("site"));
        assert!("edge".parse::<Role>().is_err());
        assert!(valid_link("w-c") && valid_link("wan0") && valid_link("eth0.100"));
        for bad in ["", "w c", "a\"b", "0123456789abcdef", "x;y", "a}"] {
            assert!(!valid_link(bad), "{bad}");
        }
    }

    #[test]
    fn a_missing_nft_is_a_clear_error_and_an_empty_batch_runs_nothing() {
        assert_eq!(apply("/nonexistent/nft", "").unwrap(), Duration::ZERO);
        let e = apply("/nonexistent/nft", "add table ip x\n").unwrap_err();
        assert!(e.to_string().contains("is nftables installed"), "{e}");
        // A program that refuses: its status and words come back.
        let e = apply("false", "x\n").unwrap_err();
        assert!(matches!(e, NftError::Refused { .. }), "{e}");
    }
}
