//! The stream's protection over TCP: mutual TLS 1.3 (rustls, `ring` provider) from a
//! certificate directory in the layout Cloud Hypervisor and QEMU use:
//!
//! | file | who reads it | what |
//! |---|---|---|
//! | `ca-cert.pem` | both ends | the CA that signed both leaves: the only trust anchor |
//! | `server-cert.pem`, `server-key.pem` | the destination (`receive`) | its certificate and key |
//! | `client-cert.pem`, `client-key.pem` | the source (`migrate`) | its certificate and key |
//!
//! The destination requires a client certificate signed by the CA (any subject: holding a
//! key the CA certified is the authorisation). The source checks the destination's
//! certificate against the CA and against the host of `tcp:HOST:PORT`: an IP address must be
//! an IP SAN of the server certificate, a name a DNS SAN ([`server_name`]). [`generate`]
//! writes such a directory (`cargo xtask certs`). Only TLS 1.3 is spoken.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use rustls;

/// The CA certificate, trusted by both ends.
pub const CA_CERT: &str = "ca-cert.pem";
/// The destination's certificate.
pub const SERVER_CERT: &str = "server-cert.pem";
/// The destination's private key.
pub const SERVER_KEY: &str = "server-key.pem";
/// The source's certificate.
pub const CLIENT_CERT: &str = "client-cert.pem";
/// The source's private key.
pub const CLIENT_KEY: &str = "client-key.pem";

/// Why a certificate directory cannot be used, or made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file is missing, unreadable, or holds no PEM item of the kind expected.
    #[error("{}: {message} (a TLS directory holds {CA_CERT}, {SERVER_CERT}, {SERVER_KEY}, {CLIENT_CERT} and {CLIENT_KEY}; `cargo xtask certs DIR` makes one)", .path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the certificates or keys (e.g. a key that does not match).
    #[error("{dir}: {error}")]
    Config {
        /// The directory.
        dir: String,
        /// rustls's reason.
        error: String,
    },
    /// The host of a `tcp:` address is neither an IP address nor a DNS name.
    #[error("`{0}` cannot be checked against a certificate: give an IP address or a DNS name")]
    ServerName(String),
    /// Making a directory failed.
    #[error("making certificates: {0}")]
    Generate(String),
}

/// The one crypto provider both ends use: *ring* (its build needs only a C compiler),
/// AES-128-GCM first (the fastest with AES-NI; guest RAM is the bulk of what crosses).
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as suite;
    // Deprecated for lacking post-quantum key exchange, which only aws-lc-rs offers; the
    // ring provider is the one whose build needs no cmake.
    #[allow(deprecated)]
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        suite::TLS13_AES_128_GCM_SHA256,
        suite::TLS13_AES_256_GCM_SHA384,
        suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

fn certs(dir: &Path, name: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let path = dir.join(name);
    let fail = |message: String| TlsError::File {
        path: path.clone(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| fail(pem_error(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(pem_error(e)))?;
    if certs.is_empty() {
        return Err(fail("no certificate in it".into()));
    }
    Ok(certs)
}

fn key(dir: &Path, name: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let path = dir.join(name);
    PrivateKeyDer::from_pem_file(&path).map_err(|e| TlsError::File {
        path,
        message: pem_error(e),
    })
}

fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of the expected kind".into(),
        other => format!("not valid PEM: {other:?}"),
    }
}

fn roots(dir: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(dir, CA_CERT)? {
        roots.add(cert).map_err(|e| TlsError::File {
            path: dir.join(CA_CERT),
            message: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

fn config_error(dir: &Path) -> impl Fn(rustls::Error) -> TlsError + '_ {
    move |e| TlsError::Config {
        dir: dir.display().to_string(),
        error: e.to_string(),
    }
}

/// The destination's configuration: `server-cert.pem` and `server-key.pem`, and a client
/// certificate signed by `ca-cert.pem` required of every peer.
pub fn server_config(dir: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(dir)?, provider())
        .build()
        .map_err(|e| TlsError::Config {
            dir: dir.display().to_string(),
            error: e.to_string(),
        })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error(dir))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(dir, SERVER_CERT)?, key(dir, SERVER_KEY)?)
        .map_err(config_error(dir))?;
    // One connection per move: no session to resume.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The source's configuration: `client-cert.pem` and `client-key.pem`, and the server's
/// certificate checked against `ca-cert.pem` (and the name connected to, [`server_name`]).
pub fn client_config(dir: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error(dir))?
        .with_root_certificates(roots(dir)?)
        .with_client_auth_cert(certs(dir, CLIENT_CERT)?, key(dir, CLIENT_KEY)?)
        .map_err(config_error(dir))?;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The name the server's certificate must carry for `host` (the HOST of `tcp:HOST:PORT`,
/// IPv6 in brackets or not): an IP SAN for an address, a DNS SAN for a name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_owned()).map_err(|_| TlsError::ServerName(host.to_owned()))
}

/// The PEM files of a fresh certificate directory, by file name.
#[derive(Debug)]
pub struct Generated {
    /// `(file name, contents, is a private key)`, in the order of the layout.
    pub files: Vec<(&'static str, String, bool)>,
}

/// Makes a CA and, signed by it, a server certificate for `names` (IP addresses become IP
/// SANs, anything else DNS SANs) and a client certificate. Nothing is written; see
/// [`Generated::files`].
pub fn generate(names: &[String]) -> Result<Generated, TlsError> {
    let fail = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca.distinguished_name
        .push(DnType::CommonName, "Roam migration CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(fail)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(fail)?;
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |sans: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
        let mut p = CertificateParams::new(sans).map_err(fail)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![usage];
        p.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(fail)?;
        let cert = p.signed_by(&key, &issuer).map_err(fail)?;
        Ok::<_, TlsError>((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf(
        names.to_vec(),
        "Roam migration destination",
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client_cert, client_key) = leaf(
        Vec::new(),
        "Roam migration source",
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    Ok(Generated {
        files: vec![
            (CA_CERT, ca_cert.pem(), false),
            (SERVER_CERT, server_cert, false),
            (SERVER_KEY, server_key, true),
            (CLIENT_CERT, client_cert, false),
            (CLIENT_KEY, client_key, true),
        ],
    })
}

impl Generated {
    /// Writes the files into `dir` (created if missing): keys 0600, certificates 0644.
    pub fn write(&self, dir: &Path) -> Result<(), TlsError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let fail = |path: &Path, e: std::io::Error| TlsError::File {
            path: path.to_owned(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(dir, e))?;
        for (name, contents, secret) in &self.files {
            let path = dir.join(name);
            let _ = std::fs::remove_file(&path);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(if *secret { 0o600 } else { 0o644 })
                .open(&path)
                .map_err(|e| fail(&path, e))?;
            f.write_all(contents.as_bytes())
                .map_err(|e| fail(&path, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ClientConnection, ServerConnection, StreamOwned};
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn dir(tag: &str, names: &[&str]) -> PathBuf {
        let d = std::env::temp_dir().join(format!("roam-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        generate(&names).unwrap().write(&d).unwrap();
        d
    }

    /// One handshake and one message each way over loopback: how it went for the server,
    /// and for the client.
    fn talk(server: &Path, client: &Path, host: &str) -> (Result<(), String>, Result<(), String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let sc = server_config(server).unwrap();
        let t = std::thread::spawn(move || -> Result<(), String> {
            let (s, _) = l.accept().unwrap();
            let conn = ServerConnection::new(sc).unwrap();
            let mut tls = StreamOwned::new(conn, s);
            let mut b = [0; 5];
            tls.read_exact(&mut b).map_err(|e| e.to_string())?;
            tls.write_all(b"world").map_err(|e| e.to_string())?;
            Ok(())
        });
        let conn =
            ClientConnection::new(client_config(client).unwrap(), server_name(host).unwrap())
                .unwrap();
        let mut tls = StreamOwned::new(conn, TcpStream::connect(("127.0.0.1", port)).unwrap());
        let mut b = [0; 5];
        let c = tls
            .write_all(b"hello")
            .and_then(|()| tls.read_exact(&mut b))
            .map_err(|e| e.to_string());
        (t.join().unwrap(), c)
    }

    #[test]
    fn both_ends_authenticate_with_one_directory() {
        let d = dir("ok", &["127.0.0.1", "localhost"]);
        for host in ["127.0.0.1", "localhost"] {
            let (s, c) = talk(&d, &d, host);
            s.unwrap();
            c.unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        for (name, mode) in [(SERVER_KEY, 0o600), (CLIENT_KEY, 0o600), (CA_CERT, 0o644)] {
            let m = std::fs::metadata(d.join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, mode, "{name}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_server_name_not_in_the_certificate_is_refused() {
        let d = dir("name", &["198.18.0.1"]);
        let (_, c) = talk(&d, &d, "127.0.0.1");
        let e = c.unwrap_err();
        assert!(e.contains("not valid for name \"127.0.0.1\""), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_certificate_from_another_ca_is_refused_both_ways() {
        let ours = dir("ours", &["127.0.0.1"]);
        let theirs = dir("theirs", &["127.0.0.1"]);
        // A client with a certificate our CA never signed.
        // (Same CA name, another key: the signature is what fails.)
        let ours_server_with_their_client = talk(&ours, &theirs, "127.0.0.1");
        let their_server_with_our_client = talk(&theirs, &ours, "127.0.0.1");
        for (s, c) in [ours_server_with_their_client, their_server_with_our_client] {
            // The client checks the server first and gives up; the server hears why.
            let c = c.unwrap_err();
            assert!(c.contains("invalid peer certificate"), "{c}");
            assert!(s.is_err());
        }
        // A client whose certificate our CA never signed, talking to a server it trusts.
        let mixed = std::env::temp_dir().join(format!("roam-tls-mixed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&mixed);
        std::fs::create_dir_all(&mixed).unwrap();
        for name in [CA_CERT, SERVER_CERT, SERVER_KEY] {
            std::fs::copy(ours.join(name), mixed.join(name)).unwrap();
        }
        for name in [CLIENT_CERT, CLIENT_KEY] {
            std::fs::copy(theirs.join(name), mixed.join(name)).unwrap();
        }
        let (s, _) = talk(&ours, &mixed, "127.0.0.1");
        let s = s.unwrap_err();
        assert!(s.contains("invalid peer certificate"), "{s}");
        let _ = std::fs::remove_dir_all(&mixed);
        let _ = std::fs::remove_dir_all(&ours);
        let _ = std::fs::remove_dir_all(&theirs);
    }

    #[test]
    fn a_missing_or_broken_file_is_named() {
        let d = dir("broken", &["127.0.0.1"]);
        std::fs::remove_file(d.join(CLIENT_KEY)).unwrap();
        let e = client_config(&d).unwrap_err().to_string();
        assert!(e.contains(CLIENT_KEY) && e.contains("xtask certs"), "{e}");
        std::fs::write(d.join(CA_CERT), "not pem").unwrap();
        let e = server_config(&d).unwrap_err().to_string();
        assert!(e.contains(CA_CERT), "{e}");
        assert!(server_name("not a name!").is_err());
        assert!(server_name("[::1]").is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }
}
