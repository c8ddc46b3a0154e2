//! HMAC-MD5 against RFC 2202, signatures against values computed independently (Python's
//! `hmac` module over the bytes written out by hand), and every way verification fails.

use super::*;
use crate::message::tests::{REPLY_BYTES, REQUEST_BYTES, reply, request};
use crate::{ReplyCode, SkippableExtension};

fn hex(text: &str) -> Vec<u8> {
    crate::keys::tests::hex_bytes(text)
}

/// The key of the known vectors below: 00 01 02 … 0f.
fn sa() -> SecurityAssociation {
    SecurityAssociation::new(300, (0..16).collect()).unwrap()
}

#[test]
fn hmac_md5_matches_rfc_2202() {
    let long_key = [0xaa; 80];
    let cases: [(&[u8], &[u8], &str); 7] = [
        (&[0x0b; 16], b"Hi There", "9294727a3638bb1c13f48ef8158bfc9d"),
        (
            b"Jefe",
            b"what do ya want for nothing?",
            "750c783e6ab0b503eaa86e310a5db738",
        ),
        (&[0xaa; 16], &[0xdd; 50], "56be34521d144c88dbb8c733f0e8b3f6"),
        (
            &[
                1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
                24, 25,
            ],
            &[0xcd; 50],
            "697eaf0aca3a3aea3a75164746ffaa79",
        ),
        (
            &[0x0c; 16],
            b"Test With Truncation",
            "56461ef2342edc00f9bab995690efd4c",
        ),
        (
            &long_key,
            b"Test Using Larger Than Block-Size Key - Hash Key First",
            "6b1ab7fe4bd7bf8f0b62e6ce61b9d0cd",
        ),
        (
            &long_key,
            b"Test Using Larger Than Block-Size Key and Larger Than One Block-Size Data",
            "6f630fad67cda0ee1fb1f562db3aa53e",
        ),
    ];
    for (i, (key, data, digest)) in cases.iter().enumerate() {
        assert_eq!(
            hmac_md5(key, data).to_vec(),
            hex(digest),
            "RFC 2202 case {}",
            i + 1
        );
    }
}

#[test]
fn signed_request_has_known_bytes() {
    let mut req = request();
    sign_request(&mut req, &sa());
    let expected = [
        &REQUEST_BYTES[..],
        &[32, 20, 0, 0, 0x01, 0x2c],
        &hex("0a00091081b1910a609a2bcf6db057ac"),
    ]
    .concat();
    assert_eq!(req.encode(), expected);
    assert_eq!(verify(&expected, &sa()), Ok(Message::Request(req)));
}

#[test]
fn signed_reply_has_known_bytes() {
    let mut rep = reply();
    sign_reply(&mut rep, &sa());
    let expected = [
        &REPLY_BYTES[..],
        &[32, 20, 0, 0, 0x01, 0x2c],
        &hex("bfeafe45a0caa39fe2e46e3bab79d2f3"),
    ]
    .concat();
    assert_eq!(rep.encode(), expected);
    assert_eq!(verify(&expected, &sa()), Ok(Message::Reply(rep)));
}

#[test]
fn signing_again_replaces_the_mhae() {
    let mut req = request();
    sign_request(&mut req, &sa());
    req.identification += 1;
    sign_request(&mut req, &sa());
    assert_eq!(req.extensions.len(), 1);
    assert!(verify(&req.encode(), &sa()).is_ok());
    let other = SecurityAssociation::new(301, vec![0x42; 20]).unwrap();
    sign_request(&mut req, &other);
    assert_eq!(req.mhae().map(|a| a.spi), Some(301));
    assert!(verify(&req.encode(), &other).is_ok());
}

#[test]
fn earlier_extensions_are_covered() {
    let mut rep =
        RegistrationReply::for_request(&request(), ReplyCode::HaIdentificationMismatch, 0);
    rep.extensions.push(Extension::Skippable(
        SkippableExtension::new(145, b"try again".to_vec()).unwrap(),
    ));
    sign_reply(&mut rep, &sa());
    let mut bytes = rep.encode();
    assert_eq!(verify(&bytes, &sa()), Ok(Message::Reply(rep)));
    bytes[24] ^= 0x20; // "try again" → "Try again"
    assert_eq!(verify(&bytes, &sa()), Err(VerifyError::BadAuthenticator));
}

#[test]
fn verification_covers_the_received_bytes_not_the_decoded_ones() {
    let mut req = request();
    sign_request(&mut req, &sa());
    let mut bytes = req.encode();
    // The r bit: ignored by the decoder, but the sender did not send it.
    bytes[1] |= 0x04;
    assert_eq!(Message::decode(&bytes), Ok(Message::Request(req)));
    assert_eq!(verify(&bytes, &sa()), Err(VerifyError::BadAuthenticator));
}

#[test]
fn each_failed_check_is_named() {
    let mut req = request();
    assert_eq!(verify(&req.encode(), &sa()), Err(VerifyError::MissingAuth));
    sign_request(&mut req, &sa());
    let bytes = req.encode();

    let other_spi = SecurityAssociation::new(301, (0..16).collect()).unwrap();
    assert_eq!(
        verify(&bytes, &other_spi),
        Err(VerifyError::SpiMismatch {
            found: 300,
            expected: 301
        })
    );
    let other_key = SecurityAssociation::new(300, vec![0; 16]).unwrap();
    assert_eq!(
        verify(&bytes, &other_key),
        Err(VerifyError::BadAuthenticator)
    );

    let mut tampered = bytes.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert_eq!(verify(&tampered, &sa()), Err(VerifyError::BadAuthenticator));

    assert_eq!(
        verify(&bytes[..bytes.len() - 1], &sa()),
        Err(VerifyError::Malformed(DecodeError::ExtensionOverrun {
            kind: 32,
            offset: 24,
            len: 20,
            available: 19
        }))
    );
    let err = verify(&bytes[..3], &sa()).unwrap_err();
    assert!(matches!(
        err,
        VerifyError::Malformed(DecodeError::TooShort { .. })
    ));
    assert_eq!(err.to_string(), "Malformed message");
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn long_keys_work() {
    let sa = SecurityAssociation::new(1000, vec![7; 200]).unwrap();
    let mut rep = reply();
    sign_reply(&mut rep, &sa);
    assert!(verify(&rep.encode(), &sa).is_ok());
}

#[test]
fn association_rules() {
    assert_eq!(
        SecurityAssociation::new(255, vec![0; 16]),
        Err(SaError::ReservedSpi(255))
    );
    assert_eq!(
        SecurityAssociation::new(256, vec![0; 15]),
        Err(SaError::ShortKey { bits: 120 })
    );
    let sa = SecurityAssociation::new(256, vec![0; 16]).unwrap();
    assert_eq!(sa.skew(), DEFAULT_SKEW);
    assert_eq!(DEFAULT_SKEW, Duration::from_secs(7));
    let sa = sa.with_skew(Duration::from_secs(30));
    assert_eq!(
        (sa.spi(), sa.key(), sa.skew()),
        (256, &[0; 16][..], Duration::from_secs(30))
    );
    assert_eq!(
        SaError::ShortKey { bits: 120 }.to_string(),
        "Key is 120 bits, at least 128 are required"
    );
}

#[test]
fn debug_never_shows_the_key() {
    let sa = SecurityAssociation::new(300, vec![0xab; 16]).unwrap();
    let shown = format!("{sa:?}");
    assert_eq!(
        shown,
        "SecurityAssociation { spi: 300, key: <16 bytes>, skew: 7s }"
    );
    assert!(!shown.contains("171"));
}
