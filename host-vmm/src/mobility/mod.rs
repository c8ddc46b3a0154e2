//! The wide-area agents beside the VMM: `host-vmm home-agent`, the Mobile IPv4 (RFC 5944)
//! home agent that keeps a moved VM reachable at its home address by tunnelling its
//! packets to wherever it runs now, and `host-vmm nat-edge`, an address-translation edge of
//! network paging that maps the VM's address to its location address instead. Both take
//! the same Registration Requests: the messages, their HMAC-MD5 authentication, the
//! timestamp check and the key file are the `mip` crate's (`proto/mip`).
//!
//! ```text
//!  correspondent ── WAN ── wan0 ┐ home agent ┌ home0 ── home link (proxy ARP for HOME)
//!                               │  kernel: HOME/32 dev mip0
//!                               └── mip0 (TUN) ⇄ host-vmm home-agent ⇄ raw socket, proto 4
//!                                        IP-in-IP, outer HA → care-of ──► care-of address
//! ```
//!
//! - [`registration`]: the checks a Request goes through and the Reply it gets (134, 131,
//!   133, 136, 139 in that order; S accepted as S=0 with code 1), without I/O;
//! - [`binding`]: the binding list (one care-of address per home address, wall-clock
//!   lifetimes capped at 600 s) and the Identification high-water marks;
//! - [`state`]: both on disk (`--state`), rewritten atomically on every change and
//!   re-applied on start;
//! - [`datapath`]: the kernel's side (TUN, host routes, neighbour proxy entries, sysctls)
//!   over [`netlink`] (rtnetlink, no `ip`), [`tunnel`] (user-space IP-in-IP: this kernel
//!   has no `ipip`) and [`arp`] (gratuitous ARP);
//! - [`home_agent`]: the epoll loop that ties them together until SIGTERM;
//! - [`nat_edge`]: the translation edge: the same checks and binding list, its data path
//!   one nftables transaction per move ([`nft`]: the table, as `nft -f` text;
//!   [`nfnetlink`]: a move's batch, sent straight to nf_tables);
//! - `sys`: the only `unsafe` (sockets, TUN, signalfd), in small functions.

pub mod arp;
pub mod binding;
pub mod datapath;
mod front;
pub mod home_agent;
pub mod nat_edge;
pub mod netlink;
pub mod nfnetlink;
pub mod nft;
pub mod registration;
pub mod state;
#[allow(unsafe_code)]
mod sys;
pub mod tunnel;

pub use home_agent::{Config, DEFAULT_TUN, HomeAgentError, parse_listen, run};

/// `host-vmm home-agent status --state FILE`: the bindings in the state file still alive
/// now, one line each (see [`state::status_lines`]). Unlike a starting home agent, this
/// refuses a missing file: it is a mistyped path, since a home agent writes it at start.
pub fn status(path: &std::path::Path) -> Result<Vec<String>, state::StateError> {
    if let Err(error) = std::fs::metadata(path) {
        return Err(state::StateError::Io {
            path: path.to_owned(),
            error,
        });
    }
    let list = state::load(path)?;
    Ok(state::status_lines(&list, std::time::SystemTime::now()))
}
