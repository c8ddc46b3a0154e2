//! Keys on disk: the home agent's key file (`host-vmm home-agent --keys FILE`), one
//! security association per line, and the mobile node's key file (`key=@FILE` in the
//! mobility setting), one hex key. Both are refused at load with a message naming the file
//! (and line), never at the first registration.
//!
//! Key file lines: `spi=N home=A.B.C.D key=HEX [skew=SECONDS]`, fields in any order,
//! separated by spaces or tabs; `#` starts a comment; blank lines are ignored.
//!
//! ```text
//! # VM "web": home address 198.18.1.10
//! spi=300 home=198.18.1.10 key=00112233445566778899aabbccddeeff
//! spi=301 home=198.18.1.11 key=0f1e2d3c4b5a69788796a5b4c3d2e1f0 skew=30
//! ```

use crate::auth::{DEFAULT_SKEW, MIN_KEY_LEN, SaError, SecurityAssociation};
use crate::message::MIN_SPI;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// What is wrong with a hex key.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum KeyProblem {
    /// A character that is not a hex digit.
    #[error("Key has {ch:?} at character {position}, expected hex digits")]
    NotHex {
        /// The character.
        ch: char,
        /// Its position in the key, from 1.
        position: usize,
    },
    /// Hex digits come in pairs.
    #[error("Key has an odd number of hex digits ({0})")]
    OddLength(usize),
    /// Fewer than 128 bits.
    #[error("Key is {bits} bits, at least 128 are required")]
    TooShort {
        /// Its length in bits.
        bits: usize,
    },
}

/// Decodes a hex key (either case, no separators) of at least 128 bits.
pub fn parse_hex_key(hex: &str) -> Result<Vec<u8>, KeyProblem> {
    if let Some((i, ch)) = hex
        .chars()
        .enumerate()
        .find(|(_, c)| !c.is_ascii_hexdigit())
    {
        return Err(KeyProblem::NotHex {
            ch,
            position: i + 1,
        });
    }
    // Only ASCII hex digits are left: one byte each.
    if !hex.len().is_multiple_of(2) {
        return Err(KeyProblem::OddLength(hex.len()));
    }
    let key: Vec<u8> = hex
        .as_bytes()
        .chunks_exact(2)
        .map(|pair| (nibble(pair[0]) << 4) | nibble(pair[1]))
        .collect();
    if key.len() < MIN_KEY_LEN {
        return Err(KeyProblem::TooShort {
            bits: key.len() * 8,
        });
    }
    Ok(key)
}

fn nibble(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

/// Why the mobile node's key file (and so its security association) was refused.
#[derive(Debug, Error)]
pub enum ClientKeyError {
    /// The file could not be read.
    #[error("Cannot read key file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file does not hold one good key.
    #[error("{}: {problem}", path.display())]
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: KeyProblem,
    },
    /// The key is good but the association is not (an SPI below 256).
    #[error(transparent)]
    Association(#[from] SaError),
}

/// Reads the mobile node's key: a file holding one hex key of at least 128 bits; white
/// space around it (such as the trailing newline) is ignored.
pub fn read_key_file(path: &Path) -> Result<Vec<u8>, ClientKeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| ClientKeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_hex_key(text.trim()).map_err(|problem| ClientKeyError::Bad {
        path: path.to_path_buf(),
        problem,
    })
}

/// One line of the home agent's key file: a security association and the one home address
/// it may register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEntry {
    /// The home address this association authenticates Requests for.
    pub home: Ipv4Addr,
    /// The association.
    pub sa: SecurityAssociation,
    /// Its line in the file, from 1.
    pub line: usize,
}

/// The home agent's security associations, by SPI.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyTable {
    entries: Vec<KeyEntry>,
}

/// What is wrong with one line of a key file.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum KeyLineError {
    /// A word without `=`.
    #[error("Expected NAME=VALUE, found {0:?}")]
    NotNameValue(String),
    /// A name other than spi, home, key and skew.
    #[error("Unknown field {0:?}: expected spi, home, key or skew")]
    UnknownField(String),
    /// The same name twice.
    #[error("Field {0} given twice")]
    DuplicateField(&'static str),
    /// A required name missing.
    #[error("Missing {0}=")]
    MissingField(&'static str),
    /// An SPI that is not a 32-bit number.
    #[error("SPI {0:?} is not a number")]
    BadSpi(String),
    /// An SPI of 0–255.
    #[error("SPI {0} is reserved: use 256 or more")]
    ReservedSpi(u32),
    /// An SPI an earlier line already defines.
    #[error("SPI {spi} is already defined on line {first_line}")]
    DuplicateSpi {
        /// The SPI.
        spi: u32,
        /// The line that defined it first.
        first_line: usize,
    },
    /// A home address that is not a dotted IPv4 unicast address.
    #[error("Home address {0:?} is not an IPv4 unicast address")]
    BadHome(String),
    /// A bad key.
    #[error(transparent)]
    Key(KeyProblem),
    /// A skew that is not a whole number of seconds ≥ 1.
    #[error("Skew {0:?} is not a whole number of seconds, 1 or more")]
    BadSkew(String),
}

/// Why the home agent's key file was refused.
#[derive(Debug, Error)]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("Cannot read key file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A line is wrong.
    #[error("{}:{line}: {problem}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        problem: KeyLineError,
    },
    /// Nothing but comments and blank lines.
    #[error("{}: no security association (lines are `spi=N home=A.B.C.D key=HEX [skew=SECONDS]`)", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// Whether an address can be a home address or a home agent's.
pub(crate) fn is_unicast(addr: Ipv4Addr) -> bool {
    !(addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast())
}

/// One non-blank line (comment already removed) as a key entry.
fn parse_line(text: &str, line: usize) -> Result<KeyEntry, KeyLineError> {
    let (mut spi, mut home, mut key, mut skew) = (None, None, None, None);
    for word in text.split_whitespace() {
        let (name, value) = word
            .split_once('=')
            .ok_or_else(|| KeyLineError::NotNameValue(word.to_string()))?;
        let (slot, name): (&mut Option<&str>, &'static str) = match name {
            "spi" => (&mut spi, "spi"),
            "home" => (&mut home, "home"),
            "key" => (&mut key, "key"),
            "skew" => (&mut skew, "skew"),
            other => return Err(KeyLineError::UnknownField(other.to_string())),
        };
        if slot.replace(value).is_some() {
            return Err(KeyLineError::DuplicateField(name));
        }
    }
    let spi = spi.ok_or(KeyLineError::MissingField("spi"))?;
    let spi: u32 = spi
        .parse()
        .map_err(|_| KeyLineError::BadSpi(spi.to_string()))?;
    if spi < MIN_SPI {
        return Err(KeyLineError::ReservedSpi(spi));
    }
    let home_text = home.ok_or(KeyLineError::MissingField("home"))?;
    let home = home_text
        .parse()
        .ok()
        .filter(|&addr| is_unicast(addr))
        .ok_or_else(|| KeyLineError::BadHome(home_text.to_string()))?;
    let key =
        parse_hex_key(key.ok_or(KeyLineError::MissingField("key"))?).map_err(KeyLineError::Key)?;
    let skew = match skew {
        None => DEFAULT_SKEW,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|&secs| secs >= 1)
            .map(|secs| Duration::from_secs(u64::from(secs)))
            .ok_or_else(|| KeyLineError::BadSkew(text.to_string()))?,
    };
    let sa = SecurityAssociation::new(spi, key)
        .map_err(|e| match e {
            SaError::ReservedSpi(spi) => KeyLineError::ReservedSpi(spi),
            SaError::ShortKey { bits } => KeyLineError::Key(KeyProblem::TooShort { bits }),
        })?
        .with_skew(skew);
    Ok(KeyEntry { home, sa, line })
}

impl KeyTable {
    /// Reads and checks a key file.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Checks a key file's text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, KeyFileError> {
        let mut entries: Vec<KeyEntry> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.split_once('#').map_or(raw, |(before, _)| before);
            if content.trim().is_empty() {
                continue;
            }
            let refuse = |problem| KeyFileError::Line {
                path: path.to_path_buf(),
                line,
                problem,
            };
            let entry = parse_line(content, line).map_err(refuse)?;
            if let Some(first) = entries.iter().find(|e| e.sa.spi() == entry.sa.spi()) {
                return Err(refuse(KeyLineError::DuplicateSpi {
                    spi: entry.sa.spi(),
                    first_line: first.line,
                }));
            }
            entries.push(entry);
        }
        if entries.is_empty() {
            return Err(KeyFileError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(KeyTable { entries })
    }

    /// The entry with this SPI.
    pub fn by_spi(&self, spi: u32) -> Option<&KeyEntry> {
        self.entries.iter().find(|e| e.sa.spi() == spi)
    }

    /// The association to verify a Request for `home` whose MHAE names `spi`: none when the
    /// SPI is unknown or belongs to another home address (a key never registers an address
    /// it was not given for).
    pub fn for_request(&self, home: Ipv4Addr, spi: u32) -> Option<&SecurityAssociation> {
        self.by_spi(spi)
            .filter(|entry| entry.home == home)
            .map(|entry| &entry.sa)
    }

    /// Every entry, in file order.
    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    /// How many associations.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none (never, for a loaded file).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests;
