//! Mobile-Home authentication (RFC 5944 §3.5.2, §3.5.4; Roam's spec §4): the security
//! association, signing a message with an HMAC-MD5 MHAE, and verifying one as received.
//!
//! The authenticated bytes are the UDP payload from the Type byte through the MHAE's Type,
//! Length and SPI: the fixed part, every earlier extension in full, then those 6 bytes. The
//! signer builds them by encoding the message; the verifier takes them from the received
//! bytes themselves, so what is verified is exactly what arrived (a bit the decoder ignores,
//! such as the Request's `r` and `x`, is still covered).

use crate::message::{
    AUTHENTICATOR_LEN, Extension, MHAE_DATA_LEN, MHAE_TYPE, MIN_SPI, Message, MobileHomeAuth,
    RegistrationReply, RegistrationRequest,
};
use crate::{DecodeError, message::MHAE_LEN};
use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use std::fmt;
use std::time::Duration;
use thiserror::Error;

/// The replay window when none is configured: the timestamp skew RFC 5944 suggests.
pub const DEFAULT_SKEW: Duration = Duration::from_secs(7);
/// The shortest key accepted: 128 bits, as RFC 5944 recommends for HMAC-MD5.
pub const MIN_KEY_LEN: usize = 16;

/// A mobility security association between a mobile node and its home agent: the SPI that
/// names it in the MHAE, the shared HMAC-MD5 key, and the allowed clock skew for timestamp
/// replay protection. The algorithm is always HMAC-MD5 and replay protection always
/// timestamps. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SecurityAssociation {
    spi: u32,
    key: Vec<u8>,
    skew: Duration,
}

/// Why a [`SecurityAssociation`] cannot be made.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SaError {
    /// SPIs 0–255 are reserved and never name a security association.
    #[error("SPI {0} is reserved: security associations use 256 and up")]
    ReservedSpi(u32),
    /// The key is shorter than [`MIN_KEY_LEN`].
    #[error("Key is {bits} bits, at least 128 are required")]
    ShortKey {
        /// The key's length in bits.
        bits: usize,
    },
}

impl SecurityAssociation {
    /// An association with the [`DEFAULT_SKEW`]; the SPI must be ≥ 256 and the key at least
    /// 16 bytes.
    pub fn new(spi: u32, key: Vec<u8>) -> Result<Self, SaError> {
        if spi < MIN_SPI {
            return Err(SaError::ReservedSpi(spi));
        }
        if key.len() < MIN_KEY_LEN {
            return Err(SaError::ShortKey {
                bits: key.len() * 8,
            });
        }
        Ok(SecurityAssociation {
            spi,
            key,
            skew: DEFAULT_SKEW,
        })
    }

    /// The same association with another replay window.
    pub fn with_skew(mut self, skew: Duration) -> Self {
        self.skew = skew;
        self
    }

    /// The Security Parameter Index.
    pub fn spi(&self) -> u32 {
        self.spi
    }

    /// The shared key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// How far an Identification timestamp may be from the receiver's clock.
    pub fn skew(&self) -> Duration {
        self.skew
    }

    fn mac(&self) -> Hmac<Md5> {
        new_mac(&self.key)
    }

    /// HMAC-MD5 of `covered` under this association's key.
    fn authenticator(&self, covered: &[u8]) -> [u8; AUTHENTICATOR_LEN] {
        hmac_md5(&self.key, covered)
    }
}

fn new_mac(key: &[u8]) -> Hmac<Md5> {
    // HMAC takes keys of any length (longer ones are hashed first): this cannot fail.
    <Hmac<Md5> as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length")
}

/// HMAC-MD5 (RFC 2104) of `data` under `key`.
fn hmac_md5(key: &[u8], data: &[u8]) -> [u8; AUTHENTICATOR_LEN] {
    let mut mac = new_mac(key);
    mac.update(data);
    mac.finalize().into_bytes().into()
}

impl fmt::Debug for SecurityAssociation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecurityAssociation")
            .field("spi", &self.spi)
            .field("key", &format_args!("<{} bytes>", self.key.len()))
            .field("skew", &self.skew)
            .finish()
    }
}

/// Why a received message failed authentication: the first check that failed.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum VerifyError {
    /// The bytes are not a message this crate accepts.
    #[error("Malformed message")]
    Malformed(#[from] DecodeError),
    /// No Mobile-Home Authentication Extension (a home agent answers 131).
    #[error("No Mobile-Home Authentication Extension")]
    MissingAuth,
    /// The MHAE names another security association.
    #[error("SPI {found} is not the security association's {expected}")]
    SpiMismatch {
        /// The SPI in the message.
        found: u32,
        /// The association's.
        expected: u32,
    },
    /// The authenticator is not the HMAC-MD5 of the message under the key (a home agent
    /// answers 131).
    #[error("Authenticator does not match")]
    BadAuthenticator,
}

/// The MHAE for `sa` over `covered`: the message as it will be sent, without this MHAE.
fn mhae_for(sa: &SecurityAssociation, mut covered: Vec<u8>) -> Extension {
    covered.extend_from_slice(&[MHAE_TYPE, MHAE_DATA_LEN]);
    covered.extend_from_slice(&sa.spi.to_be_bytes());
    Extension::MobileHomeAuth(MobileHomeAuth {
        spi: sa.spi,
        authenticator: sa.authenticator(&covered),
    })
}

fn is_mhae(ext: &Extension) -> bool {
    matches!(ext, Extension::MobileHomeAuth(_))
}

/// Appends the Mobile-Home Authentication Extension for `sa` to a Request (replacing any it
/// had, so a Request can be re-signed after its Identification changes).
pub fn sign_request(request: &mut RegistrationRequest, sa: &SecurityAssociation) {
    request.extensions.retain(|ext| !is_mhae(ext));
    let auth = mhae_for(sa, request.encode());
    request.extensions.push(auth);
}

/// Appends the Mobile-Home Authentication Extension for `sa` to a Reply (replacing any it
/// had).
pub fn sign_reply(reply: &mut RegistrationReply, sa: &SecurityAssociation) {
    reply.extensions.retain(|ext| !is_mhae(ext));
    let auth = mhae_for(sa, reply.encode());
    reply.extensions.push(auth);
}

/// Decodes `bytes` (a whole UDP payload) and checks its MHAE against `sa`: present, the
/// association's SPI, and an authenticator equal (compared in constant time) to the
/// HMAC-MD5 of the received bytes it covers. Returns the message, or the first check that
/// failed. Find the association by the SPI first ([`Message::mhae`]).
pub fn verify(bytes: &[u8], sa: &SecurityAssociation) -> Result<Message, VerifyError> {
    let message = Message::decode(bytes)?;
    let auth = message.mhae().ok_or(VerifyError::MissingAuth)?;
    if auth.spi != sa.spi {
        return Err(VerifyError::SpiMismatch {
            found: auth.spi,
            expected: sa.spi,
        });
    }
    // The decoder refuses anything after an MHAE, so it is the last MHAE_LEN bytes: what
    // it covers ends where its authenticator starts.
    let Some(covered_len) = bytes.len().checked_sub(AUTHENTICATOR_LEN) else {
        return Err(VerifyError::MissingAuth);
    };
    debug_assert_eq!(bytes[bytes.len() - MHAE_LEN], MHAE_TYPE);
    let (covered, received) = bytes.split_at(covered_len);
    let mut mac = sa.mac();
    mac.update(covered);
    mac.verify_slice(received)
        .map_err(|_| VerifyError::BadAuthenticator)?;
    Ok(message)
}

#[cfg(test)]
mod tests;
