//! Mobile IPv4 registration (RFC 5944) for Roam: the one definition of the Registration
//! Request and Reply, their HMAC-MD5 authentication, timestamp replay protection, the home
//! agent's key file and the mobility setting. Both ends use it: the home agent
//! (`host-vmm home-agent`) and host-vmm's registration client, which registers a VM's home
//! address with the destination host as its co-located care-of address after a wide-area
//! move; the tests forge and read messages with it. It knows nothing of sockets, tunnels or
//! routes: bytes in, bytes out.
//!
//! # Messages (UDP port 434, all integers big-endian)
//!
//! Registration Request ([`RegistrationRequest`]), 24 bytes, then extensions:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | Type = 1 |
//! | 1 | 1 | flags `S B D M G r T x` (0x80 … 0x01; [`Flags`]; `r`, `x` sent 0, ignored) |
//! | 2 | 2 | Lifetime, seconds (0 deregisters, 0xFFFF infinite) |
//! | 4 | 4 | Home Address |
//! | 8 | 4 | Home Agent |
//! | 12 | 4 | Care-of Address |
//! | 16 | 8 | Identification (NTP timestamp, [`ntp_now`]) |
//!
//! Registration Reply ([`RegistrationReply`]), 20 bytes, then extensions:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | Type = 3 |
//! | 1 | 1 | Code ([`ReplyCode`]) |
//! | 2 | 2 | Lifetime granted |
//! | 4 | 4 | Home Address |
//! | 8 | 4 | Home Agent |
//! | 12 | 8 | Identification |
//!
//! Extensions ([`Extension`]): Type (1), Length (1, the bytes after it), data; they run to
//! the end of the UDP payload. The Mobile-Home Authentication Extension (MHAE, type 32,
//! [`MobileHomeAuth`]) is Type, Length = 20, SPI (4, ≥ 256), HMAC-MD5 authenticator (16).
//!
//! # What the decoder accepts
//!
//! Decoding never panics; it refuses with a [`DecodeError`] naming the first problem:
//! - extension types 0–127 other than 32 are refused as a whole message
//!   ([`DecodeError::UnknownExtension`]): RFC 5944 §1.9 says a message with a
//!   non-skippable extension the receiver does not recognise is silently discarded, and
//!   a home agent that cannot honour what the mobile node asked for must not bind it. (One
//!   Linux implementation answers 134 instead; silence gives an attacker nothing to learn.)
//!   Types 128–255 are skippable: kept as [`SkippableExtension`] and otherwise ignored;
//! - the MHAE must be the last extension: Roam has no foreign agent, so nothing may ride
//!   after it unauthenticated ([`DecodeError::ExtensionAfterAuth`]);
//! - an MHAE with a Length other than 20 (only HMAC-MD5 is spoken) or an SPI below 256.
//!
//! # Authentication
//!
//! [`sign_request`] and [`sign_reply`] append an MHAE whose authenticator is HMAC-MD5 (RFC
//! 2104) under the [`SecurityAssociation`]'s key over the bytes from the Type byte through
//! the MHAE's SPI. [`verify`] recomputes it over the received bytes and compares in
//! constant time. The older keyed-MD5 "prefix+suffix" of RFC 2002 is not spoken.
//!
//! # Example
//!
//! ```
//! use mip::{Flags, Message, RegistrationRequest, SecurityAssociation, sign_request, verify};
//!
//! let sa = SecurityAssociation::new(300, vec![0x42; 16]).unwrap();
//! let mut request = RegistrationRequest {
//!     flags: Flags::ROAM,
//!     lifetime: 300,
//!     home_address: "198.18.1.10".parse().unwrap(),
//!     home_agent: "198.18.1.1".parse().unwrap(),
//!     care_of: "198.18.2.20".parse().unwrap(),
//!     identification: mip::ntp_now(),
//!     extensions: Vec::new(),
//! };
//! sign_request(&mut request, &sa);
//! let bytes = request.encode();
//! assert_eq!(bytes.len(), 24 + 22);
//! assert_eq!(verify(&bytes, &sa), Ok(Message::Request(request)));
//! ```

#![forbid(unsafe_code)]

mod auth;
mod code;
mod ident;
mod keys;
mod message;
mod setting;

pub use auth::{
    DEFAULT_SKEW, MIN_KEY_LEN, SaError, SecurityAssociation, VerifyError, sign_reply, sign_request,
    verify,
};
pub use code::ReplyCode;
pub use ident::{
    IdentificationError, NTP_UNIX_OFFSET, RequestClock, check_timestamp, ntp_from_system_time,
    ntp_now, reply_matches, resync_identification,
};
pub use keys::{
    ClientKeyError, KeyEntry, KeyFileError, KeyLineError, KeyProblem, KeyTable, parse_hex_key,
    read_key_file,
};
pub use message::{
    AUTHENTICATOR_LEN, DecodeError, Extension, ExtensionError, Flags, LIFETIME_DEREGISTER,
    LIFETIME_INFINITE, MHAE_DATA_LEN, MHAE_LEN, MHAE_TYPE, MIN_SPI, MIP_PORT, Message,
    MobileHomeAuth, REPLY_LEN, REPLY_TYPE, REQUEST_LEN, REQUEST_TYPE, RegistrationReply,
    RegistrationRequest, SkippableExtension,
};
pub use setting::{
    DEFAULT_LIFETIME, MAX_EDGES, MipSetting, Mobility, MobilityError, NatSetting, SettingError,
};
