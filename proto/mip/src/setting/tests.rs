//! The mobility setting: every field, defaults, every refusal, and printing it back.

use super::*;
use crate::{MobilityError as E, SettingError as S, ntp_now, sign_request, verify};

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

fn nat(text: &str) -> Result<NatSetting, MobilityError> {
    match text.parse::<Mobility>()? {
        Mobility::Nat(setting) => Ok(setting),
        other => panic!("{other:?}"),
    }
}

#[test]
fn none() {
    assert_eq!("none".parse(), Ok(Mobility::None));
}

#[test]
fn a_full_nat_setting() {
    let setting = nat(
        "nat:edge=198.18.3.1,edge=198.18.4.1,site=198.18.21.2,home=198.18.0.10/24,\
         loc=198.18.21.10,spi=300,key=@/etc/roam/vm.key,lifetime=60",
    )
    .unwrap();
    assert_eq!(
        setting,
        NatSetting {
            edges: vec![Ipv4Addr::new(198, 18, 3, 1), Ipv4Addr::new(198, 18, 4, 1)],
            site: Some(Ipv4Addr::new(198, 18, 21, 2)),
            home_address: Ipv4Addr::new(198, 18, 0, 10),
            prefix_len: 24,
            location: Some(Ipv4Addr::new(198, 18, 21, 10)),
            spi: 300,
            key_file: PathBuf::from("/etc/roam/vm.key"),
            lifetime: 60,
        }
    );
}

#[test]
fn a_nat_setting_for_home_needs_no_location_or_site() {
    let setting = nat("nat:home=198.18.0.10/24,spi=256,key=@k,edge=198.18.3.1").unwrap();
    assert_eq!(setting.edges, vec![Ipv4Addr::new(198, 18, 3, 1)]);
    assert_eq!((setting.location, setting.site), (None, None));
    assert_eq!(setting.lifetime, DEFAULT_LIFETIME);
}

#[test]
fn each_nat_refusal_says_why() {
    const REST: &str = "home=198.18.0.10/24,spi=300,key=@k";
    let eight = (1..=8)
        .map(|i| format!("edge=198.18.3.{i},"))
        .collect::<String>();
    let cases: Vec<(String, SettingError, &str)> = vec![
        (
            format!("nat:{REST}"),
            S::MissingField("edge"),
            "nat: missing edge=",
        ),
        (
            format!("nat:edge=198.18.3.1,{REST},ha=198.18.20.2"),
            S::UnknownField {
                name: "ha".into(),
                expected: "edge, site, home, loc, spi, key or lifetime",
            },
            "nat: unknown field \"ha\": expected edge, site, home, loc, spi, key or lifetime",
        ),
        (
            format!("nat:edge=198.18.3.1,site=198.18.21.2,site=198.18.22.2,{REST}"),
            S::DuplicateField("site"),
            "nat: site= given twice",
        ),
        (
            format!("nat:edge=198.18.3.1,{REST},loc=198.18.21.10,loc=198.18.22.10"),
            S::DuplicateField("loc"),
            "",
        ),
        (
            format!("nat:{eight}edge=198.18.3.9,{REST}"),
            S::TooManyEdges(9),
            "nat: 9 edges given; at most 8",
        ),
        (
            format!("nat:edge=edge.example,{REST}"),
            S::BadAddress {
                field: "edge",
                value: "edge.example".into(),
            },
            "nat: edge=\"edge.example\" is not an IPv4 unicast address",
        ),
        (
            format!("nat:edge=198.18.3.1,{REST},loc=224.0.0.1"),
            S::BadAddress {
                field: "loc",
                value: "224.0.0.1".into(),
            },
            "",
        ),
        (
            format!("nat:edge=198.18.3.1,site=0.0.0.0,{REST}"),
            S::BadAddress {
                field: "site",
                value: "0.0.0.0".into(),
            },
            "",
        ),
        (
            format!("nat:edge=198.18.0.10,{REST}"),
            S::HomeIsEdge(Ipv4Addr::new(198, 18, 0, 10)),
            "nat: the home address 198.18.0.10 is an edge's address",
        ),
        (
            format!("nat:edge=198.18.3.1,{REST},loc=198.18.0.10"),
            S::LocationIsHome(Ipv4Addr::new(198, 18, 0, 10)),
            "nat: loc=198.18.0.10 is the home address: a location address is the VM's address at a foreign site",
        ),
        (
            format!("nat:edge=198.18.3.1,site=198.18.21.2,{REST},loc=198.18.21.2"),
            S::LocationIsEdge(Ipv4Addr::new(198, 18, 21, 2)),
            "nat: loc=198.18.21.2 is an edge's address",
        ),
        (
            "nat:edge=198.18.3.1,home=198.18.0.10/24,spi=255,key=@k".into(),
            S::ReservedSpi(255),
            "nat: SPI 255 is reserved: use 256 or more",
        ),
        (
            "nat:edge=198.18.3.1,home=198.18.0.10/24,spi=300,key=0011".into(),
            S::InlineKey,
            "",
        ),
        (
            "nat:edge=198.18.3.1,home=198.18.0.10,spi=300,key=@k".into(),
            S::BadPrefix("198.18.0.10".into()),
            "",
        ),
        (
            format!("nat:edge=198.18.3.1,{REST},lifetime=0"),
            S::BadLifetime("0".into()),
            "",
        ),
        ("nat:".into(), S::NotNameValue("".into()), ""),
    ];
    for (text, error, message) in cases {
        let got = text.parse::<Mobility>();
        assert_eq!(got, Err(E::Nat(error)), "{text}");
        if !message.is_empty() {
            assert_eq!(got.unwrap_err().to_string(), message, "{text}");
        }
    }
    // Eight edges are fine.
    assert_eq!(nat(&format!("nat:{eight}{REST}")).unwrap().edges.len(), 8);
}

#[test]
fn nat_requests_name_the_edge_and_the_location() {
    let setting =
        nat("nat:edge=198.18.3.1,home=198.18.0.10/24,loc=198.18.21.10,spi=300,key=@k,lifetime=90")
            .unwrap();
    let edge = Ipv4Addr::new(198, 18, 3, 1);
    let loc = setting.location.unwrap();
    let req = setting.registration_request(edge, loc, 7);
    assert_eq!(req.flags, Flags::default(), "nothing is tunnelled");
    assert_eq!(
        (
            req.lifetime,
            req.home_address,
            req.home_agent,
            req.care_of,
            req.identification
        ),
        (90, setting.home_address, edge, loc, 7)
    );
    let dereg = setting.deregistration_request(edge, 8);
    assert_eq!(
        (dereg.lifetime, dereg.care_of, dereg.home_agent),
        (0, setting.home_address, edge)
    );
}

#[test]
fn display_parses_back() {
    for text in [
        "none",
        "nat:edge=198.18.3.1,edge=198.18.4.1,site=198.18.21.2,home=198.18.0.10/24,loc=198.18.21.10,spi=300,key=@/k,lifetime=300",
        "nat:edge=198.18.3.1,home=198.18.0.10/24,spi=300,key=@k,lifetime=1",
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
            "Unknown mobility \"\": expected none, mip:ha=ADDR,home=HOA/PREFIX,spi=N,key=@FILE[,lifetime=S] or nat:edge=ADDR,home=A/PREFIX,loc=L,spi=N,key=@FILE[,site=ADDR][,lifetime=S]",
        ),
        ("mobileip:x".into(), E::UnknownKind("mobileip:x".into()), ""),
        (
            "MIP:ha=1.2.3.4".into(),
            E::UnknownKind("MIP:ha=1.2.3.4".into()),
            "",
        ),
        (
            "mip:".into(),
            E::Mip(S::NotNameValue("".into())),
            "mip: expected NAME=VALUE, found \"\"",
        ),
        (format!("mip:{OK},"), E::Mip(S::NotNameValue("".into())), ""),
        (
            format!("mip:{OK},ttl=5"),
            E::Mip(S::UnknownField {
                name: "ttl".into(),
                expected: "ha, home, spi, key or lifetime",
            }),
            "mip: unknown field \"ttl\": expected ha, home, spi, key or lifetime",
        ),
        (
            format!("mip:{OK},spi=301"),
            E::Mip(S::DuplicateField("spi")),
            "mip: spi= given twice",
        ),
        (
            "mip:home=198.18.1.10/24,spi=300,key=@k".into(),
            E::Mip(S::MissingField("ha")),
            "mip: missing ha=",
        ),
        (
            "mip:ha=198.18.1.1,spi=300,key=@k".into(),
            E::Mip(S::MissingField("home")),
            "",
        ),
        (
            "mip:ha=198.18.1.1,home=198.18.1.10/24,key=@k".into(),
            E::Mip(S::MissingField("spi")),
            "",
        ),
        (
            "mip:ha=198.18.1.1,home=198.18.1.10/24,spi=300".into(),
            E::Mip(S::MissingField("key")),
            "",
        ),
        (
            "mip:ha=ha.example,home=198.18.1.10/24,spi=300,key=@k".into(),
            E::Mip(S::BadAddress {
                field: "ha",
                value: "ha.example".into(),
            }),
            "mip: ha=\"ha.example\" is not an IPv4 unicast address",
        ),
        (
            "mip:ha=255.255.255.255,home=198.18.1.10/24,spi=300,key=@k".into(),
            E::Mip(S::BadAddress {
                field: "ha",
                value: "255.255.255.255".into(),
            }),
            "",
        ),
        (
            "mip:ha=198.18.1.1,home=0.0.0.0/24,spi=300,key=@k".into(),
            E::Mip(S::BadAddress {
                field: "home",
                value: "0.0.0.0".into(),
            }),
            "",
        ),
        (
            "mip:ha=198.18.1.1,home=198.18.1.10,spi=300,key=@k".into(),
            E::Mip(S::BadPrefix("198.18.1.10".into())),
            "mip: home=\"198.18.1.10\" needs a prefix length 1–32 (home=ADDRESS/PREFIX)",
        ),
        (
            "mip:ha=198.18.1.1,home=198.18.1.10/0,spi=300,key=@k".into(),
            E::Mip(S::BadPrefix("198.18.1.10/0".into())),
            "",
        ),
        (
            "mip:ha=198.18.1.1,home=198.18.1.10/33,spi=300,key=@k".into(),
            E::Mip(S::BadPrefix("198.18.1.10/33".into())),
            "",
        ),
        (
            "mip:ha=198.18.1.1,home=198.18.1.1/24,spi=300,key=@k".into(),
            E::Mip(S::HomeIsAgent(Ipv4Addr::new(198, 18, 1, 1))),
            "mip: the home address 198.18.1.1 is the home agent's address",
        ),
        (
            "mip:ha=198.18.1.1,home=198.18.1.10/24,spi=x,key=@k".into(),
            E::Mip(S::BadSpi("x".into())),
            "mip: spi=\"x\" is not a number",
        ),
        (
            "mip:ha=198.18.1.1,home=198.18.1.10/24,spi=255,key=@k".into(),
            E::Mip(S::ReservedSpi(255)),
            "mip: SPI 255 is reserved: use 256 or more",
        ),
        (
            "mip:ha=198.18.1.1,home=198.18.1.10/24,spi=300,key=00112233445566778899aabbccddeeff"
                .into(),
            E::Mip(S::InlineKey),
            "mip: key= must name a file (key=@FILE): a key on the command line would show in the process list",
        ),
        (
            "mip:ha=198.18.1.1,home=198.18.1.10/24,spi=300,key=@".into(),
            E::Mip(S::EmptyKeyFile),
            "mip: key=@ needs a file name",
        ),
        (
            format!("mip:{OK},lifetime=0"),
            E::Mip(S::BadLifetime("0".into())),
            "mip: lifetime=\"0\" is not a number of seconds from 1 to 65534",
        ),
        (
            format!("mip:{OK},lifetime=65535"),
            E::Mip(S::BadLifetime("65535".into())),
            "",
        ),
        (
            format!("mip:{OK},lifetime=-5"),
            E::Mip(S::BadLifetime("-5".into())),
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
