//! The mobility setting a destination host-vmm receives (`host-vmm receive --mobility ...`
//! and the API): how a moved VM keeps its address on the far side of a wide-area move.
//!
//! - `none` (the default): nothing beyond the move's own announcements.
//! - `mip:ha=ADDR,home=HOA/PREFIX,spi=N,key=@FILE[,lifetime=S]`: register with a Mobile IP
//!   home agent. The key is always a file (`@FILE`, one hex key, see
//!   [`crate::read_key_file`]): a key on the command line would show in the process list.
//!   The lifetime is 1–65534 s, 300 by default.
//! - `nat:...`: switch an address-translation rule instead; kept as given for now.
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
    /// Address translation ("network paging"): what follows `nat:`, not yet interpreted.
    Nat(String),
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

/// Why a mobility setting was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum MobilityError {
    /// Not `none`, `mip:...` or `nat:...`.
    #[error(
        "Unknown mobility {0:?}: expected none, mip:ha=ADDR,home=HOA/PREFIX,spi=N,key=@FILE[,lifetime=S] or nat:..."
    )]
    UnknownKind(String),
    /// A part without `=`.
    #[error("mip: expected NAME=VALUE, found {0:?}")]
    NotNameValue(String),
    /// A name other than ha, home, spi, key and lifetime.
    #[error("mip: unknown field {0:?}: expected ha, home, spi, key or lifetime")]
    UnknownField(String),
    /// The same name twice.
    #[error("mip: {0}= given twice")]
    DuplicateField(&'static str),
    /// A required name missing.
    #[error("mip: missing {0}=")]
    MissingField(&'static str),
    /// An address that does not parse or is not unicast.
    #[error("mip: {field}={value:?} is not an IPv4 unicast address")]
    BadAddress {
        /// Which field.
        field: &'static str,
        /// What it said.
        value: String,
    },
    /// `home=` without a good `/PREFIX`.
    #[error("mip: home={0:?} needs a prefix length 1–32 (home=ADDRESS/PREFIX)")]
    BadPrefix(String),
    /// The home address is the home agent's.
    #[error("mip: the home address {0} is the home agent's address")]
    HomeIsAgent(Ipv4Addr),
    /// An SPI that is not a 32-bit number.
    #[error("mip: spi={0:?} is not a number")]
    BadSpi(String),
    /// An SPI of 0–255.
    #[error("mip: SPI {0} is reserved: use 256 or more")]
    ReservedSpi(u32),
    /// `key=` not naming a file.
    #[error(
        "mip: key= must name a file (key=@FILE): a key on the command line would show in the process list"
    )]
    InlineKey,
    /// `key=@` with nothing after it.
    #[error("mip: key=@ needs a file name")]
    EmptyKeyFile,
    /// A lifetime outside 1–65534.
    #[error("mip: lifetime={0:?} is not a number of seconds from 1 to 65534")]
    BadLifetime(String),
}

fn parse_addr(field: &'static str, value: &str) -> Result<Ipv4Addr, MobilityError> {
    value
        .parse()
        .ok()
        .filter(|&addr| is_unicast(addr))
        .ok_or_else(|| MobilityError::BadAddress {
            field,
            value: value.to_string(),
        })
}

impl FromStr for Mobility {
    type Err = MobilityError;

    fn from_str(text: &str) -> Result<Self, MobilityError> {
        if text == "none" {
            Ok(Mobility::None)
        } else if let Some(rest) = text.strip_prefix("mip:") {
            rest.parse().map(Mobility::Mip)
        } else if let Some(rest) = text.strip_prefix("nat:") {
            Ok(Mobility::Nat(rest.to_string()))
        } else {
            Err(MobilityError::UnknownKind(text.to_string()))
        }
    }
}

impl FromStr for MipSetting {
    type Err = MobilityError;

    /// Parses what follows `mip:`.
    fn from_str(text: &str) -> Result<Self, MobilityError> {
        let (mut ha, mut home, mut spi, mut key, mut lifetime) = (None, None, None, None, None);
        for part in text.split(',') {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| MobilityError::NotNameValue(part.to_string()))?;
            let (slot, name): (&mut Option<&str>, &'static str) = match name {
                "ha" => (&mut ha, "ha"),
                "home" => (&mut home, "home"),
                "spi" => (&mut spi, "spi"),
                "key" => (&mut key, "key"),
                "lifetime" => (&mut lifetime, "lifetime"),
                other => return Err(MobilityError::UnknownField(other.to_string())),
            };
            if slot.replace(value).is_some() {
                return Err(MobilityError::DuplicateField(name));
            }
        }
        let home_agent = parse_addr("ha", ha.ok_or(MobilityError::MissingField("ha"))?)?;
        let home = home.ok_or(MobilityError::MissingField("home"))?;
        let (address, prefix) = home
            .split_once('/')
            .ok_or_else(|| MobilityError::BadPrefix(home.to_string()))?;
        let home_address = parse_addr("home", address)?;
        let prefix_len = prefix
            .parse::<u8>()
            .ok()
            .filter(|len| (1..=32).contains(len))
            .ok_or_else(|| MobilityError::BadPrefix(home.to_string()))?;
        if home_address == home_agent {
            return Err(MobilityError::HomeIsAgent(home_address));
        }
        let spi_text = spi.ok_or(MobilityError::MissingField("spi"))?;
        let spi: u32 = spi_text
            .parse()
            .map_err(|_| MobilityError::BadSpi(spi_text.to_string()))?;
        if spi < MIN_SPI {
            return Err(MobilityError::ReservedSpi(spi));
        }
        let key_file = key
            .ok_or(MobilityError::MissingField("key"))?
            .strip_prefix('@')
            .ok_or(MobilityError::InlineKey)?;
        if key_file.is_empty() {
            return Err(MobilityError::EmptyKeyFile);
        }
        let lifetime = match lifetime {
            None => DEFAULT_LIFETIME,
            Some(text) => text
                .parse::<u16>()
                .ok()
                .filter(|secs| (1..=65534).contains(secs))
                .ok_or_else(|| MobilityError::BadLifetime(text.to_string()))?,
        };
        Ok(MipSetting {
            home_agent,
            home_address,
            prefix_len,
            spi,
            key_file: PathBuf::from(key_file),
            lifetime,
        })
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
            Mobility::Nat(rest) => write!(f, "nat:{rest}"),
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
