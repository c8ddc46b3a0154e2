//! Known bytes, round trips and every way the decoder refuses a message.

use super::*;

/// A Roam Request: D|T, 300 s, home 198.18.1.10, HA 198.18.1.1, CoA 198.18.2.20.
pub(crate) const REQUEST_BYTES: [u8; 24] = [
    0x01, 0x22, 0x01, 0x2c, // type 1, flags D|T, lifetime 300
    198, 18, 1, 10, // home address
    198, 18, 1, 1, // home agent
    198, 18, 2, 20, // care-of address
    0xed, 0x12, 0x34, 0x56, 0x80, 0x00, 0x00, 0x01, // identification
];

/// An accepting Reply to it, granting 290 s.
pub(crate) const REPLY_BYTES: [u8; 20] = [
    0x03, 0x00, 0x01, 0x22, // type 3, code 0, lifetime 290
    198, 18, 1, 10, // home address
    198, 18, 1, 1, // home agent
    0xed, 0x12, 0x34, 0x56, 0x80, 0x00, 0x00, 0x01, // identification
];

pub(crate) fn request() -> RegistrationRequest {
    RegistrationRequest {
        flags: Flags::ROAM,
        lifetime: 300,
        home_address: Ipv4Addr::new(198, 18, 1, 10),
        home_agent: Ipv4Addr::new(198, 18, 1, 1),
        care_of: Ipv4Addr::new(198, 18, 2, 20),
        identification: 0xed12_3456_8000_0001,
        extensions: Vec::new(),
    }
}

pub(crate) fn reply() -> RegistrationReply {
    RegistrationReply {
        lifetime: 290,
        ..RegistrationReply::for_request(&request(), ReplyCode::Accepted, 0)
    }
}

fn mhae_bytes(spi: u32) -> Vec<u8> {
    let mut ext = vec![MHAE_TYPE, MHAE_DATA_LEN];
    ext.extend_from_slice(&spi.to_be_bytes());
    ext.extend_from_slice(&[0xaa; 16]);
    ext
}

fn with(fixed: &[u8], tail: &[u8]) -> Vec<u8> {
    [fixed, tail].concat()
}

#[test]
fn request_encodes_to_known_bytes() {
    assert_eq!(request().encode(), REQUEST_BYTES);
    assert_eq!(request().encoded_len(), REQUEST_LEN);
    assert_eq!(RegistrationRequest::decode(&REQUEST_BYTES), Ok(request()));
}

#[test]
fn reply_encodes_to_known_bytes() {
    assert_eq!(reply().encode(), REPLY_BYTES);
    assert_eq!(RegistrationReply::decode(&REPLY_BYTES), Ok(reply()));
    assert_eq!(Message::decode(&REPLY_BYTES), Ok(Message::Reply(reply())));
}

#[test]
fn flags_bits() {
    assert_eq!(Flags::ROAM.bits(), 0x22);
    assert_eq!(Flags::default().bits(), 0);
    let all = Flags::from_bits(0xff);
    // r (0x04) and x (0x01) are dropped.
    assert_eq!(all.bits(), 0xfa);
    for (bit, flags) in [
        (
            0x80,
            Flags {
                simultaneous_bindings: true,
                ..Flags::default()
            },
        ),
        (
            0x40,
            Flags {
                broadcast: true,
                ..Flags::default()
            },
        ),
        (
            0x20,
            Flags {
                decapsulation_by_mn: true,
                ..Flags::default()
            },
        ),
        (
            0x10,
            Flags {
                minimal_encapsulation: true,
                ..Flags::default()
            },
        ),
        (
            0x08,
            Flags {
                gre: true,
                ..Flags::default()
            },
        ),
        (
            0x02,
            Flags {
                reverse_tunnel: true,
                ..Flags::default()
            },
        ),
        (0x04, Flags::default()),
        (0x01, Flags::default()),
    ] {
        assert_eq!(Flags::from_bits(bit), flags, "{bit:#04x}");
    }
}

#[test]
fn r_and_x_are_ignored_on_receipt() {
    let mut bytes = REQUEST_BYTES;
    bytes[1] |= 0x05;
    let decoded = RegistrationRequest::decode(&bytes).unwrap();
    assert_eq!(decoded, request());
    assert_eq!(decoded.encode(), REQUEST_BYTES);
}

#[test]
fn extensions_round_trip() {
    let mut req = request();
    req.extensions = vec![
        Extension::Skippable(SkippableExtension::new(131, b"vm@roam".to_vec()).unwrap()),
        Extension::Skippable(SkippableExtension::new(255, Vec::new()).unwrap()),
        Extension::MobileHomeAuth(MobileHomeAuth {
            spi: 300,
            authenticator: [7; 16],
        }),
    ];
    let bytes = req.encode();
    assert_eq!(bytes.len(), 24 + 9 + 2 + 22);
    assert_eq!(&bytes[24..33], b"\x83\x07vm@roam");
    assert_eq!(&bytes[33..35], &[255, 0]);
    assert_eq!(&bytes[35..41], &[32, 20, 0, 0, 1, 44]);
    assert_eq!(RegistrationRequest::decode(&bytes), Ok(req.clone()));
    assert_eq!(req.mhae().map(|a| a.spi), Some(300));
    assert_eq!(req.extensions[0].kind(), 131);
    assert_eq!(req.extensions[2].kind(), 32);
}

#[test]
fn a_longest_skippable_extension_fits() {
    let ext = SkippableExtension::new(200, vec![1; 255]).unwrap();
    let mut reply = reply();
    reply.extensions.push(Extension::Skippable(ext));
    let bytes = reply.encode();
    assert_eq!(bytes[21], 255);
    assert_eq!(RegistrationReply::decode(&bytes), Ok(reply));
}

#[test]
fn skippable_extension_rules() {
    assert_eq!(
        SkippableExtension::new(127, vec![]),
        Err(ExtensionError::NotSkippable(127))
    );
    assert_eq!(
        SkippableExtension::new(32, vec![]),
        Err(ExtensionError::NotSkippable(32))
    );
    assert_eq!(
        SkippableExtension::new(128, vec![0; 256]),
        Err(ExtensionError::TooLong(256))
    );
    let ext = SkippableExtension::new(128, vec![9]).unwrap();
    assert_eq!((ext.kind(), ext.data()), (128, &[9][..]));
}

#[test]
fn too_short() {
    for len in 0..REQUEST_LEN {
        let err = RegistrationRequest::decode(&REQUEST_BYTES[..len]).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TooShort {
                what: "Registration Request",
                len,
                need: 24
            },
            "{len}"
        );
    }
    for len in 1..REPLY_LEN {
        assert_eq!(
            Message::decode(&REPLY_BYTES[..len]),
            Err(DecodeError::TooShort {
                what: "Registration Reply",
                len,
                need: 20
            })
        );
    }
    assert_eq!(
        Message::decode(&[]),
        Err(DecodeError::TooShort {
            what: "Mobile IP message",
            len: 0,
            need: 1
        })
    );
    assert_eq!(
        RegistrationRequest::decode(&REQUEST_BYTES[..3])
            .unwrap_err()
            .to_string(),
        "Message too short: 3 bytes, a Registration Request needs 24"
    );
}

#[test]
fn wrong_and_unknown_types() {
    assert_eq!(
        RegistrationRequest::decode(&REPLY_BYTES),
        Err(DecodeError::WrongType {
            expected: "Registration Request",
            found: 3
        })
    );
    assert_eq!(
        RegistrationReply::decode(&REQUEST_BYTES),
        Err(DecodeError::WrongType {
            expected: "Registration Reply",
            found: 1
        })
    );
    let mut bytes = REQUEST_BYTES;
    bytes[0] = 2;
    assert_eq!(Message::decode(&bytes), Err(DecodeError::UnknownType(2)));
    bytes[0] = 7; // Registration Revocation (RFC 3543): not spoken.
    assert_eq!(Message::decode(&bytes), Err(DecodeError::UnknownType(7)));
}

#[test]
fn extension_without_length_byte() {
    assert_eq!(
        RegistrationRequest::decode(&with(&REQUEST_BYTES, &[131])),
        Err(DecodeError::TruncatedExtension {
            kind: 131,
            offset: 24
        })
    );
}

#[test]
fn extension_overrunning_the_message() {
    let bytes = with(&REQUEST_BYTES, &[131, 5, 1, 2, 3]);
    let err = RegistrationRequest::decode(&bytes).unwrap_err();
    assert_eq!(
        err,
        DecodeError::ExtensionOverrun {
            kind: 131,
            offset: 24,
            len: 5,
            available: 3
        }
    );
    assert_eq!(
        err.to_string(),
        "Extension type 131 at offset 24 claims 5 bytes, only 3 remain"
    );
    // An MHAE cut short is an overrun too.
    let mhae = mhae_bytes(300);
    assert_eq!(
        RegistrationReply::decode(&with(&REPLY_BYTES, &mhae[..21])),
        Err(DecodeError::ExtensionOverrun {
            kind: 32,
            offset: 20,
            len: 20,
            available: 19
        })
    );
}

#[test]
fn unknown_non_skippable_extensions_refuse_the_message() {
    for kind in (0..128u8).filter(|&k| k != MHAE_TYPE) {
        let bytes = with(&REQUEST_BYTES, &[kind, 2, 0, 0]);
        assert_eq!(
            RegistrationRequest::decode(&bytes),
            Err(DecodeError::UnknownExtension { kind, offset: 24 }),
            "{kind}"
        );
    }
    // Even after a skippable one.
    let bytes = with(&REPLY_BYTES, &[200, 0, 33, 0]);
    assert_eq!(
        RegistrationReply::decode(&bytes),
        Err(DecodeError::UnknownExtension {
            kind: 33,
            offset: 22
        })
    );
}

#[test]
fn mhae_must_be_last() {
    let tail = [mhae_bytes(300), vec![200, 1, 0]].concat();
    assert_eq!(
        RegistrationRequest::decode(&with(&REQUEST_BYTES, &tail)),
        Err(DecodeError::ExtensionAfterAuth {
            kind: 200,
            offset: 46
        })
    );
    let tail = [mhae_bytes(300), mhae_bytes(300)].concat();
    assert_eq!(
        RegistrationReply::decode(&with(&REPLY_BYTES, &tail)),
        Err(DecodeError::ExtensionAfterAuth {
            kind: 32,
            offset: 42
        })
    );
    // A lone trailing byte after it is refused the same way.
    let tail = [mhae_bytes(300), vec![0]].concat();
    assert!(matches!(
        RegistrationReply::decode(&with(&REPLY_BYTES, &tail)),
        Err(DecodeError::ExtensionAfterAuth { .. })
    ));
}

#[test]
fn mhae_length_must_be_hmac_md5() {
    let mut ext = mhae_bytes(300);
    ext[1] = 21;
    ext.push(0);
    assert_eq!(
        RegistrationRequest::decode(&with(&REQUEST_BYTES, &ext)),
        Err(DecodeError::BadAuthLength {
            offset: 24,
            len: 21
        })
    );
    assert_eq!(
        RegistrationRequest::decode(&with(&REQUEST_BYTES, &[32, 4, 0, 0, 1, 0])),
        Err(DecodeError::BadAuthLength { offset: 24, len: 4 })
    );
}

#[test]
fn reserved_spis_are_refused() {
    for spi in [0, 1, 255] {
        assert_eq!(
            RegistrationRequest::decode(&with(&REQUEST_BYTES, &mhae_bytes(spi))),
            Err(DecodeError::ReservedSpi { spi, offset: 24 })
        );
    }
    assert!(RegistrationRequest::decode(&with(&REQUEST_BYTES, &mhae_bytes(256))).is_ok());
    assert!(RegistrationRequest::decode(&with(&REQUEST_BYTES, &mhae_bytes(u32::MAX))).is_ok());
}

#[test]
fn reply_codes_survive_decoding() {
    for code in 0..=u8::MAX {
        let mut bytes = REPLY_BYTES;
        bytes[1] = code;
        let reply = RegistrationReply::decode(&bytes).unwrap();
        assert_eq!(reply.code.to_u8(), code);
        assert_eq!(reply.encode(), bytes);
    }
}

#[test]
fn replies_answer_their_request() {
    let req = request();
    let mut reply = reply();
    assert!(reply.answers(&req));
    // Code 133: the HA's clock in the high half, the request's low half.
    reply.identification = crate::resync_identification(0x1111_1111_0000_0000, req.identification);
    assert!(reply.answers(&req));
    reply.identification ^= 1;
    assert!(!reply.answers(&req));
    let mut other_home = self::reply();
    other_home.home_address = Ipv4Addr::new(198, 18, 1, 11);
    assert!(!other_home.answers(&req));
}

#[test]
fn message_accessors() {
    let msg = Message::Request(request());
    assert_eq!(msg.home_address(), Ipv4Addr::new(198, 18, 1, 10));
    assert_eq!(msg.identification(), 0xed12_3456_8000_0001);
    assert_eq!(msg.mhae(), None);
    assert_eq!(msg.encode(), REQUEST_BYTES);
}
