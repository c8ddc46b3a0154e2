//! The home agent's hold on the Linux data path: what makes packets for a bound home
//! address reach it and leave through the tunnel, set up and torn down per home address.
//!
//! At start ([`DataPath::open`]): the home link's index, MAC, MTU and addresses (rtnetlink);
//! the TUN device, brought up with the home link's MTU; the raw IP-in-IP socket bound to
//! the `--listen` address; and three sysctls: `net.ipv4.ip_forward=1` (a home agent
//! routes), `net.ipv4.neigh.<home link>.proxy_delay=0` (the kernel otherwise answers ARP
//! for proxied addresses after a random delay of up to 0.8 s) and
//! `net.ipv4.conf.<tun>.rp_filter=2` (loose: decapsulated packets come from anywhere);
//! IPv6 is turned off on the TUN.
//!
//! Per home address ([`DataPath::capture`]): the host route `HOME/32 dev <tun>`, a
//! neighbour proxy entry for HOME on the home link (the kernel answers ARP for it with the
//! home link's MAC, because forwarding is on and the route leaves by another device), and
//! three gratuitous ARPs. [`DataPath::release`] removes route and entry; the TUN stays
//! while the home agent runs (it goes away with the process, and every route through it).

use super::arp::{Announcer, GarpSchedule};
use super::netlink::{Netlink, NetlinkError, Request};
use super::tunnel::{OpenError, Tunnel};
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Instant;

/// Why the data path could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum DataPathError {
    /// An rtnetlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The home link is not an Ethernet link.
    #[error("--home-link {0}: not an Ethernet link (proxy ARP needs one)")]
    NotEthernet(String),
    /// The TUN could not be created.
    #[error("cannot create TUN device {name}: {error}")]
    Tun {
        /// Its name.
        name: String,
        /// What the system said.
        error: io::Error,
    },
    /// The raw IP-in-IP socket could not be opened or bound.
    #[error("cannot open the IP-in-IP socket on {addr}: {error}")]
    Raw {
        /// The --listen address.
        addr: Ipv4Addr,
        /// What the system said.
        error: io::Error,
    },
    /// The packet socket for gratuitous ARP could not be opened.
    #[error("cannot open a packet socket on {link}: {error}")]
    Packet {
        /// The home link.
        link: String,
        /// What the system said.
        error: io::Error,
    },
    /// A sysctl could not be written.
    #[error("cannot set {path}: {error}")]
    Sysctl {
        /// The /proc path.
        path: String,
        /// What the system said.
        error: io::Error,
    },
}

/// The live data path.
#[derive(Debug)]
pub struct DataPath {
    netlink: Netlink,
    /// The TUN and the raw socket.
    pub tunnel: Tunnel,
    tun_index: u32,
    home_link: String,
    home_index: u32,
    home_addrs: Vec<Ipv4Addr>,
    announcer: Announcer,
    garps: GarpSchedule,
}

/// `ifi_type` of an Ethernet link (linux/if_arp.h).
const ARPHRD_ETHER: u16 = 1;

/// Writes `value` to the sysctl file `path` unless it already holds it.
fn sysctl(path: &str, value: &str) -> Result<(), DataPathError> {
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(Path::new(path), value).map_err(|error| DataPathError::Sysctl {
        path: path.to_owned(),
        error,
    })
}

/// Whether an rtnetlink delete failed only because there was nothing to delete.
fn already_gone(e: &NetlinkError) -> bool {
    matches!(
        e.errno(),
        Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::ENODEV)
    )
}

impl DataPath {
    /// Sets up the data path on `home_link` with TUN `tun_name`, tunnelling from `local`.
    pub fn open(
        home_link: &str,
        tun_name: &str,
        local: Ipv4Addr,
    ) -> Result<DataPath, DataPathError> {
        let mut netlink = Netlink::open()?;
        let link = netlink.link(home_link).map_err(|e| match e.errno() {
            Some(libc::ENODEV) => NetlinkError::NoAnswer {
                request: "--home-link",
                what: home_link.to_owned(),
                reason: "no such link in this network namespace".into(),
            },
            _ => e,
        })?;
        let mac: [u8; 6] = link
            .address
            .as_slice()
            .try_into()
            .ok()
            .filter(|_| link.kind == ARPHRD_ETHER)
            .ok_or_else(|| DataPathError::NotEthernet(home_link.to_owned()))?;
        let home_addrs = netlink.ipv4_addrs(link.index)?;
        let tunnel = Tunnel::open(tun_name, local).map_err(|e| match e {
            OpenError::Tun(error) if error.raw_os_error() == Some(libc::EBUSY) => {
                DataPathError::Tun {
                    name: tun_name.to_owned(),
                    error: io::Error::new(error.kind(), "in use by another process (--tun NAME)"),
                }
            }
            OpenError::Tun(error) => DataPathError::Tun {
                name: tun_name.to_owned(),
                error,
            },
            OpenError::Raw(error) if error.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                DataPathError::Raw {
                    addr: local,
                    error: io::Error::new(error.kind(), "not an address of this host"),
                }
            }
            OpenError::Raw(error) => DataPathError::Raw { addr: local, error },
        })?;
        let tun_index = netlink.link(tun_name)?.index;
        netlink.execute(
            &Request::link_up(tun_index, link.mtu),
            &format!("{tun_name} up mtu {}", link.mtu),
        )?;
        sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
        sysctl(
            &format!("/proc/sys/net/ipv4/neigh/{home_link}/proxy_delay"),
            "0",
        )?;
        sysctl(
            &format!("/proc/sys/net/ipv4/conf/{tun_name}/rp_filter"),
            "2",
        )?;
        let announcer =
            Announcer::open(link.index, mac).map_err(|error| DataPathError::Packet {
                link: home_link.to_owned(),
                error,
            })?;
        Ok(DataPath {
            netlink,
            tunnel,
            tun_index,
            home_link: home_link.to_owned(),
            home_index: link.index,
            home_addrs,
            announcer,
            garps: GarpSchedule::default(),
        })
    }

    /// The IPv4 addresses of the home link.
    pub fn home_addrs(&self) -> &[Ipv4Addr] {
        &self.home_addrs
    }

    /// Starts capturing packets for `home`: host route into the TUN, proxy ARP on the home
    /// link, and (`announce`) gratuitous ARPs from `now` on.
    pub fn capture(
        &mut self,
        home: Ipv4Addr,
        announce: bool,
        now: Instant,
    ) -> Result<(), DataPathError> {
        let tun = self.tunnel.name().to_owned();
        self.netlink.execute(
            &Request::replace_host_route(home, self.tun_index),
            &format!("{home}/32 dev {tun}"),
        )?;
        if let Err(e) = self.netlink.execute(
            &Request::add_proxy_neigh(home, self.home_index),
            &format!("proxy {home} dev {}", self.home_link),
        ) {
            let _ = self.netlink.execute(
                &Request::delete_host_route(home, self.tun_index),
                &format!("{home}/32 dev {tun}"),
            );
            return Err(e.into());
        }
        if announce {
            self.garps.start(home, now);
        }
        Ok(())
    }

    /// Stops capturing packets for `home`: route and proxy entry go (either may be gone
    /// already), gratuitous ARPs still due are cancelled. Both removals are tried; the
    /// first failure is returned.
    pub fn release(&mut self, home: Ipv4Addr) -> Result<(), DataPathError> {
        self.garps.cancel(home);
        let tun = self.tunnel.name().to_owned();
        let route = self.netlink.execute(
            &Request::delete_host_route(home, self.tun_index),
            &format!("{home}/32 dev {tun}"),
        );
        let proxy = self.netlink.execute(
            &Request::delete_proxy_neigh(home, self.home_index),
            &format!("proxy {home} dev {}", self.home_link),
        );
        for result in [route, proxy] {
            match result {
                Err(e) if !already_gone(&e) => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }

    /// Sends the gratuitous ARPs due at `now`.
    pub fn announce_due(&mut self, now: Instant) {
        for home in self.garps.due(now) {
            if let Err(e) = self.announcer.announce(home) {
                log::warn!(
                    "home agent: gratuitous ARP for {home} on {}: {e}",
                    self.home_link
                );
            }
        }
    }

    /// When the next gratuitous ARP is due.
    pub fn next_announcement(&self) -> Option<Instant> {
        self.garps.next_due()
    }
}
