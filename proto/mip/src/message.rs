//! Registration Request and Reply (RFC 5944 §3.3, §3.4) and their extensions: the byte
//! layouts, encoding, and a decoder that refuses anything it cannot vouch for. Nothing here
//! computes or checks an authenticator; `auth` does, over the same bytes.

use crate::code::ReplyCode;
use crate::ident::reply_matches;
use std::net::Ipv4Addr;
use thiserror::Error;

/// The UDP port home agents receive Registration Requests on.
pub const MIP_PORT: u16 = 434;
/// Message type of a Registration Request.
pub const REQUEST_TYPE: u8 = 1;
/// Message type of a Registration Reply.
pub const REPLY_TYPE: u8 = 3;
/// Bytes of a Request before its extensions.
pub const REQUEST_LEN: usize = 24;
/// Bytes of a Reply before its extensions.
pub const REPLY_LEN: usize = 20;
/// Extension type of the Mobile-Home Authentication Extension.
pub const MHAE_TYPE: u8 = 32;
/// Bytes of an HMAC-MD5 authenticator.
pub const AUTHENTICATOR_LEN: usize = 16;
/// The MHAE's Length byte with an HMAC-MD5 authenticator: SPI (4) + authenticator (16).
pub const MHAE_DATA_LEN: u8 = 4 + AUTHENTICATOR_LEN as u8;
/// Bytes of a whole MHAE on the wire: Type, Length, SPI, authenticator.
pub const MHAE_LEN: usize = 2 + MHAE_DATA_LEN as usize;
/// The smallest SPI a security association may use: 0–255 are reserved.
pub const MIN_SPI: u32 = 256;
/// Lifetime 0: deregistration.
pub const LIFETIME_DEREGISTER: u16 = 0;
/// Lifetime 0xFFFF: infinite.
pub const LIFETIME_INFINITE: u16 = 0xFFFF;

/// Byte positions inside the fixed parts (RFC 5944 §3.3, §3.4).
mod field {
    use std::ops::Range;

    pub const TYPE: usize = 0;
    /// Request: the flag bits. Reply: the code.
    pub const FLAGS_OR_CODE: usize = 1;
    pub const LIFETIME: Range<usize> = 2..4;
    pub const HOME_ADDRESS: Range<usize> = 4..8;
    pub const HOME_AGENT: Range<usize> = 8..12;
    pub const REQUEST_CARE_OF: Range<usize> = 12..16;
    pub const REQUEST_ID: Range<usize> = 16..24;
    pub const REPLY_ID: Range<usize> = 12..20;
}

/// The Request's flag bits. `r` (0x04) and `x` (0x01) are sent as 0 and ignored on receipt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags {
    /// `S` (0x80): keep the existing bindings as well (simultaneous bindings).
    pub simultaneous_bindings: bool,
    /// `B` (0x40): tunnel broadcast datagrams to the mobile node too.
    pub broadcast: bool,
    /// `D` (0x20): the mobile node decapsulates (co-located care-of address).
    pub decapsulation_by_mn: bool,
    /// `M` (0x10): minimal encapsulation (RFC 2004) requested.
    pub minimal_encapsulation: bool,
    /// `G` (0x08): GRE encapsulation requested.
    pub gre: bool,
    /// `T` (0x02): reverse tunnelling requested (RFC 3024).
    pub reverse_tunnel: bool,
}

impl Flags {
    /// `S`.
    pub const S: u8 = 0x80;
    /// `B`.
    pub const B: u8 = 0x40;
    /// `D`.
    pub const D: u8 = 0x20;
    /// `M`.
    pub const M: u8 = 0x10;
    /// `G`.
    pub const G: u8 = 0x08;
    /// `T`.
    pub const T: u8 = 0x02;

    /// What Roam's destination host sends: `D` (it decapsulates for the VM) and `T` (the VM's
    /// packets, sourced from its home address, go back through the home agent).
    pub const ROAM: Flags = Flags {
        simultaneous_bindings: false,
        broadcast: false,
        decapsulation_by_mn: true,
        minimal_encapsulation: false,
        gre: false,
        reverse_tunnel: true,
    };

    /// The flags a byte carries; `r` and `x` are ignored.
    pub fn from_bits(bits: u8) -> Self {
        Flags {
            simultaneous_bindings: bits & Self::S != 0,
            broadcast: bits & Self::B != 0,
            decapsulation_by_mn: bits & Self::D != 0,
            minimal_encapsulation: bits & Self::M != 0,
            gre: bits & Self::G != 0,
            reverse_tunnel: bits & Self::T != 0,
        }
    }

    /// The byte to send (`r` and `x` zero).
    pub fn bits(self) -> u8 {
        [
            (self.simultaneous_bindings, Self::S),
            (self.broadcast, Self::B),
            (self.decapsulation_by_mn, Self::D),
            (self.minimal_encapsulation, Self::M),
            (self.gre, Self::G),
            (self.reverse_tunnel, Self::T),
        ]
        .iter()
        .filter(|(set, _)| *set)
        .fold(0, |bits, (_, bit)| bits | bit)
    }
}

/// The Mobile-Home Authentication Extension (type 32) with an HMAC-MD5 authenticator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MobileHomeAuth {
    /// Security Parameter Index: which security association (≥ [`MIN_SPI`]).
    pub spi: u32,
    /// HMAC-MD5 over the message up to and including this extension's SPI.
    pub authenticator: [u8; AUTHENTICATOR_LEN],
}

/// A skippable extension (type 128–255) this crate does not interpret, kept as received so
/// that a decoded message encodes back to the same bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SkippableExtension {
    kind: u8,
    data: Vec<u8>,
}

/// Why a [`SkippableExtension`] cannot be built.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ExtensionError {
    /// Types 0–127 must be understood by the receiver; this crate emits only those it has
    /// variants for.
    #[error("Extension type {0} is not skippable (128–255)")]
    NotSkippable(u8),
    /// The Length byte counts at most 255 data bytes.
    #[error("Extension data is {0} bytes, at most 255 fit")]
    TooLong(usize),
}

impl SkippableExtension {
    /// A skippable extension of type `kind` (128–255) with at most 255 data bytes.
    pub fn new(kind: u8, data: Vec<u8>) -> Result<Self, ExtensionError> {
        if kind < 128 {
            return Err(ExtensionError::NotSkippable(kind));
        }
        if data.len() > usize::from(u8::MAX) {
            return Err(ExtensionError::TooLong(data.len()));
        }
        Ok(SkippableExtension { kind, data })
    }

    /// The Type byte.
    pub fn kind(&self) -> u8 {
        self.kind
    }

    /// The bytes after the Length byte.
    pub fn data(&self) -> &[u8] {
        &self.data
    }
}

/// One extension in the generic form: Type (1 byte), Length (1 byte: the bytes after it),
/// data.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Extension {
    /// Type 32, which must come last (it authenticates everything before it).
    MobileHomeAuth(MobileHomeAuth),
    /// A type 128–255 extension, ignored by Roam but carried.
    Skippable(SkippableExtension),
}

impl Extension {
    /// The Type byte.
    pub fn kind(&self) -> u8 {
        match self {
            Extension::MobileHomeAuth(_) => MHAE_TYPE,
            Extension::Skippable(ext) => ext.kind,
        }
    }

    /// Bytes on the wire, Type and Length included.
    pub fn encoded_len(&self) -> usize {
        match self {
            Extension::MobileHomeAuth(_) => MHAE_LEN,
            Extension::Skippable(ext) => 2 + ext.data.len(),
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Extension::MobileHomeAuth(auth) => {
                out.extend_from_slice(&[MHAE_TYPE, MHAE_DATA_LEN]);
                out.extend_from_slice(&auth.spi.to_be_bytes());
                out.extend_from_slice(&auth.authenticator);
            }
            Extension::Skippable(ext) => {
                // The constructor keeps the data at most 255 bytes.
                let len = u8::try_from(ext.data.len()).unwrap_or(u8::MAX);
                out.extend_from_slice(&[ext.kind, len]);
                out.extend_from_slice(&ext.data[..usize::from(len)]);
            }
        }
    }
}

/// A Registration Request (type 1): a mobile node (for Roam, the destination host-vmm on
/// the VM's behalf) asks its home agent to bind its home address to a care-of address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RegistrationRequest {
    /// The flag bits.
    pub flags: Flags,
    /// Seconds the binding should last: [`LIFETIME_DEREGISTER`] (0) removes it,
    /// [`LIFETIME_INFINITE`] (0xFFFF) never expires.
    pub lifetime: u16,
    /// The mobile node's home address.
    pub home_address: Ipv4Addr,
    /// The home agent's address.
    pub home_agent: Ipv4Addr,
    /// Where the home agent should tunnel the home address's packets.
    pub care_of: Ipv4Addr,
    /// Replay protection: a 64-bit NTP timestamp (see [`crate::ntp_now`]).
    pub identification: u64,
    /// Extensions in wire order; an MHAE, if any, is last.
    pub extensions: Vec<Extension>,
}

/// A Registration Reply (type 3): the home agent's answer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RegistrationReply {
    /// Accepted or why not.
    pub code: ReplyCode,
    /// Seconds granted (at most those requested); 0 when deregistered.
    pub lifetime: u16,
    /// The mobile node's home address, from the Request.
    pub home_address: Ipv4Addr,
    /// The home agent's own address (its real one when the code is 136).
    pub home_agent: Ipv4Addr,
    /// The Request's, or on code 133 the home agent's clock (see
    /// [`crate::resync_identification`]).
    pub identification: u64,
    /// Extensions in wire order; an MHAE, if any, is last.
    pub extensions: Vec<Extension>,
}

/// Either message, as read from UDP port 434.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Message {
    /// Type 1.
    Request(RegistrationRequest),
    /// Type 3.
    Reply(RegistrationReply),
}

/// Why bytes are not a message this crate accepts. The parser returns one of these for any
/// input it refuses and never panics.
///
/// What a home agent does with one is its choice. RFC 5944 §1.9: a message with an
/// extension of type 0–127 that the receiver does not recognise is silently discarded
/// ([`DecodeError::UnknownExtension`]); for other poorly formed Requests whose fixed part
/// could be read it may answer 134.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the fixed part.
    #[error("Message too short: {len} bytes, a {what} needs {need}")]
    TooShort {
        /// What was being decoded.
        what: &'static str,
        /// Bytes given.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// A Type byte that is neither 1 nor 3 ([`Message::decode`]).
    #[error("Message type {0} is neither a Registration Request (1) nor a Reply (3)")]
    UnknownType(u8),
    /// The Type byte of the other message.
    #[error("Message type {found} is not a {expected}")]
    WrongType {
        /// What was being decoded.
        expected: &'static str,
        /// The Type byte found.
        found: u8,
    },
    /// An extension's Type is the message's last byte.
    #[error("Extension type {kind} at offset {offset} has no Length byte")]
    TruncatedExtension {
        /// Its Type.
        kind: u8,
        /// Its offset in the message.
        offset: usize,
    },
    /// An extension's Length runs past the end of the message.
    #[error("Extension type {kind} at offset {offset} claims {len} bytes, only {available} remain")]
    ExtensionOverrun {
        /// Its Type.
        kind: u8,
        /// Its offset in the message.
        offset: usize,
        /// Its Length byte.
        len: u8,
        /// Bytes after its Length byte.
        available: usize,
    },
    /// A type 0–127 extension this crate does not know: the whole message must be dropped.
    #[error("Unknown non-skippable extension type {kind} at offset {offset}")]
    UnknownExtension {
        /// Its Type.
        kind: u8,
        /// Its offset in the message.
        offset: usize,
    },
    /// An MHAE whose Length is not that of an HMAC-MD5 authenticator.
    #[error(
        "Mobile-Home Authentication Extension at offset {offset} has length {len}, HMAC-MD5 needs 20"
    )]
    BadAuthLength {
        /// Its offset in the message.
        offset: usize,
        /// Its Length byte.
        len: u8,
    },
    /// An MHAE with an SPI of 0–255.
    #[error("SPI {spi} at offset {offset} is reserved (0–255)")]
    ReservedSpi {
        /// The SPI.
        spi: u32,
        /// The MHAE's offset in the message.
        offset: usize,
    },
    /// Anything after the MHAE: it would travel unauthenticated.
    #[error(
        "Extension type {kind} at offset {offset} follows the Mobile-Home Authentication Extension, which must come last"
    )]
    ExtensionAfterAuth {
        /// Its Type.
        kind: u8,
        /// Its offset in the message.
        offset: usize,
    },
}

const REQUEST_NAME: &str = "Registration Request";
const REPLY_NAME: &str = "Registration Reply";

/// Checks the Type byte and the fixed length.
fn check_fixed(bytes: &[u8], kind: u8, what: &'static str, need: usize) -> Result<(), DecodeError> {
    match bytes.get(field::TYPE) {
        None => Err(DecodeError::TooShort { what, len: 0, need }),
        Some(&found) if found != kind => Err(DecodeError::WrongType {
            expected: what,
            found,
        }),
        Some(_) if bytes.len() < need => Err(DecodeError::TooShort {
            what,
            len: bytes.len(),
            need,
        }),
        Some(_) => Ok(()),
    }
}

fn addr(bytes: &[u8], at: std::ops::Range<usize>) -> Ipv4Addr {
    let mut octets = [0; 4];
    octets.copy_from_slice(&bytes[at]);
    Ipv4Addr::from(octets)
}

fn u16_at(bytes: &[u8], at: std::ops::Range<usize>) -> u16 {
    let mut b = [0; 2];
    b.copy_from_slice(&bytes[at]);
    u16::from_be_bytes(b)
}

fn u64_at(bytes: &[u8], at: std::ops::Range<usize>) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&bytes[at]);
    u64::from_be_bytes(b)
}

/// Walks the extensions from `offset` to the end of `bytes` (the UDP payload: the message
/// has no length field of its own, so every byte after the fixed part is an extension).
fn decode_extensions(bytes: &[u8], mut offset: usize) -> Result<Vec<Extension>, DecodeError> {
    let mut extensions = Vec::new();
    let mut after_auth = false;
    while let Some(&kind) = bytes.get(offset) {
        if after_auth {
            return Err(DecodeError::ExtensionAfterAuth { kind, offset });
        }
        let Some(&len) = bytes.get(offset + 1) else {
            return Err(DecodeError::TruncatedExtension { kind, offset });
        };
        let start = offset + 2;
        let Some(data) = bytes.get(start..start + usize::from(len)) else {
            return Err(DecodeError::ExtensionOverrun {
                kind,
                offset,
                len,
                available: bytes.len() - start,
            });
        };
        extensions.push(match kind {
            MHAE_TYPE => {
                if len != MHAE_DATA_LEN {
                    return Err(DecodeError::BadAuthLength { offset, len });
                }
                let (spi, authenticator) = data.split_at(4);
                let spi = u32::from_be_bytes([spi[0], spi[1], spi[2], spi[3]]);
                if spi < MIN_SPI {
                    return Err(DecodeError::ReservedSpi { spi, offset });
                }
                let mut auth = [0; AUTHENTICATOR_LEN];
                auth.copy_from_slice(authenticator);
                after_auth = true;
                Extension::MobileHomeAuth(MobileHomeAuth {
                    spi,
                    authenticator: auth,
                })
            }
            128..=u8::MAX => Extension::Skippable(SkippableExtension {
                kind,
                data: data.to_vec(),
            }),
            _ => return Err(DecodeError::UnknownExtension { kind, offset }),
        });
        offset = start + usize::from(len);
    }
    Ok(extensions)
}

fn mhae(extensions: &[Extension]) -> Option<&MobileHomeAuth> {
    extensions.iter().rev().find_map(|ext| match ext {
        Extension::MobileHomeAuth(auth) => Some(auth),
        Extension::Skippable(_) => None,
    })
}

fn extensions_len(extensions: &[Extension]) -> usize {
    extensions.iter().map(Extension::encoded_len).sum()
}

impl RegistrationRequest {
    /// Decodes a Request from a whole UDP payload.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        check_fixed(bytes, REQUEST_TYPE, REQUEST_NAME, REQUEST_LEN)?;
        Ok(RegistrationRequest {
            flags: Flags::from_bits(bytes[field::FLAGS_OR_CODE]),
            lifetime: u16_at(bytes, field::LIFETIME),
            home_address: addr(bytes, field::HOME_ADDRESS),
            home_agent: addr(bytes, field::HOME_AGENT),
            care_of: addr(bytes, field::REQUEST_CARE_OF),
            identification: u64_at(bytes, field::REQUEST_ID),
            extensions: decode_extensions(bytes, REQUEST_LEN)?,
        })
    }

    /// Bytes on the wire.
    pub fn encoded_len(&self) -> usize {
        REQUEST_LEN + extensions_len(&self.extensions)
    }

    /// Appends the wire bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.extend_from_slice(&[REQUEST_TYPE, self.flags.bits()]);
        out.extend_from_slice(&self.lifetime.to_be_bytes());
        out.extend_from_slice(&self.home_address.octets());
        out.extend_from_slice(&self.home_agent.octets());
        out.extend_from_slice(&self.care_of.octets());
        out.extend_from_slice(&self.identification.to_be_bytes());
        for ext in &self.extensions {
            ext.encode_into(out);
        }
    }

    /// The wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// The Mobile-Home Authentication Extension, if the Request has one.
    pub fn mhae(&self) -> Option<&MobileHomeAuth> {
        mhae(&self.extensions)
    }
}

impl RegistrationReply {
    /// A Reply to `request`: its home address, home agent and Identification, no extensions
    /// (sign it with [`crate::sign_reply`]). A home agent changes the Identification for
    /// code 133 and the home agent address for code 136.
    pub fn for_request(request: &RegistrationRequest, code: ReplyCode, lifetime: u16) -> Self {
        RegistrationReply {
            code,
            lifetime,
            home_address: request.home_address,
            home_agent: request.home_agent,
            identification: request.identification,
            extensions: Vec::new(),
        }
    }

    /// Whether this Reply answers `request`: the same home address, and the Identification's
    /// low 32 bits match ([`crate::reply_matches`]; the high 32 may carry the home agent's
    /// clock). Authenticate the Reply before believing it.
    pub fn answers(&self, request: &RegistrationRequest) -> bool {
        self.home_address == request.home_address
            && reply_matches(request.identification, self.identification)
    }

    /// Decodes a Reply from a whole UDP payload.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        check_fixed(bytes, REPLY_TYPE, REPLY_NAME, REPLY_LEN)?;
        Ok(RegistrationReply {
            code: ReplyCode::from_u8(bytes[field::FLAGS_OR_CODE]),
            lifetime: u16_at(bytes, field::LIFETIME),
            home_address: addr(bytes, field::HOME_ADDRESS),
            home_agent: addr(bytes, field::HOME_AGENT),
            identification: u64_at(bytes, field::REPLY_ID),
            extensions: decode_extensions(bytes, REPLY_LEN)?,
        })
    }

    /// Bytes on the wire.
    pub fn encoded_len(&self) -> usize {
        REPLY_LEN + extensions_len(&self.extensions)
    }

    /// Appends the wire bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.extend_from_slice(&[REPLY_TYPE, self.code.to_u8()]);
        out.extend_from_slice(&self.lifetime.to_be_bytes());
        out.extend_from_slice(&self.home_address.octets());
        out.extend_from_slice(&self.home_agent.octets());
        out.extend_from_slice(&self.identification.to_be_bytes());
        for ext in &self.extensions {
            ext.encode_into(out);
        }
    }

    /// The wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// The Mobile-Home Authentication Extension, if the Reply has one.
    pub fn mhae(&self) -> Option<&MobileHomeAuth> {
        mhae(&self.extensions)
    }
}

impl Message {
    /// Decodes either message from a whole UDP payload, by its Type byte.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match bytes.first() {
            None => Err(DecodeError::TooShort {
                what: "Mobile IP message",
                len: 0,
                need: 1,
            }),
            Some(&REQUEST_TYPE) => RegistrationRequest::decode(bytes).map(Message::Request),
            Some(&REPLY_TYPE) => RegistrationReply::decode(bytes).map(Message::Reply),
            Some(&other) => Err(DecodeError::UnknownType(other)),
        }
    }

    /// The wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Message::Request(req) => req.encode(),
            Message::Reply(reply) => reply.encode(),
        }
    }

    /// The Mobile-Home Authentication Extension, if the message has one: its SPI names the
    /// security association to verify it with.
    pub fn mhae(&self) -> Option<&MobileHomeAuth> {
        match self {
            Message::Request(req) => req.mhae(),
            Message::Reply(reply) => reply.mhae(),
        }
    }

    /// The home address the message is about.
    pub fn home_address(&self) -> Ipv4Addr {
        match self {
            Message::Request(req) => req.home_address,
            Message::Reply(reply) => reply.home_address,
        }
    }

    /// The Identification field.
    pub fn identification(&self) -> u64 {
        match self {
            Message::Request(req) => req.identification,
            Message::Reply(reply) => reply.identification,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
