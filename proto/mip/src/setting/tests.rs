//! The mobility setting: every field, defaults, every refusal, and printing it back.

use super::*;
use crate::{MobilityError as E, ntp_now, sign_request, verify};

fn mip(text: &str) -> Result<MipSetting, MobilityError> {
    match text.parse::<Mobility>()? {
        Mobility::Mip(setting) => Ok(setting),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_full_setting() {
    let setting =
        mip("mip:ha=198.18.1.1,home=198.18.1.10/24,spi=300,key=@/etc/roam/vm.key,lifetime=600")
            .unwrap();
    assert_eq!(
        setting,
        MipSetting {
            home_agent: Ipv4Addr::new(198, 18, 1, 1),
            home_address: Ipv4Addr::new(198, 18, 1, 10),
            prefix_len: 24,
            spi: 300,
            key_file: PathBuf::from("/etc/roam/vm.key"),
            lifetime: 600,
        }
    );
}

#[test]
fn defaults_and_field_order() {
    let setting = mip("mip:key=@vm.key,spi=256,home=198.18.1.10/32,ha=198.18.3.1").unwrap();
    assert_eq!(setting.lifetime, DEFAULT_LIFETIME);
    assert_eq!(DEFAULT_LIFETIME, 300);
    assert_eq!(setting.prefix_len, 32);
    assert_eq!(setting.key_file, PathBuf::from("vm.key"));
    assert_eq!(Mobility::default(), Mobility::None);
}

#[test]
fn none_and_nat() {
    assert_eq!("none".parse(), Ok(Mobility::None));
    assert_eq!(
        "nat:edge=198.18.3.1".parse(),
        Ok(Mobility::Nat("edge=198.18.3.1".into()))
    );
    assert_eq!("nat:".parse(), Ok(Mobility::Nat(String::new())));
}

#[test]
fn display_parses_back() {
    for text in [
        "none",
        "nat:anything,at=all",
        "mip:ha=198.18.1.1,home=198.18.1.10/24,spi=300,key=@/k,lifetime=1",
        "mip:ha=198.18.1.1,home=198.18.1.10/24,spi=300,key=@/k,lifetime=65534",
    ] {
        let parsed: Mobility = text.parse().unwrap();
        assert_eq!(parsed.to_string(), text);
    }
    let short: Mobility = "mip:ha=198.18.1.1,home=198.18.1.10/24,spi=300,key=@k"
        .parse()
        .unwrap();
    assert_eq!(short.to_string().parse::<Mobility>(), Ok(short));
}

#[test]
fn each_refusal_says_why() {
    const OK: &str = "ha=198.18.1.1,home=198.18.1.10/24,spi=300,key=@k";
    let cases: Vec<(String, MobilityError, &str)> = vec![
        (
            "".into(),
            E::UnknownKind("".into()),
            "Unknown mobility \"\": expected none, mip:ha=ADDR,home=HOA/PREFIX,spi=N,key=@FILE[,lifetime=S] or nat:...",
        ),
        ("mobileip:x".into(), E::UnknownKind("mobileip:x".into()), ""),
        (
            "MIP:ha=1.2.3.4".into(),
            E::UnknownKind("MIP:ha=1.2.3.4".into()),
            "",
        ),
        (
            "mip:".into(),
            E::NotNameValue("".into()),
            "mip: expected NAME=VALUE, found \"\"",
        ),
        (format!("mip:{OK},"), E::NotNameValue("".into()), ""),
        (
            format!("mip:{OK},ttl=5"),
            E::UnknownField("ttl".into()),
            "mip: unknown field \"ttl\": expected ha, home, spi, key or lifetime",
        ),
        (
            format!("mip:{OK},spi=301"),
            E::DuplicateField("spi"),
            "mip: spi= given twice",
        ),
        (
            "mip:home=198.18.1.10/24,spi=300,key=@k".into(),
            E::MissingField("ha"),
            "mip: missing ha=",
        ),
        (
            "mip:ha=198.18.1.1,spi=300,key=@k".into(),
            E::MissingField("home"),
            "",
        ),
        (
            "mip:ha=198.18.1.1,home=198.18.1.10/24,key=@k".into(),
            E::MissingField("spi"),
            "",
        ),
        (
            "mip:ha=198.18.1.1,home=198.18.1.10/24,spi=300".into(),
            E::MissingField("key"),
            "",
        ),
        (
            "mip:ha=ha.example,home=198.18.1.10/24,spi=300,key=@k".into(),
            E::BadAddress {
                field: "ha",
                value: "ha.example".into(),
            },
            "mip: ha=\"ha.example\" is not an IPv4 unicast address",
        ),
        (
            "mip:ha=255.255.255.255,home=198.18.1.10/24,spi=300,key=@k".into(),
            E::BadAddress {
                field: "ha",
                value: "255.255.255.255".into(),
            },
            "",
        ),
        (
            "mip:ha=198.18.1.1,home=0.0.0.0/24,spi=300,key=@k".into(),
            E::BadAddress {
                field: "home",
                value: "0.0.0.0".into(),
            },
            "",
        ),
        (
            "mip:ha=198.18.1.1,home=198.18.1.10,spi=300,key=@k".into(),
            E::BadPrefix("198.18.1.10".into()),
            "mip: home=\"198.18.1.10\" needs a prefix length 1–32 (home=ADDRESS/PREFIX)",
        ),
        (
            "mip:ha=198.18.1.1,home=198.18.1.10/0,spi=300,key=@k".into(),
            E::BadPrefix("198.18.1.10/0".into()),
            "",
        ),
        (
            "mip:ha=198.18.1.1,home=198.18.1.10/33,spi=300,key=@k".into(),
            E::BadPrefix("198.18.1.10/33".into()),
            "",
        ),
        (
            "mip:ha=198.18.1.1,home=198.18.1.1/24,spi=300,key=@k".into(),
            E::HomeIsAgent(Ipv4Addr::new(198, 18, 1, 1)),
            "mip: the home address 198.18.1.1 is the home agent's address",
        ),
        (
            "mip:ha=198.18.1.1,home=198.18.1.10/24,spi=x,key=@k".into(),
            E::BadSpi("x".into()),
            "mip: spi=\"x\" is not a number",
        ),
        (
            "mip:ha=198.18.1.1,home=198.18.1.10/24,spi=255,key=@k".into(),
            E::ReservedSpi(255),
            "mip: SPI 255 is reserved: use 256 or more",
        ),
        (
            "mip:ha=198.18.1.1,home=198.18.1.10/24,spi=300,key=00112233445566778899aabbccddeeff"
                .into(),
            E::InlineKey,
            "mip: key= must name a file (key=@FILE): a key on the command line would show in the process list",
        ),
        (
            "mip:ha=198.18.1.1,home=198.18.1.10/24,spi=300,key=@".into(),
            E::EmptyKeyFile,
            "mip: key=@ needs a file name",
        ),
        (
            format!("mip:{OK},lifetime=0"),
            E::BadLifetime("0".into()),
            "mip: lifetime=\"0\" is not a number of seconds from 1 to 65534",
        ),
        (
            format!("mip:{OK},lifetime=65535"),
            E::BadLifetime("65535".into()),
            "",
        ),
        (
            format!("mip:{OK},lifetime=-5"),
            E::BadLifetime("-5".into()),
            "",
        ),
    ];
    for (text, error, message) in cases {
        let got = text.parse::<Mobility>();
        assert_eq!(got, Err(error), "{text}");
        if !message.is_empty() {
            assert_eq!(got.unwrap_err().to_string(), message, "{text}");
        }
    }
}

#[test]
fn requests_from_a_setting() {
    let setting = mip("mip:ha=198.18.1.1,home=198.18.1.10/24,spi=300,key=@k,lifetime=120").unwrap();
    let care_of = Ipv4Addr::new(198, 18, 2, 20);
    let req = setting.registration_request(care_of, 42);
    assert_eq!(req.flags, Flags::ROAM);
    assert_eq!(
        (
            req.lifetime,
            req.home_address,
            req.home_agent,
            req.care_of,
            req.identification
        ),
        (120, setting.home_address, setting.home_agent, care_of, 42)
    );
    assert!(req.extensions.is_empty());
    let dereg = setting.deregistration_request(43);
    assert_eq!(
        (dereg.lifetime, dereg.care_of, dereg.identification),
        (0, setting.home_address, 43)
    );
}

#[test]
fn the_key_file_gives_the_association() {
    let dir = std::env::temp_dir().join(format!("roam-mip-setting-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("vm.key");
    std::fs::write(&key_file, "000102030405060708090a0b0c0d0e0f\n").unwrap();
    let setting = mip(&format!(
        "mip:ha=198.18.1.1,home=198.18.1.10/24,spi=300,key=@{}",
        key_file.display()
    ))
    .unwrap();
    let sa = setting.security_association().unwrap();
    assert_eq!(
        (sa.spi(), sa.key()),
        (300, &(0..16).collect::<Vec<u8>>()[..])
    );
    let mut req = setting.registration_request(Ipv4Addr::new(198, 18, 2, 20), ntp_now());
    sign_request(&mut req, &sa);
    assert!(verify(&req.encode(), &sa).is_ok());

    let missing = MipSetting {
        key_file: dir.join("absent.key"),
        ..setting.clone()
    };
    assert!(matches!(
        missing.security_association(),
        Err(ClientKeyError::Read { .. })
    ));
    let reserved = MipSetting { spi: 7, ..setting };
    assert!(matches!(
        reserved.security_association(),
        Err(ClientKeyError::Association(crate::SaError::ReservedSpi(7)))
    ));
}
