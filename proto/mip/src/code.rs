//! The Registration Reply's Code byte (RFC 5944 §3.4; the numbers as IANA's Mobile IPv4
//! registry lists them). It owns the names and the meaning of each code, nothing else.

use std::fmt;

/// Why a home agent (128–139) or foreign agent (64–88) accepted or denied a registration.
///
/// Every code Roam's spec lists has a name; any other byte is kept as [`ReplyCode::Other`],
/// so a decoded Reply encodes back to the same byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplyCode {
    /// 0: registration accepted.
    Accepted,
    /// 1: accepted, but simultaneous mobility bindings (`S`) are unsupported.
    AcceptedNoSimultaneousBindings,
    /// 64: denied by the FA, reason unspecified.
    FaUnspecified,
    /// 65: denied by the FA, administratively prohibited.
    FaProhibited,
    /// 66: denied by the FA, insufficient resources.
    FaInsufficientResources,
    /// 67: denied by the FA, the mobile node failed authentication.
    FaMobileNodeAuthFailed,
    /// 68: denied by the FA, the home agent failed authentication.
    FaHomeAgentAuthFailed,
    /// 69: denied by the FA, requested lifetime too long.
    FaLifetimeTooLong,
    /// 70: denied by the FA, poorly formed Request.
    FaPoorlyFormedRequest,
    /// 71: denied by the FA, poorly formed Reply.
    FaPoorlyFormedReply,
    /// 72: denied by the FA, requested encapsulation unavailable.
    FaEncapsulationUnavailable,
    /// 73: reserved and unavailable (was: Van Jacobson compression unavailable).
    FaReserved73,
    /// 74: denied by the FA, requested reverse tunnel unavailable (RFC 3024).
    FaReverseTunnelUnavailable,
    /// 75: denied by the FA, reverse tunnel is mandatory and `T` is not set (RFC 3024).
    FaReverseTunnelMandatory,
    /// 76: denied by the FA, mobile node too distant (RFC 3024).
    FaMobileNodeTooDistant,
    /// 77: denied by the FA, invalid care-of address.
    FaInvalidCareOf,
    /// 78: denied by the FA, registration timeout.
    FaRegistrationTimeout,
    /// 79: denied by the FA, delivery style not supported (RFC 3024).
    FaDeliveryStyleUnsupported,
    /// 80: denied by the FA, home network unreachable (ICMP error received).
    FaHomeNetworkUnreachable,
    /// 81: denied by the FA, home agent host unreachable (ICMP error received).
    FaHomeAgentHostUnreachable,
    /// 82: denied by the FA, home agent port unreachable (ICMP error received).
    FaHomeAgentPortUnreachable,
    /// 88: denied by the FA, home agent unreachable (other ICMP error received).
    FaHomeAgentUnreachable,
    /// 128: denied by the HA, reason unspecified.
    HaUnspecified,
    /// 129: denied by the HA, administratively prohibited.
    HaProhibited,
    /// 130: denied by the HA, insufficient resources.
    HaInsufficientResources,
    /// 131: denied by the HA, the mobile node failed authentication.
    HaMobileNodeAuthFailed,
    /// 132: denied by the HA, the foreign agent failed authentication.
    HaForeignAgentAuthFailed,
    /// 133: denied by the HA, registration Identification mismatch (the replay check failed;
    /// the Reply's Identification carries the HA's clock, see [`crate::resync_identification`]).
    HaIdentificationMismatch,
    /// 134: denied by the HA, poorly formed Request.
    HaPoorlyFormedRequest,
    /// 135: denied by the HA, too many simultaneous mobility bindings.
    HaTooManyBindings,
    /// 136: denied by the HA, unknown home agent address (the Reply carries the HA's own).
    HaUnknownHomeAgent,
    /// 137: denied by the HA, requested reverse tunnel unavailable (RFC 3024).
    HaReverseTunnelUnavailable,
    /// 138: denied by the HA, reverse tunnel is mandatory and `T` is not set (RFC 3024).
    HaReverseTunnelMandatory,
    /// 139: denied by the HA, requested encapsulation unavailable (RFC 3024).
    HaEncapsulationUnavailable,
    /// Any other code, kept as received.
    Other(u8),
}

/// Every named code with its number and its text, in number order: the one table both
/// conversions and [`fmt::Display`] read.
const TABLE: [(ReplyCode, u8, &str); 34] = {
    use ReplyCode::*;
    [
        (Accepted, 0, "accepted"),
        (
            AcceptedNoSimultaneousBindings,
            1,
            "accepted, simultaneous bindings unsupported",
        ),
        (FaUnspecified, 64, "denied by the FA: reason unspecified"),
        (
            FaProhibited,
            65,
            "denied by the FA: administratively prohibited",
        ),
        (
            FaInsufficientResources,
            66,
            "denied by the FA: insufficient resources",
        ),
        (
            FaMobileNodeAuthFailed,
            67,
            "denied by the FA: mobile node failed authentication",
        ),
        (
            FaHomeAgentAuthFailed,
            68,
            "denied by the FA: home agent failed authentication",
        ),
        (FaLifetimeTooLong, 69, "denied by the FA: lifetime too long"),
        (
            FaPoorlyFormedRequest,
            70,
            "denied by the FA: poorly formed Request",
        ),
        (
            FaPoorlyFormedReply,
            71,
            "denied by the FA: poorly formed Reply",
        ),
        (
            FaEncapsulationUnavailable,
            72,
            "denied by the FA: requested encapsulation unavailable",
        ),
        (
            FaReserved73,
            73,
            "denied by the FA: reserved and unavailable",
        ),
        (
            FaReverseTunnelUnavailable,
            74,
            "denied by the FA: requested reverse tunnel unavailable",
        ),
        (
            FaReverseTunnelMandatory,
            75,
            "denied by the FA: reverse tunnel mandatory and T not set",
        ),
        (
            FaMobileNodeTooDistant,
            76,
            "denied by the FA: mobile node too distant",
        ),
        (
            FaInvalidCareOf,
            77,
            "denied by the FA: invalid care-of address",
        ),
        (
            FaRegistrationTimeout,
            78,
            "denied by the FA: registration timeout",
        ),
        (
            FaDeliveryStyleUnsupported,
            79,
            "denied by the FA: delivery style not supported",
        ),
        (
            FaHomeNetworkUnreachable,
            80,
            "denied by the FA: home network unreachable",
        ),
        (
            FaHomeAgentHostUnreachable,
            81,
            "denied by the FA: home agent host unreachable",
        ),
        (
            FaHomeAgentPortUnreachable,
            82,
            "denied by the FA: home agent port unreachable",
        ),
        (
            FaHomeAgentUnreachable,
            88,
            "denied by the FA: home agent unreachable",
        ),
        (HaUnspecified, 128, "denied by the HA: reason unspecified"),
        (
            HaProhibited,
            129,
            "denied by the HA: administratively prohibited",
        ),
        (
            HaInsufficientResources,
            130,
            "denied by the HA: insufficient resources",
        ),
        (
            HaMobileNodeAuthFailed,
            131,
            "denied by the HA: mobile node failed authentication",
        ),
        (
            HaForeignAgentAuthFailed,
            132,
            "denied by the HA: foreign agent failed authentication",
        ),
        (
            HaIdentificationMismatch,
            133,
            "denied by the HA: registration Identification mismatch",
        ),
        (
            HaPoorlyFormedRequest,
            134,
            "denied by the HA: poorly formed Request",
        ),
        (
            HaTooManyBindings,
            135,
            "denied by the HA: too many simultaneous bindings",
        ),
        (
            HaUnknownHomeAgent,
            136,
            "denied by the HA: unknown home agent address",
        ),
        (
            HaReverseTunnelUnavailable,
            137,
            "denied by the HA: requested reverse tunnel unavailable",
        ),
        (
            HaReverseTunnelMandatory,
            138,
            "denied by the HA: reverse tunnel mandatory and T not set",
        ),
        (
            HaEncapsulationUnavailable,
            139,
            "denied by the HA: requested encapsulation unavailable",
        ),
    ]
};

impl ReplyCode {
    /// Whether the registration was accepted (codes 0 and 1).
    pub fn accepted(self) -> bool {
        matches!(
            self,
            ReplyCode::Accepted | ReplyCode::AcceptedNoSimultaneousBindings
        )
    }

    /// The code byte.
    pub fn to_u8(self) -> u8 {
        if let ReplyCode::Other(code) = self {
            return code;
        }
        TABLE
            .iter()
            .find(|(named, _, _)| *named == self)
            .map_or(0, |&(_, code, _)| code)
    }

    /// The code for a byte: its name when it has one, else [`ReplyCode::Other`].
    pub fn from_u8(code: u8) -> Self {
        TABLE
            .iter()
            .find(|&&(_, number, _)| number == code)
            .map_or(ReplyCode::Other(code), |&(named, _, _)| named)
    }
}

impl From<u8> for ReplyCode {
    fn from(code: u8) -> Self {
        ReplyCode::from_u8(code)
    }
}

impl From<ReplyCode> for u8 {
    fn from(code: ReplyCode) -> Self {
        code.to_u8()
    }
}

impl fmt::Display for ReplyCode {
    /// `133 (denied by the HA: registration Identification mismatch)`; unnamed codes show
    /// their number and range.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.to_u8();
        match TABLE.iter().find(|&&(_, number, _)| number == code) {
            Some((_, _, text)) => write!(f, "{code} ({text})"),
            None if code < 64 => write!(f, "{code} (unassigned)"),
            None if code < 128 => write!(f, "{code} (unknown denial by the FA)"),
            None => write!(f, "{code} (unknown denial by the HA)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_round_trips() {
        for byte in 0..=u8::MAX {
            assert_eq!(ReplyCode::from_u8(byte).to_u8(), byte);
        }
    }

    #[test]
    fn named_codes_never_decode_as_other() {
        for &(named, number, _) in &TABLE {
            assert_eq!(ReplyCode::from_u8(number), named);
            assert!(!matches!(named, ReplyCode::Other(_)));
        }
        // The table is sorted and has no duplicate numbers.
        assert!(TABLE.windows(2).all(|w| w[0].1 < w[1].1));
    }

    #[test]
    fn spec_numbers() {
        assert_eq!(ReplyCode::HaMobileNodeAuthFailed.to_u8(), 131);
        assert_eq!(ReplyCode::HaIdentificationMismatch.to_u8(), 133);
        assert_eq!(ReplyCode::HaPoorlyFormedRequest.to_u8(), 134);
        assert_eq!(ReplyCode::HaUnknownHomeAgent.to_u8(), 136);
        assert_eq!(ReplyCode::HaEncapsulationUnavailable.to_u8(), 139);
        assert_eq!(ReplyCode::FaHomeAgentUnreachable.to_u8(), 88);
        assert_eq!(ReplyCode::from_u8(83), ReplyCode::Other(83));
    }

    #[test]
    fn accepted_is_0_and_1_only() {
        for byte in 0..=u8::MAX {
            assert_eq!(ReplyCode::from_u8(byte).accepted(), byte <= 1, "{byte}");
        }
    }

    #[test]
    fn display_names_the_code() {
        assert_eq!(
            ReplyCode::HaIdentificationMismatch.to_string(),
            "133 (denied by the HA: registration Identification mismatch)"
        );
        assert_eq!(
            ReplyCode::Other(200).to_string(),
            "200 (unknown denial by the HA)"
        );
    }
}
