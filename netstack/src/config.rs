//! Static IPv4 configuration from the kernel command line: `ip=ADDRESS/PREFIX` and
//! optionally `gw=ADDRESS` (docs/boot-abi.md, "Kernel command line").
//!
//! The parser is strict and says exactly what is wrong: a guest that comes up with a
//! half-understood address is harder to debug than one that refuses to.

use core::fmt;
use core::net::Ipv4Addr;
use smoltcp::wire::Ipv4Cidr;

/// The interface's address and default gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Address and prefix length.
    pub address: Ipv4Cidr,
    /// Default gateway, if any (it must be inside the address's subnet).
    pub gateway: Option<Ipv4Addr>,
}

/// What is wrong with a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Not a dotted-quad IPv4 address.
    NotAnAddress,
    /// `ip=` without `/PREFIX`.
    MissingPrefix,
    /// The prefix is not a number from 1 to 32.
    BadPrefix,
    /// Unspecified (0.0.0.0), broadcast, multicast or loopback: not a host address.
    NotAHost,
    /// The network or broadcast address of its own subnet.
    SubnetAddress,
    /// The gateway is outside the interface's subnet.
    GatewayNotOnLink,
    /// `gw=` without `ip=`.
    GatewayWithoutAddress,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Problem::NotAnAddress => "not an IPv4 address",
            Problem::MissingPrefix => "missing /PREFIX (e.g. ip=198.18.0.10/24)",
            Problem::BadPrefix => "the prefix length must be 1 to 32",
            Problem::NotAHost => "not a host address",
            Problem::SubnetAddress => "the network or broadcast address of its subnet",
            Problem::GatewayNotOnLink => "not inside the subnet of ip=",
            Problem::GatewayWithoutAddress => "a gateway needs an address: add ip=ADDRESS/PREFIX",
        })
    }
}

/// A bad `ip=` or `gw=` value: which key, its value, and what is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigError<'a> {
    /// `"ip"` or `"gw"`.
    pub key: &'static str,
    /// The value as written.
    pub value: &'a str,
    /// What is wrong with it.
    pub problem: Problem,
}

impl fmt::Display for ConfigError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}={}`: {}", self.key, self.value, self.problem)
    }
}

/// Parses the `key=value` words of a command line: `Ok(None)` when there is no `ip=`
/// (networking not configured). The last `ip=` and `gw=` win; other keys are ignored.
pub fn parse<'a>(
    words: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<Option<NetConfig>, ConfigError<'a>> {
    let (mut ip, mut gw) = (None, None);
    for (key, value) in words {
        match key {
            "ip" => ip = Some(value),
            "gw" => gw = Some(value),
            _ => {}
        }
    }
    let Some(ip) = ip else {
        return match gw {
            Some(value) => Err(ConfigError {
                key: "gw",
                value,
                problem: Problem::GatewayWithoutAddress,
            }),
            None => Ok(None),
        };
    };
    let ip_error = |problem| ConfigError {
        key: "ip",
        value: ip,
        problem,
    };
    let (address, prefix) = ip.split_once('/').ok_or(ip_error(Problem::MissingPrefix))?;
    let address: Ipv4Addr = address
        .parse()
        .map_err(|_| ip_error(Problem::NotAnAddress))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| (1..=32).contains(p))
        .ok_or(ip_error(Problem::BadPrefix))?;
    if !is_host(address) {
        return Err(ip_error(Problem::NotAHost));
    }
    let cidr = Ipv4Cidr::new(address, prefix);
    if prefix <= 30 && (address == cidr.network().address() || Some(address) == cidr.broadcast()) {
        return Err(ip_error(Problem::SubnetAddress));
    }

    let gateway = match gw {
        None => None,
        Some(value) => {
            let gw_error = |problem| ConfigError {
                key: "gw",
                value,
                problem,
            };
            let gateway: Ipv4Addr = value.parse().map_err(|_| gw_error(Problem::NotAnAddress))?;
            if !is_host(gateway) {
                return Err(gw_error(Problem::NotAHost));
            }
            if !cidr.contains_addr(&gateway) {
                return Err(gw_error(Problem::GatewayNotOnLink));
            }
            Some(gateway)
        }
    };
    Ok(Some(NetConfig {
        address: cidr,
        gateway,
    }))
}

fn is_host(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> impl Iterator<Item = (&str, &str)> {
        line.split_ascii_whitespace()
            .filter_map(|w| w.split_once('='))
    }

    fn problem(line: &str) -> (&'static str, Problem) {
        let e = parse(words(line)).unwrap_err();
        (e.key, e.problem)
    }

    #[test]
    fn address_and_gateway() {
        let c = parse(words("log=info ip=198.18.0.10/24 gw=198.18.0.1"))
            .unwrap()
            .unwrap();
        assert_eq!(c.address, Ipv4Cidr::new(Ipv4Addr::new(198, 18, 0, 10), 24));
        assert_eq!(c.gateway, Some(Ipv4Addr::new(198, 18, 0, 1)));
    }

    #[test]
    fn no_ip_means_no_network() {
        assert_eq!(parse(words("log=info")), Ok(None));
        assert_eq!(parse(words("")), Ok(None));
    }

    #[test]
    fn gateway_is_optional_and_last_value_wins() {
        let c = parse(words("ip=10.0.0.1/8 ip=198.18.1.2/16"))
            .unwrap()
            .unwrap();
        assert_eq!(c.address, Ipv4Cidr::new(Ipv4Addr::new(198, 18, 1, 2), 16));
        assert_eq!(c.gateway, None);
        let host = parse(words("ip=198.18.0.7/32")).unwrap().unwrap();
        assert_eq!(host.address.prefix_len(), 32);
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        assert_eq!(problem("ip=198.18.0.300/24"), ("ip", Problem::NotAnAddress));
        assert_eq!(problem("ip=198.18.0.10"), ("ip", Problem::MissingPrefix));
        assert_eq!(problem("ip=198.18.0.10/33"), ("ip", Problem::BadPrefix));
        assert_eq!(problem("ip=198.18.0.10/0"), ("ip", Problem::BadPrefix));
        assert_eq!(problem("ip=198.18.0.10/x"), ("ip", Problem::BadPrefix));
        assert_eq!(problem("ip=0.0.0.0/24"), ("ip", Problem::NotAHost));
        assert_eq!(problem("ip=224.0.0.1/24"), ("ip", Problem::NotAHost));
        assert_eq!(problem("ip=198.18.0.0/24"), ("ip", Problem::SubnetAddress));
        assert_eq!(
            problem("ip=198.18.0.255/24"),
            ("ip", Problem::SubnetAddress)
        );
        assert_eq!(
            problem("ip=198.18.0.10/24 gw=198.18.1.1"),
            ("gw", Problem::GatewayNotOnLink)
        );
        assert_eq!(
            problem("ip=198.18.0.10/24 gw=gateway"),
            ("gw", Problem::NotAnAddress)
        );
        assert_eq!(
            problem("ip=198.18.0.10/24 gw=255.255.255.255"),
            ("gw", Problem::NotAHost)
        );
        assert_eq!(
            problem("gw=198.18.0.1"),
            ("gw", Problem::GatewayWithoutAddress)
        );
    }

    #[test]
    fn errors_print_key_value_and_reason() {
        let e = parse(words("ip=198.18.0.10/99")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`ip=198.18.0.10/99`: the prefix length must be 1 to 32"
        );
    }
}
