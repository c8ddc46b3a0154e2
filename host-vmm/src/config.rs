//! What `host-vmm run` was asked to do, validated before any KVM work starts: the guest RAM
//! size, the kernel command line and the network card. Parsing here is pure, so bad input is
//! reported without touching `/dev/kvm` or the network.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// One MiB.
pub const MIB: u64 = 1 << 20;
/// One GiB.
pub const GIB: u64 = 1 << 30;

/// Smallest guest RAM: boot structures below 1 MiB, the image from 1 MiB, then a heap.
pub const MEM_MIN: u64 = 16 * MIB;
/// Largest guest RAM: it is one region starting at 0 and must end below the MMIO hole.
pub const MEM_MAX: u64 = 3 * GIB;
/// Guest RAM is identity-mapped with 2 MiB pages, so it comes in 2 MiB steps.
pub const MEM_ALIGN: u64 = 2 * MIB;
/// Default guest RAM.
pub const MEM_DEFAULT: MemSize = MemSize(128 * MIB);

/// Longest command line, including its terminating NUL (the boot ABI's 4 KiB).
pub const CMDLINE_MAX: usize = 4096;

/// A guest RAM size: between [`MEM_MIN`] and [`MEM_MAX`], a multiple of [`MEM_ALIGN`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemSize(u64);

impl MemSize {
    /// Checks a size in bytes.
    pub fn new(bytes: u64) -> Result<Self, SizeError> {
        if bytes < MEM_MIN {
            return Err(SizeError::TooSmall(bytes));
        }
        if bytes > MEM_MAX {
            return Err(SizeError::TooLarge(bytes));
        }
        if !bytes.is_multiple_of(MEM_ALIGN) {
            return Err(SizeError::Unaligned(bytes));
        }
        Ok(MemSize(bytes))
    }

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for MemSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(GIB) {
            write!(f, "{} GiB", self.0 / GIB)
        } else {
            write!(f, "{} MiB", self.0 / MIB)
        }
    }
}

/// Why a `--mem` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Not a number with an optional unit.
    #[error(
        "malformed size `{0}`: use a byte count or a whole number with K, M or G (KiB, MiB, GiB), e.g. 128M or 1GiB"
    )]
    Malformed(String),
    /// Does not fit in 64 bits.
    #[error("size `{0}` is too large")]
    Overflow(String),
    /// Below [`MEM_MIN`].
    #[error("guest RAM must be at least 16 MiB")]
    TooSmall(u64),
    /// Above [`MEM_MAX`].
    #[error("guest RAM must be at most 3 GiB, to end below the MMIO hole")]
    TooLarge(u64),
    /// Not a multiple of [`MEM_ALIGN`].
    #[error("guest RAM must be a multiple of 2 MiB, the page size it is mapped with")]
    Unaligned(u64),
}

/// Parses `64M`, `256MiB`, `1G`, `1GiB`, `65536K` or a plain byte count (units are powers of
/// 1024; the letter is case-insensitive).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let malformed = || SizeError::Malformed(text.to_owned());
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(malformed());
    }
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => return Err(malformed()),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| SizeError::Overflow(text.to_owned()))?;
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(text.to_owned()))
}

impl FromStr for MemSize {
    type Err = SizeError;

    fn from_str(text: &str) -> Result<Self, SizeError> {
        MemSize::new(parse_size(text)?)
    }
}

/// A kernel command line that fits the boot ABI: no NUL inside, at most 4 KiB with its NUL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cmdline(String);

/// Why a `--cmdline` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    /// Longer than the boot ABI allows.
    #[error("the command line is {0} bytes long; at most 4095 fit (4 KiB including the NUL)")]
    TooLong(usize),
    /// Contains a NUL byte, which would cut it short in the guest.
    #[error("the command line contains a NUL byte")]
    Nul,
}

impl Cmdline {
    /// Checks `text` against the boot ABI's limits.
    pub fn new(text: &str) -> Result<Self, CmdlineError> {
        if text.len() >= CMDLINE_MAX {
            return Err(CmdlineError::TooLong(text.len()));
        }
        if text.contains('\0') {
            return Err(CmdlineError::Nul);
        }
        Ok(Cmdline(text.to_owned()))
    }

    /// The bytes, without the NUL.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// An Ethernet address for a guest NIC: unicast, not all zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    /// Checks `octets`: the multicast bit must be clear and the address not all zeros.
    pub fn new(octets: [u8; 6]) -> Option<Self> {
        (octets[0] & 1 == 0 && octets != [0; 6]).then_some(MacAddr(octets))
    }

    /// A stable, locally administered address for the NIC on TAP `tap`: QEMU's 52:54:00
    /// prefix, then 24 bits of an FNV-1a hash of the name (the same name gives the same
    /// address on every run and every host-vmm version).
    pub fn for_tap(tap: &str) -> Self {
        let mut h: u32 = 0x811C_9DC5;
        for &b in tap.as_bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        let [_, a, b, c] = h.to_be_bytes();
        MacAddr([0x52, 0x54, 0x00, a, b, c])
    }

    /// The six octets.
    pub fn octets(self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = NetConfigError;

    fn from_str(text: &str) -> Result<Self, NetConfigError> {
        let bad = || NetConfigError::BadMac(text.to_owned());
        let mut octets = [0u8; 6];
        let mut parts = text.split(':');
        for o in &mut octets {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *o = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        MacAddr::new(octets).ok_or(NetConfigError::NotUnicast(text.to_owned()))
    }
}

/// Longest interface name Linux accepts (`IFNAMSIZ` less the NUL).
pub const IFNAME_MAX: usize = 15;

/// A virtio-net card on a TAP: `--net tap=NAME[,mac=MAC]`; away from home, `--net
/// mip[,mac=MAC]` (the tunnel to the home agent) or `--net nat[,tap=NAME][,mac=MAC]` (a TAP
/// the host routes the guest's address into).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The TAP interface (created if it does not exist); empty with `mip`.
    pub tap: String,
    /// `--net mip`: no TAP; the card's frames go through the IP-in-IP tunnel to the
    /// guest's home agent ([`DeviceConfig::tunnel`]), for a guest away from home.
    pub mip: bool,
    /// `--net nat`: the TAP is routed, not bridged: this host routes the guest's address
    /// ([`DeviceConfig::routed`]) into it (network paging, a guest away from home).
    pub nat: bool,
    /// The guest's MAC address ([`MacAddr::for_tap`] unless given).
    pub mac: MacAddr,
}

/// Why a `--net` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetConfigError {
    /// No `tap=`.
    #[error(
        "missing tap=NAME (use tap=NAME[,mac=MAC], or away from home mip[,mac=MAC] or nat[,tap=NAME][,mac=MAC])"
    )]
    MissingTap,
    /// A key other than `tap` or `mac`.
    #[error("unknown key `{0}` (use tap=NAME[,mac=MAC])")]
    UnknownKey(String),
    /// A part without `=`.
    #[error("malformed `{0}`: expected key=value (use tap=NAME[,mac=MAC])")]
    Malformed(String),
    /// A key given twice.
    #[error("`{0}` is given twice")]
    Duplicate(String),
    /// Not a valid Linux interface name.
    #[error(
        "invalid TAP name `{0}`: use 1 to 15 characters, no '/', ':' or whitespace, not . or .."
    )]
    BadTapName(String),
    /// Not six colon-separated hex octets.
    #[error("malformed MAC address `{0}`: use six hex octets, e.g. 52:54:00:12:34:56")]
    BadMac(String),
    /// A multicast or all-zero address.
    #[error(
        "MAC address `{0}` is not a unicast address (the low bit of the first octet must be 0, and not all zeros)"
    )]
    NotUnicast(String),
    /// `--vf` named the TAP `--net` uses.
    #[error("TAP `{0}` is already --net's; the VF needs a TAP of its own")]
    SameTap(String),
}

/// Whether Linux would take `name` as an interface name (`dev_valid_name`).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
}

impl FromStr for NetConfig {
    type Err = NetConfigError;

    fn from_str(text: &str) -> Result<Self, NetConfigError> {
        if let Some(rest) = text.strip_prefix("mip") {
            let mac = match rest {
                "" => None,
                _ => match rest.strip_prefix(",mac=") {
                    Some(mac) => Some(mac.parse()?),
                    None => return Err(NetConfigError::Malformed(text.to_owned())),
                },
            };
            return Ok(NetConfig {
                tap: String::new(),
                mip: true,
                nat: false,
                mac: mac.unwrap_or_else(|| MacAddr::for_tap("mip")),
            });
        }
        if let Some(rest) = text.strip_prefix("nat") {
            let (tap, mac) = match rest {
                "" => (None, None),
                _ => match rest.strip_prefix(',') {
                    Some(pairs) => parse_pairs(pairs)?,
                    None => return Err(NetConfigError::Malformed(text.to_owned())),
                },
            };
            let tap = tap.unwrap_or_else(|| DEFAULT_NAT_TAP.to_owned());
            return Ok(NetConfig {
                mac: mac.unwrap_or_else(|| MacAddr::for_tap(&tap)),
                tap,
                mip: false,
                nat: true,
            });
        }
        let (tap, mac) = parse_tap_spec(text)?;
        let mac = mac.unwrap_or_else(|| MacAddr::for_tap(&tap));
        Ok(NetConfig {
            tap,
            mip: false,
            nat: false,
            mac,
        })
    }
}

/// The emulated 82599 VF on a TAP of its own: `--vf tap=NAME[,mac=MAC]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VfConfig {
    /// The TAP interface (created if it does not exist).
    pub tap: String,
    /// The VF's permanent MAC.
    pub mac: MacAddr,
}

impl VfConfig {
    /// Parses a `--vf` value. Without `mac=` the VF takes `net`'s MAC (both NICs share one
    /// address, so the guest can move traffic between them), or with no `--net` the default
    /// `--net` would pick for that TAP name.
    pub fn parse(text: &str, net: Option<&NetConfig>) -> Result<Self, NetConfigError> {
        let (tap, mac) = parse_tap_spec(text)?;
        if net.is_some_and(|n| n.tap == tap) {
            return Err(NetConfigError::SameTap(tap));
        }
        let mac = match (mac, net) {
            (Some(mac), _) => mac,
            (None, Some(net)) => net.mac,
            (None, None) => MacAddr::for_tap(&tap),
        };
        Ok(VfConfig { tap, mac })
    }
}

/// The TAP of `--net nat` unless `tap=` names one.
pub const DEFAULT_NAT_TAP: &str = "nat0";

/// Parses `tap=NAME[,mac=MAC]` (the grammar of `--net` and `--vf`).
fn parse_tap_spec(text: &str) -> Result<(String, Option<MacAddr>), NetConfigError> {
    let (tap, mac) = parse_pairs(text)?;
    Ok((tap.ok_or(NetConfigError::MissingTap)?, mac))
}

/// Parses `[tap=NAME][,mac=MAC]`, in any order.
fn parse_pairs(text: &str) -> Result<(Option<String>, Option<MacAddr>), NetConfigError> {
    let mut tap = None;
    let mut mac = None;
    for part in text.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| NetConfigError::Malformed(part.to_owned()))?;
        let slot_taken = match key {
            "tap" => tap.replace(value).is_some(),
            "mac" => mac.replace(value).is_some(),
            _ => return Err(NetConfigError::UnknownKey(key.to_owned())),
        };
        if slot_taken {
            return Err(NetConfigError::Duplicate(key.to_owned()));
        }
    }
    if let Some(tap) = tap
        && !valid_ifname(tap)
    {
        return Err(NetConfigError::BadTapName(tap.to_owned()));
    }
    let mac = mac.map(str::parse).transpose()?;
    Ok((tap.map(str::to_owned), mac))
}

/// Everything `host-vmm run` needs, already validated.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The guest ELF.
    pub image: PathBuf,
    /// Guest RAM size.
    pub mem: MemSize,
    /// Kernel command line.
    pub cmdline: Cmdline,
    /// The devices besides COM1 and the PCI bus.
    pub devices: DeviceConfig,
}

/// The devices a VM is made of besides RAM, the image, COM1 and the PCI bus.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceConfig {
    /// virtio-net on a TAP (`--net`).
    pub net: Option<NetConfig>,
    /// The emulated VF on a TAP (`--vf`).
    pub vf: Option<VfConfig>,
    /// A virtio-console for the guest agent (every VM with an API socket has one).
    pub agent: bool,
    /// Where `--net mip` tunnels to: the guest is away from home.
    pub tunnel: Option<TunnelEnds>,
    /// The guest's address `--net nat` routes into its TAP (from its `nat:` setting).
    pub routed: Option<std::net::Ipv4Addr>,
}

/// The ends of a guest's tunnel home (from its Mobile IP setting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelEnds {
    /// The home agent.
    pub home_agent: std::net::Ipv4Addr,
    /// The guest's home address.
    pub home: std::net::Ipv4Addr,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("64M"), Ok(64 * MIB));
        assert_eq!(parse_size("256MiB"), Ok(256 * MIB));
        assert_eq!(parse_size("256mib"), Ok(256 * MIB));
        assert_eq!(parse_size("1G"), Ok(GIB));
        assert_eq!(parse_size("1GiB"), Ok(GIB));
        assert_eq!(parse_size("65536K"), Ok(64 * MIB));
        assert_eq!(parse_size("134217728"), Ok(128 * MIB));
        assert_eq!(parse_size("134217728B"), Ok(128 * MIB));
    }

    #[test]
    fn malformed_sizes_are_refused() {
        for bad in [
            "", "M", "12Q", "-1M", "abc", "1.5G", " 64M", "64 M", "64MB", "0x100M",
        ] {
            assert_eq!(
                parse_size(bad),
                Err(SizeError::Malformed(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_size("99999999999G"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("99999999999999999999999"),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn guest_ram_limits_are_enforced() {
        assert_eq!("16M".parse(), Ok(MemSize(16 * MIB)));
        assert_eq!("3G".parse(), Ok(MemSize(3 * GIB)));
        assert_eq!("3072M".parse(), Ok(MemSize(3 * GIB)));
        assert_eq!("14M".parse::<MemSize>(), Err(SizeError::TooSmall(14 * MIB)));
        assert_eq!(
            "3074M".parse::<MemSize>(),
            Err(SizeError::TooLarge(3074 * MIB))
        );
        assert_eq!(
            "65M".parse::<MemSize>(),
            Err(SizeError::Unaligned(65 * MIB))
        );
        assert_eq!("0".parse::<MemSize>(), Err(SizeError::TooSmall(0)));
    }

    #[test]
    fn sizes_display_in_the_largest_whole_unit() {
        assert_eq!(MemSize(64 * MIB).to_string(), "64 MiB");
        assert_eq!(MemSize(2 * GIB).to_string(), "2 GiB");
        assert_eq!(MemSize(1536 * MIB).to_string(), "1536 MiB");
    }

    #[test]
    fn command_lines_must_fit_in_4_kib_with_the_nul() {
        assert!(Cmdline::new(&"x".repeat(4095)).is_ok());
        assert_eq!(
            Cmdline::new(&"x".repeat(4096)),
            Err(CmdlineError::TooLong(4096))
        );
        assert_eq!(Cmdline::new("a\0b"), Err(CmdlineError::Nul));
        assert_eq!(Cmdline::new("log=debug").unwrap().as_bytes(), b"log=debug");
    }

    #[test]
    fn net_specs_parse() {
        let n: NetConfig = "tap=tap0".parse().unwrap();
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac, MacAddr::for_tap("tap0"));
        let n: NetConfig = "mac=52:54:00:AB:cd:01,tap=roam-tap".parse().unwrap();
        assert_eq!(n.mac.octets(), [0x52, 0x54, 0, 0xAB, 0xCD, 1]);
        assert_eq!(n.mac.to_string(), "52:54:00:ab:cd:01");
    }

    #[test]
    fn bad_net_specs_are_refused_with_the_reason() {
        use NetConfigError::*;
        let err = |s: &str| s.parse::<NetConfig>().unwrap_err();
        assert_eq!(err("mac=52:54:00:00:00:01"), MissingTap);
        assert_eq!(err(""), Malformed(String::new()));
        assert_eq!(err("tap0"), Malformed("tap0".into()));
        assert_eq!(err("tap=a,vhost=on"), UnknownKey("vhost".into()));
        assert_eq!(err("tap=a,tap=b"), Duplicate("tap".into()));
        assert_eq!(err("tap="), BadTapName(String::new()));
        assert_eq!(
            err("tap=sixteen-chars-xx"),
            BadTapName("sixteen-chars-xx".into())
        );
        assert_eq!(err("tap=a/b"), BadTapName("a/b".into()));
        assert_eq!(err("tap=.."), BadTapName("..".into()));
        for mac in [
            "52:54:00:00:00",
            "52:54:00:00:00:01:02",
            "52-54-00-00-00-01",
            "5:54:00:00:00:01",
            "zz:54:00:00:00:01",
            "+1:54:00:00:00:01",
        ] {
            assert_eq!(
                err(&format!("tap=a,mac={mac}")),
                BadMac(mac.into()),
                "{mac}"
            );
        }
        assert_eq!(
            err("tap=a,mac=01:00:5e:00:00:01"),
            NotUnicast("01:00:5e:00:00:01".into())
        );
        assert_eq!(
            err("tap=a,mac=00:00:00:00:00:00"),
            NotUnicast("00:00:00:00:00:00".into())
        );
        assert!(err("tap=a,foo").to_string().contains("key=value"));
    }

    #[test]
    fn away_from_home_specs_parse() {
        let n: NetConfig = "mip,mac=52:54:00:00:00:07".parse().unwrap();
        assert!(n.mip && !n.nat && n.tap.is_empty());
        let n: NetConfig = "nat".parse().unwrap();
        assert!(n.nat && !n.mip);
        assert_eq!((n.tap.as_str(), n.mac), ("nat0", MacAddr::for_tap("nat0")));
        let n: NetConfig = "nat,mac=52:54:00:00:00:07,tap=vm7".parse().unwrap();
        assert_eq!(n.tap, "vm7");
        assert_eq!(n.mac.to_string(), "52:54:00:00:00:07");
        let n: NetConfig = "nat,mac=52:54:00:00:00:08".parse().unwrap();
        assert_eq!(
            (n.tap.as_str(), n.mac.to_string().as_str()),
            ("nat0", "52:54:00:00:00:08")
        );
        use NetConfigError::*;
        let err = |s: &str| s.parse::<NetConfig>().unwrap_err();
        assert_eq!(err("natty"), Malformed("natty".into()));
        assert_eq!(err("nat,tap=a/b"), BadTapName("a/b".into()));
        assert_eq!(err("nat,vhost=on"), UnknownKey("vhost".into()));
        assert_eq!(err("nat,"), Malformed(String::new()));
    }

    #[test]
    fn vf_specs_share_the_net_mac_unless_given_one() {
        let net: NetConfig = "tap=n0,mac=52:54:00:00:00:07".parse().unwrap();
        let vf = VfConfig::parse("tap=v0", Some(&net)).unwrap();
        assert_eq!((vf.tap.as_str(), vf.mac), ("v0", net.mac));
        let vf = VfConfig::parse("tap=v0", None).unwrap();
        assert_eq!(vf.mac, MacAddr::for_tap("v0"));
        let vf = VfConfig::parse("tap=v0,mac=52:54:00:00:00:09", Some(&net)).unwrap();
        assert_eq!(vf.mac.to_string(), "52:54:00:00:00:09");
        assert_eq!(
            VfConfig::parse("tap=n0", Some(&net)),
            Err(NetConfigError::SameTap("n0".into()))
        );
        assert_eq!(
            VfConfig::parse("mac=52:54:00:00:00:09", None),
            Err(NetConfigError::MissingTap)
        );
        assert_eq!(
            VfConfig::parse("tap=v0,queues=2", None),
            Err(NetConfigError::UnknownKey("queues".into()))
        );
    }

    #[test]
    fn default_macs_are_stable_local_unicast_and_differ_by_name() {
        let a = MacAddr::for_tap("tap0");
        assert_eq!(a, MacAddr::for_tap("tap0"));
        assert_ne!(a, MacAddr::for_tap("tap1"));
        assert_eq!(&a.octets()[..3], &[0x52, 0x54, 0x00]);
        assert_eq!(a.octets()[0] & 0b11, 0b10, "locally administered, unicast");
        // Pinned: a changed hash would change every guest's address.
        assert_eq!(MacAddr::for_tap("tap0").to_string(), "52:54:00:4a:63:d6");
    }
}
