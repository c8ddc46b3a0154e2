//! The mobility setting a destination host-vmm receives (`host-vmm receive --mobility ...`
//! and the API): how a moved VM keeps its address on the far side of a wide-area move.
//!
//! - `none` (the default): nothing beyond the move's own announcements.
//! - `mip:ha=ADDR,home=HOA/PREFIX,spi=N,key=@FILE[,lifetime=S]`: register with a Mobile IP
//!   home agent. The key is always a file (`@FILE`, one hex key, see
//!   [`crate::read_key_file`]): a key on the command line would show in the process list.
//!   The lifetime is 1–65534 s, 300 by default.
//! - `nat:edge=ADDR[,edge=ADDR...],home=A/PREFIX,loc=L,spi=N,key=@FILE[,site=ADDR][,lifetime=S]`:
//!   network paging: the address-translation edges (`host-vmm nat-edge`) map the VM's
//!   address A to its location address L at the site it runs on. `edge=` (one to
//!   [`MAX_EDGES`], repeatable) are the client edges, switched while the VM is paused;
//!   `site=` is this site's own edge, told first; `loc=` is needed away from home only.
//!   Same key file, SPI and lifetime rules as `mip:`.
//!
//! Field values cannot contain commas (a key file path included).

use crate::auth::SecurityAssociation;
use crate::keys::{ClientKeyError, is_unicast, read_key_file};
use crate::message::{Flags, MIN_SPI, RegistrationRequest};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;
use thiserror::Error;

/// The registration lifetime when the setting gives none, in seconds.
pub const DEFAULT_LIFETIME: u16 = 300;

/// How a moved VM keeps its address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Mobility {
    /// No mobility protocol.
    #[default]
    None,
    /// Register with a Mobile IPv4 home agent.
    Mip(MipSetting),
    /// Address translation at the edges ("network paging").
    Nat(NatSetting),
}

/// What `mip:` says: the destination host registers the VM's home address with its home
/// agent, as the VM's co-located care-of address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MipSetting {
    /// The home agent's address (`ha=`): Requests go to its UDP port 434.
    pub home_agent: Ipv4Addr,
    /// The VM's home address (`home=`, before the `/`).
    pub home_address: Ipv4Addr,
    /// The home network's prefix length (`home=`, after the `/`), 1–32.
    pub prefix_len: u8,
    /// The security association's SPI (`spi=`), ≥ 256.
    pub spi: u32,
    /// The file holding the hex key (`key=@FILE`).
    pub key_file: PathBuf,
    /// Seconds to request (`lifetime=`), 1–65534.
    pub lifetime: u16,
}

/// The most edges a `nat:` setting may name (`edge=` given this many times at most).
pub const MAX_EDGES: usize = 8;

/// What `nat:` says ("network paging"): the VM keeps its address `home` as its
/// correspondents see it; at a foreign site it has a location address `loc` there, and the
/// address-translation edges learn the mapping through the same authenticated Registration
/// Requests a home agent takes (home address = the VM's address, care-of address = its
/// location; lifetime 0 with care-of = home address when it is home again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatSetting {
    /// The client edges (`edge=`, one or more, in order): the translators in front of the
    /// correspondents, switched to the new location while the VM is paused.
    pub edges: Vec<Ipv4Addr>,
    /// This site's own edge (`site=`), told before the VM pauses: its entry changes nothing
    /// until a client edge sends traffic to the location address.
    pub site: Option<Ipv4Addr>,
    /// The VM's address (`home=`, before the `/`), the one correspondents use.
    pub home_address: Ipv4Addr,
    /// Its home network's prefix length (`home=`, after the `/`), 1–32.
    pub prefix_len: u8,
    /// The VM's location address at this site (`loc=`); needed away from home only.
    pub location: Option<Ipv4Addr>,
    /// The security association's SPI (`spi=`), ≥ 256 (the same at every edge).
    pub spi: u32,
    /// The file holding the hex key (`key=@FILE`).
    pub key_file: PathBuf,
    /// Seconds to request (`lifetime=`), 1–65534.
    pub lifetime: u16,
}

/// Why a mobility setting was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum MobilityError {
    /// Not `none`, `mip:...` or `nat:...`.
    #[error(
        "Unknown mobility {0:?}: expected none, mip:ha=ADDR,home=HOA/PREFIX,spi=N,key=@FILE[,lifetime=S] or nat:edge=ADDR,home=A/PREFIX,loc=L,spi=N,key=@FILE[,site=ADDR][,lifetime=S]"
    )]
    UnknownKind(String),
    /// A `mip:` setting that does not hold.
    #[error("mip: {0}")]
    Mip(SettingError),
    /// A `nat:` setting that does not hold.
    #[error("nat: {0}")]
    Nat(SettingError),
}

/// What is wrong inside a `mip:` or `nat:` setting.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SettingError {
    /// A part without `=`.
    #[error("expected NAME=VALUE, found {0:?}")]
    NotNameValue(String),
    /// A name this kind of setting does not have.
    #[error("unknown field {name:?}: expected {expected}")]
    UnknownField {
        /// The name given.
        name: String,
        /// The names there are.
        expected: &'static str,
    },
    /// The same name twice (for a name that is not repeatable).
    #[error("{0}= given twice")]
    DuplicateField(&'static str),
    /// A required name missing.
    #[error("missing {0}=")]
    MissingField(&'static str),
    /// An address that does not parse or is not unicast.
    #[error("{field}={value:?} is not an IPv4 unicast address")]
    BadAddress {
        /// Which field.
        field: &'static str,
        /// What it said.
        value: String,
    },
    /// `home=` without a good `/PREFIX`.
    #[error("home={0:?} needs a prefix length 1–32 (home=ADDRESS/PREFIX)")]
    BadPrefix(String),
    /// The home address is the home agent's.
    #[error("the home address {0} is the home agent's address")]
    HomeIsAgent(Ipv4Addr),
    /// The home address is an edge's.
    #[error("the home address {0} is an edge's address")]
    HomeIsEdge(Ipv4Addr),
    /// The location address is the home address.
    #[error(
        "loc={0} is the home address: a location address is the VM's address at a foreign site"
    )]
    LocationIsHome(Ipv4Addr),
    /// The location address is an edge's.
    #[error("loc={0} is an edge's address")]
    LocationIsEdge(Ipv4Addr),
    /// More `edge=` than [`MAX_EDGES`].
    #[error("{0} edges given; at most {MAX_EDGES}")]
    TooManyEdges(usize),
    /// An SPI that is not a 32-bit number.
    #[error("spi={0:?} is not a number")]
    BadSpi(String),
    /// An SPI of 0–255.
    #[error("SPI {0} is reserved: use 256 or more")]
    ReservedSpi(u32),
    /// `key=` not naming a file.
    #[error(
        "key= must name a file (key=@FILE): a key on the command line would show in the process list"
    )]
    InlineKey,
    /// `key=@` with nothing after it.
    #[error("key=@ needs a file name")]
    EmptyKeyFile,
    /// A lifetime outside 1–65534.
    #[error("lifetime={0:?} is not a number of seconds from 1 to 65534")]
    BadLifetime(String),
}

fn parse_addr(field: &'static str, value: &str) -> Result<Ipv4Addr, SettingError> {
    value
        .parse()
        .ok()
        .filter(|&addr| is_unicast(addr))
        .ok_or_else(|| SettingError::BadAddress {
            field,
            value: value.to_string(),
        })
}

/// The `NAME=VALUE` parts of a setting, by name, in the order given. `names` are the names
/// there are; those in `repeatable` may come more than once, the others once at most.
struct Fields<'a> {
    found: Vec<(&'static str, &'a str)>,
}

impl<'a> Fields<'a> {
    fn split(
        text: &'a str,
        names: &[&'static str],
        repeatable: &[&'static str],
        expected: &'static str,
    ) -> Result<Fields<'a>, SettingError> {
        let mut found: Vec<(&'static str, &'a str)> = Vec::new();
        for part in text.split(',') {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| SettingError::NotNameValue(part.to_string()))?;
            let name =
                *names
                    .iter()
                    .find(|n| **n == name)
                    .ok_or_else(|| SettingError::UnknownField {
                        name: name.to_string(),
                        expected,
                    })?;
            if !repeatable.contains(&name) && found.iter().any(|(n, _)| *n == name) {
                return Err(SettingError::DuplicateField(name));
            }
            found.push((name, value));
        }
        Ok(Fields { found })
    }

    /// The value of `name`, if given.
    fn get(&self, name: &str) -> Option<&'a str> {
        self.found.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    /// Every value of `name`, in order.
    fn all(&self, name: &str) -> Vec<&'a str> {
        self.found
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .collect()
    }

    fn required(&self, name: &'static str) -> Result<&'a str, SettingError> {
        self.get(name).ok_or(SettingError::MissingField(name))
    }

    /// `home=ADDRESS/PREFIX`.
    fn home(&self) -> Result<(Ipv4Addr, u8), SettingError> {
        let home = self.required("home")?;
        let (address, prefix) = home
            .split_once('/')
            .ok_or_else(|| SettingError::BadPrefix(home.to_string()))?;
        let address = parse_addr("home", address)?;
        let prefix_len = prefix
            .parse::<u8>()
            .ok()
            .filter(|len| (1..=32).contains(len))
            .ok_or_else(|| SettingError::BadPrefix(home.to_string()))?;
        Ok((address, prefix_len))
    }

    /// `spi=N`, N ≥ 256.
    fn spi(&self) -> Result<u32, SettingError> {
        let text = self.required("spi")?;
        let spi: u32 = text
            .parse()
            .map_err(|_| SettingError::BadSpi(text.to_string()))?;
        if spi < MIN_SPI {
            return Err(SettingError::ReservedSpi(spi));
        }
        Ok(spi)
    }

    /// `key=@FILE`.
    fn key_file(&self) -> Result<PathBuf, SettingError> {
        let file = self
            .required("key")?
            .strip_prefix('@')
            .ok_or(SettingError::InlineKey)?;
        if file.is_empty() {
            return Err(SettingError::EmptyKeyFile);
        }
        Ok(PathBuf::from(file))
    }

    /// `lifetime=S`, 1–65534, [`DEFAULT_LIFETIME`] unless given.
    fn lifetime(&self) -> Result<u16, SettingError> {
        match self.get("lifetime") {
            None => Ok(DEFAULT_LIFETIME),
            Some(text) => text
                .parse::<u16>()
                .ok()
                .filter(|secs| (1..=65534).contains(secs))
                .ok_or_else(|| SettingError::BadLifetime(text.to_string())),
        }
    }
}

impl FromStr for Mobility {
    type Err = MobilityError;

    fn from_str(text: &str) -> Result<Self, MobilityError> {
        if text == "none" {
            Ok(Mobility::None)
        } else if let Some(rest) = text.strip_prefix("mip:") {
            rest.parse().map(Mobility::Mip)
        } else if let Some(rest) = text.strip_prefix("nat:") {
            rest.parse().map(Mobility::Nat)
        } else {
            Err(MobilityError::UnknownKind(text.to_string()))
        }
    }
}

impl FromStr for MipSetting {
    type Err = MobilityError;

    /// Parses what follows `mip:`.
    fn from_str(text: &str) -> Result<Self, MobilityError> {
        MipSetting::parse(text).map_err(MobilityError::Mip)
    }
}

impl MipSetting {
    fn parse(text: &str) -> Result<MipSetting, SettingError> {
        let fields = Fields::split(
            text,
            &["ha", "home", "spi", "key", "lifetime"],
            &[],
            "ha, home, spi, key or lifetime",
        )?;
        let home_agent = parse_addr("ha", fields.required("ha")?)?;
        let (home_address, prefix_len) = fields.home()?;
        if home_address == home_agent {
            return Err(SettingError::HomeIsAgent(home_address));
        }
        Ok(MipSetting {
            home_agent,
            home_address,
            prefix_len,
            spi: fields.spi()?,
            key_file: fields.key_file()?,
            lifetime: fields.lifetime()?,
        })
    }
}

impl FromStr for NatSetting {
    type Err = MobilityError;

    /// Parses what follows `nat:`.
    fn from_str(text: &str) -> Result<Self, MobilityError> {
        NatSetting::parse(text).map_err(MobilityError::Nat)
    }
}

impl NatSetting {
    fn parse(text: &str) -> Result<NatSetting, SettingError> {
        let fields = Fields::split(
            text,
            &["edge", "site", "home", "loc", "spi", "key", "lifetime"],
            &["edge"],
            "edge, site, home, loc, spi, key or lifetime",
        )?;
        let given = fields.all("edge");
        if given.is_empty() {
            return Err(SettingError::MissingField("edge"));
        }
        if given.len() > MAX_EDGES {
            return Err(SettingError::TooManyEdges(given.len()));
        }
        let edges = given
            .into_iter()
            .map(|e| parse_addr("edge", e))
            .collect::<Result<Vec<_>, _>>()?;
        let site = fields
            .get("site")
            .map(|s| parse_addr("site", s))
            .transpose()?;
        let (home_address, prefix_len) = fields.home()?;
        let location = fields
            .get("loc")
            .map(|l| parse_addr("loc", l))
            .transpose()?;
        let every_edge = || edges.iter().chain(site.iter());
        if every_edge().any(|e| *e == home_address) {
            return Err(SettingError::HomeIsEdge(home_address));
        }
        if let Some(loc) = location {
            if loc == home_address {
                return Err(SettingError::LocationIsHome(loc));
            }
            if every_edge().any(|e| *e == loc) {
                return Err(SettingError::LocationIsEdge(loc));
            }
        }
        Ok(NatSetting {
            edges,
            site,
            home_address,
            prefix_len,
            location,
            spi: fields.spi()?,
            key_file: fields.key_file()?,
            lifetime: fields.lifetime()?,
        })
    }

    /// Reads the key file and makes the security association (default skew).
    pub fn security_association(&self) -> Result<SecurityAssociation, ClientKeyError> {
        let key = read_key_file(&self.key_file)?;
        Ok(SecurityAssociation::new(self.spi, key)?)
    }

    /// The Request that tells `edge` the VM is at `care_of` (its location address; the
    /// home address with lifetime 0 when it is home): no flags (nothing is tunnelled), the
    /// setting's lifetime, the edge in the Home Agent field. Sign it before sending.
    pub fn registration_request(
        &self,
        edge: Ipv4Addr,
        care_of: Ipv4Addr,
        identification: u64,
    ) -> RegistrationRequest {
        RegistrationRequest {
            flags: Flags::default(),
            lifetime: self.lifetime,
            home_address: self.home_address,
            home_agent: edge,
            care_of,
            identification,
            extensions: Vec::new(),
        }
    }

    /// The Request that tells `edge` the VM is home again (lifetime 0, care-of address =
    /// home address): the edge removes its mapping.
    pub fn deregistration_request(
        &self,
        edge: Ipv4Addr,
        identification: u64,
    ) -> RegistrationRequest {
        RegistrationRequest {
            lifetime: 0,
            ..self.registration_request(edge, self.home_address, identification)
        }
    }
}

impl fmt::Display for NatSetting {
    /// The `nat:` setting that parses back to this one (every field written).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("nat:")?;
        for edge in &self.edges {
            write!(f, "edge={edge},")?;
        }
        if let Some(site) = self.site {
            write!(f, "site={site},")?;
        }
        write!(f, "home={}/{},", self.home_address, self.prefix_len)?;
        if let Some(loc) = self.location {
            write!(f, "loc={loc},")?;
        }
        write!(
            f,
            "spi={},key=@{},lifetime={}",
            self.spi,
            self.key_file.display(),
            self.lifetime
        )
    }
}

impl fmt::Display for MipSetting {
    /// The `mip:` setting that parses back to this one (every field written).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mip:ha={},home={}/{},spi={},key=@{},lifetime={}",
            self.home_agent,
            self.home_address,
            self.prefix_len,
            self.spi,
            self.key_file.display(),
            self.lifetime
        )
    }
}

impl fmt::Display for Mobility {
    /// The setting as it is written on the command line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mobility::None => f.write_str("none"),
            Mobility::Mip(mip) => mip.fmt(f),
            Mobility::Nat(nat) => nat.fmt(f),
        }
    }
}

impl MipSetting {
    /// Reads the key file and makes the security association (default skew).
    pub fn security_association(&self) -> Result<SecurityAssociation, ClientKeyError> {
        let key = read_key_file(&self.key_file)?;
        Ok(SecurityAssociation::new(self.spi, key)?)
    }

    /// The Request that binds the home address to `care_of` (this host's address), with
    /// Roam's flags (`D`, `T`) and the setting's lifetime; sign it before sending.
    pub fn registration_request(
        &self,
        care_of: Ipv4Addr,
        identification: u64,
    ) -> RegistrationRequest {
        RegistrationRequest {
            flags: Flags::ROAM,
            lifetime: self.lifetime,
            home_address: self.home_address,
            home_agent: self.home_agent,
            care_of,
            identification,
            extensions: Vec::new(),
        }
    }

    /// The Request that removes every binding of the home address (lifetime 0, care-of
    /// address = home address): the VM is back on its home link, or gone.
    pub fn deregistration_request(&self, identification: u64) -> RegistrationRequest {
        RegistrationRequest {
            lifetime: 0,
            ..self.registration_request(self.home_address, identification)
        }
    }
}

#[cfg(test)]
mod tests;
