//! Hex keys, the home agent's key file (every refusal with its file:line) and the mobile
//! node's key file.

use super::*;
use std::path::Path;

/// Hex to bytes for test vectors (through the parser under test only for long keys).
pub(crate) fn hex_bytes(text: &str) -> Vec<u8> {
    text.as_bytes()
        .chunks(2)
        .map(|pair| (nibble(pair[0]) << 4) | nibble(pair[1]))
        .collect()
}

const KEY: &str = "00112233445566778899aabbccddeeff";

fn parse(text: &str) -> Result<KeyTable, KeyFileError> {
    KeyTable::parse(text, Path::new("/etc/roam/ha.keys"))
}

/// The message a one-line (or more) file is refused with.
fn refusal(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn hex_keys() {
    assert_eq!(parse_hex_key(KEY), Ok(hex_bytes(KEY)));
    assert_eq!(parse_hex_key(&KEY.to_uppercase()), Ok(hex_bytes(KEY)));
    assert_eq!(parse_hex_key(KEY).unwrap()[15], 0xff);
    assert_eq!(
        parse_hex_key(&KEY[..30]),
        Err(KeyProblem::TooShort { bits: 120 })
    );
    assert_eq!(parse_hex_key(""), Err(KeyProblem::TooShort { bits: 0 }));
    assert_eq!(parse_hex_key(&KEY[..31]), Err(KeyProblem::OddLength(31)));
    assert_eq!(
        parse_hex_key("0011223344556677889g"),
        Err(KeyProblem::NotHex {
            ch: 'g',
            position: 20
        })
    );
    assert_eq!(
        parse_hex_key("0x00112233445566778899aabbccddeeff"),
        Err(KeyProblem::NotHex {
            ch: 'x',
            position: 2
        })
    );
    assert_eq!(
        parse_hex_key("00112233445566778899aabbccddeeé"),
        Err(KeyProblem::NotHex {
            ch: 'é',
            position: 31
        })
    );
}

#[test]
fn a_key_file() {
    let text = format!(
        "# Roam home agent keys\n\
         \n\
         spi=300 home=198.18.1.10 key={KEY}\n\
         \tkey={KEY}   home=198.18.1.11 spi=4294967295 skew=30  # the kv VM\n\
         spi=256 home=198.18.1.10 key={KEY}{KEY}\r\n"
    );
    let table = parse(&text).unwrap();
    assert_eq!(table.len(), 3);
    assert!(!table.is_empty());
    let first = &table.entries()[0];
    assert_eq!(first.home, Ipv4Addr::new(198, 18, 1, 10));
    assert_eq!((first.sa.spi(), first.sa.key()), (300, &hex_bytes(KEY)[..]));
    assert_eq!((first.sa.skew(), first.line), (DEFAULT_SKEW, 3));
    let second = table.by_spi(u32::MAX).unwrap();
    assert_eq!(
        (second.sa.skew(), second.line),
        (Duration::from_secs(30), 4)
    );
    assert_eq!(table.by_spi(256).unwrap().sa.key().len(), 32);
    // A key registers only its own home address.
    assert!(
        table
            .for_request(Ipv4Addr::new(198, 18, 1, 10), 300)
            .is_some()
    );
    assert!(
        table
            .for_request(Ipv4Addr::new(198, 18, 1, 11), 300)
            .is_none()
    );
    assert!(
        table
            .for_request(Ipv4Addr::new(198, 18, 1, 10), 301)
            .is_none()
    );
}

#[test]
fn each_refusal_names_file_and_line() {
    let good = format!("spi=300 home=198.18.1.10 key={KEY}\n");
    let cases = [
        (
            format!("spi=255 home=198.18.1.10 key={KEY}"),
            "SPI 255 is reserved: use 256 or more",
        ),
        (
            format!("spi=0 home=198.18.1.10 key={KEY}"),
            "SPI 0 is reserved: use 256 or more",
        ),
        (
            format!("spi=-1 home=198.18.1.10 key={KEY}"),
            "SPI \"-1\" is not a number",
        ),
        (
            format!("spi=4294967296 home=198.18.1.10 key={KEY}"),
            "SPI \"4294967296\" is not a number",
        ),
        (
            "spi=301 home=198.18.1.10 key=00112233445566778899aabbccddee".to_string(),
            "Key is 120 bits, at least 128 are required",
        ),
        (
            "spi=301 home=198.18.1.10 key=00112233445566778899aabbccddeefg".to_string(),
            "Key has 'g' at character 32, expected hex digits",
        ),
        (
            "spi=301 home=198.18.1.10 key=00112233445566778899aabbccddeeff0".to_string(),
            "Key has an odd number of hex digits (33)",
        ),
        (
            format!("spi=300 home=198.18.1.11 key={KEY}"),
            "SPI 300 is already defined on line 1",
        ),
        (
            format!("spi=301 home=198.18.1.10 key={KEY} colour=red"),
            "Unknown field \"colour\": expected spi, home, key or skew",
        ),
        (
            format!("spi=301 home=198.18.1.10 key={KEY} spi=302"),
            "Field spi given twice",
        ),
        (
            format!("spi=301 home=198.18.1.10 {KEY}"),
            &format!("Expected NAME=VALUE, found \"{KEY}\""),
        ),
        (format!("home=198.18.1.10 key={KEY}"), "Missing spi="),
        (format!("spi=301 key={KEY}"), "Missing home="),
        ("spi=301 home=198.18.1.10".to_string(), "Missing key="),
        (
            format!("spi=301 home=198.18.1 key={KEY}"),
            "Home address \"198.18.1\" is not an IPv4 unicast address",
        ),
        (
            format!("spi=301 home=0.0.0.0 key={KEY}"),
            "Home address \"0.0.0.0\" is not an IPv4 unicast address",
        ),
        (
            format!("spi=301 home=224.0.0.1 key={KEY}"),
            "Home address \"224.0.0.1\" is not an IPv4 unicast address",
        ),
        (
            format!("spi=301 home=198.18.1.10 key={KEY} skew=0"),
            "Skew \"0\" is not a whole number of seconds, 1 or more",
        ),
        (
            format!("spi=301 home=198.18.1.10 key={KEY} skew=1.5"),
            "Skew \"1.5\" is not a whole number of seconds, 1 or more",
        ),
    ];
    for (line, message) in cases {
        let text = format!("{good}\n# comment\n{line}\n");
        assert_eq!(
            refusal(&text),
            format!("/etc/roam/ha.keys:4: {message}"),
            "{line}"
        );
        match parse(&text).unwrap_err() {
            KeyFileError::Line { line: 4, .. } => {}
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_file_with_no_association_is_refused() {
    assert_eq!(
        refusal("# nothing yet\n\n   \n"),
        "/etc/roam/ha.keys: no security association (lines are `spi=N home=A.B.C.D key=HEX [skew=SECONDS]`)"
    );
}

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("roam-mip-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn loading_files() {
    let path = temp_file("ha.keys", &format!("spi=300 home=198.18.1.10 key={KEY}\n"));
    assert_eq!(KeyTable::load(&path).unwrap().len(), 1);
    let bad = temp_file("bad.keys", "spi=1 home=198.18.1.10 key=00\n");
    assert_eq!(
        KeyTable::load(&bad).unwrap_err().to_string(),
        format!("{}:1: SPI 1 is reserved: use 256 or more", bad.display())
    );
    let missing = path.with_file_name("absent.keys");
    let err = KeyTable::load(&missing).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("Cannot read key file {}", missing.display())
    );
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn client_key_files() {
    let path = temp_file("vm.key", &format!("{KEY}\n"));
    assert_eq!(read_key_file(&path).unwrap(), hex_bytes(KEY));
    let path = temp_file("vm-crlf.key", &format!("  {KEY}\r\n"));
    assert_eq!(read_key_file(&path).unwrap(), hex_bytes(KEY));
    let short = temp_file("short.key", "0011\n");
    assert_eq!(
        read_key_file(&short).unwrap_err().to_string(),
        format!(
            "{}: Key is 16 bits, at least 128 are required",
            short.display()
        )
    );
    let two = temp_file("two.key", &format!("{KEY}\n{KEY}\n"));
    assert!(matches!(
        read_key_file(&two),
        Err(ClientKeyError::Bad {
            problem: KeyProblem::NotHex {
                ch: '\n',
                position: 33
            },
            ..
        })
    ));
    let empty = temp_file("empty.key", "");
    assert!(matches!(
        read_key_file(&empty),
        Err(ClientKeyError::Bad {
            problem: KeyProblem::TooShort { bits: 0 },
            ..
        })
    ));
    let missing = short.with_file_name("absent.key");
    assert!(matches!(
        read_key_file(&missing),
        Err(ClientKeyError::Read { .. })
    ));
}
