//! A small lab PKI for a fleet without one (`cis490-reconciler certs`): a CA, a server
//! certificate and one client certificate per agent, all ECDSA P-256 made with rcgen on ring.
//!
//! Files in the certificate folder:
//!
//! | file | what |
//! |------|------|
//! | `ca.pem` | the CA certificate: every agent and cis490ctl trusts it (`--ca-file`); the server checks client certificates against it (`--client-ca-file`) |
//! | `ca-key.pem` | the CA's key (0600): signs the certificates below; never leaves this folder |
//! | `server.pem`, `server-key.pem` | the server's certificate (its SANs: the names and addresses clients connect to) and key |
//! | `NAME.pem`, `NAME-key.pem` | agent NAME's client certificate (client-auth only; SAN and CN are NAME) and key |
//!
//! Key files are written owner-only (0600 on Unix); existing files are never replaced
//! without `force`. `init` keeps a CA already in the folder, so it also renews the server
//! certificate or changes its names without invalidating the agents' certificates.
//!
//! The worker name a client certificate proves ([`certificate_worker_name`]) is its first DNS
//! SAN that is a valid worker name, else its subject CN.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use cis490_api::WorkerName;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, DnsName, UnixTime};

/// The CA certificate's file name.
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file name.
pub const CA_KEY: &str = "ca-key.pem";
/// The server certificate's file name.
pub const SERVER_CERT: &str = "server.pem";
/// The server key's file name.
pub const SERVER_KEY: &str = "server-key.pem";

/// How long the CA is valid.
const CA_VALID_DAYS: i64 = 3650;
/// How long server and agent certificates are valid (renew: `init --force` for the server,
/// `issue-agent NAME --force` for an agent; the CA stays).
const LEAF_VALID_DAYS: i64 = 730;
/// Certificates start a day in the past, so a machine whose clock lags (a Raspberry Pi
/// before NTP) already accepts them.
const BACKDATE_DAYS: i64 = 1;

/// An agent's certificate file name.
pub fn agent_cert_file(name: &WorkerName) -> String {
    format!("{name}.pem")
}

/// An agent's key file name.
pub fn agent_key_file(name: &WorkerName) -> String {
    format!("{name}-key.pem")
}

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// Files that would be replaced exist and `--force` was not given.
    #[error(
        "{} already exist{} in {dir}: pass --force to replace {}",
        files.join(", "),
        if files.len() == 1 { "s" } else { "" },
        if files.len() == 1 { "it" } else { "them" }
    )]
    Exists { dir: PathBuf, files: Vec<String> },
    /// The folder could not be created.
    #[error("cannot create the certificate folder {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The CA is missing or unreadable.
    #[error(
        "cannot read the lab CA's {path}: {source}. Make the CA first with \
         `cis490-reconciler certs init --dir {dir}`, or pass the --dir that holds it"
    )]
    ReadCa {
        path: PathBuf,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The CA files are not a CA this tool can sign with.
    #[error("cannot sign with the CA in {dir}: {message}")]
    BadCa { dir: PathBuf, message: String },
    /// A `--san` value is neither an IP address nor a DNS name.
    #[error(
        "invalid --san {value:?}: expected a host name (like pi.lab or localhost) or an IP \
         address (like 192.168.1.20)"
    )]
    BadSan { value: String },
    /// No SAN at all.
    #[error("a server certificate needs at least one name: pass --san HOST_OR_IP")]
    NoSans,
    /// rcgen refused the parameters.
    #[error("generating {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
}

fn generate(what: &'static str) -> impl FnOnce(rcgen::Error) -> CertsError {
    move |source| CertsError::Generate { what, source }
}

/// What [`init`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    /// False when an existing CA was kept.
    pub new_ca: bool,
    /// The server certificate's SANs.
    pub sans: Vec<String>,
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// What [`issue_agent`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedAgent {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The server certificate's SANs when none are given: `localhost`, `127.0.0.1`, `::1` and
/// this machine's host name (when it is a valid DNS name).
pub fn default_sans() -> Vec<String> {
    let mut sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Some(host) = host_name() {
        if !sans.contains(&host) && DnsName::try_from(host.as_str()).is_ok() {
            sans.push(host);
        }
    }
    sans
}

fn host_name() -> Option<String> {
    #[cfg(unix)]
    {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
    }
    #[cfg(not(unix))]
    {
        std::env::var("COMPUTERNAME")
            .ok()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
    }
}

fn san(value: &str) -> Result<SanType, CertsError> {
    let bad = || CertsError::BadSan {
        value: value.to_string(),
    };
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    DnsName::try_from(value).map_err(|_| bad())?;
    Ok(SanType::DnsName(value.try_into().map_err(|_| bad())?))
}

fn days(n: i64) -> time::Duration {
    time::Duration::days(n)
}

/// Validity from a day ago for `valid_days`, and a random serial number.
fn leaf_params(valid_days: i64) -> CertificateParams {
    let now = time::OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.not_before = now - days(BACKDATE_DAYS);
    params.not_after = now + days(valid_days);
    let mut serial: [u8; 16] = rand::random();
    // Positive, as RFC 5280 wants.
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.distinguished_name = DistinguishedName::new();
    params.use_authority_key_identifier_extension = true;
    params
}

fn ca_params(host: &str) -> CertificateParams {
    let mut params = leaf_params(CA_VALID_DAYS);
    params.use_authority_key_identifier_extension = false;
    // Unique: two CAs with one name make a wrong CA fail as a bad signature rather than as
    // an unknown issuer, which hides the fix (--ca-file).
    let id: [u8; 4] = rand::random();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("cis490 lab CA {} ({host})", hex::encode(id)),
    );
    // Path length 0: it signs end-entity certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Owner-only for keys (0600), world-readable for certificates. With `force` an existing
/// file is removed first, so a new key file never inherits an old file's mode.
fn write_file(path: &Path, contents: &str, secret: bool, force: bool) -> Result<(), CertsError> {
    let fail = |source| CertsError::Write {
        path: path.to_path_buf(),
        source,
    };
    if force {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(e)),
        }
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(fail)?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(fail)
}

fn create_dir(dir: &Path) -> Result<(), CertsError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| CertsError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })
}

fn refuse_existing(dir: &Path, names: &[&str], force: bool) -> Result<(), CertsError> {
    if force {
        return Ok(());
    }
    let existing: Vec<String> = names
        .iter()
        .filter(|n| dir.join(n).exists())
        .map(|n| n.to_string())
        .collect();
    if existing.is_empty() {
        Ok(())
    } else {
        Err(CertsError::Exists {
            dir: dir.to_path_buf(),
            files: existing,
        })
    }
}

/// Makes the lab CA in `dir` (unless `ca.pem` and `ca-key.pem` are there already, which are
/// then kept) and a server certificate for `sans` (empty: [`default_sans`]).
pub fn init(dir: &Path, sans: &[String], force: bool) -> Result<InitReport, CertsError> {
    let sans: Vec<String> = if sans.is_empty() {
        default_sans()
    } else {
        sans.to_vec()
    };
    let san_types = sans.iter().map(|s| san(s)).collect::<Result<Vec<_>, _>>()?;
    let Some(first) = sans.first() else {
        return Err(CertsError::NoSans);
    };
    let keep_ca = dir.join(CA_CERT).exists() && dir.join(CA_KEY).exists();
    if keep_ca {
        refuse_existing(dir, &[SERVER_CERT, SERVER_KEY], force)?;
    } else {
        refuse_existing(dir, &[CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY], force)?;
    }
    create_dir(dir)?;
    let issuer = if keep_ca {
        LabCa::load(dir)?.issuer
    } else {
        let key = KeyPair::generate().map_err(generate("the CA's key"))?;
        let params = ca_params(&host_name().unwrap_or_else(|| "cis490".into()));
        let cert = params
            .self_signed(&key)
            .map_err(generate("the CA certificate"))?;
        write_file(&dir.join(CA_KEY), &key.serialize_pem(), true, force)?;
        write_file(&dir.join(CA_CERT), &cert.pem(), false, force)?;
        Issuer::new(params, key)
    };

    let key = KeyPair::generate().map_err(generate("the server's key"))?;
    let mut params = leaf_params(LEAF_VALID_DAYS);
    params.subject_alt_names = san_types;
    params
        .distinguished_name
        .push(DnType::CommonName, first.as_str());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(generate("the server certificate"))?;
    write_file(&dir.join(SERVER_KEY), &key.serialize_pem(), true, force)?;
    write_file(&dir.join(SERVER_CERT), &cert.pem(), false, force)?;
    Ok(InitReport {
        new_ca: !keep_ca,
        sans,
        ca_cert: dir.join(CA_CERT),
        server_cert: dir.join(SERVER_CERT),
        server_key: dir.join(SERVER_KEY),
    })
}

/// Makes `NAME.pem` and `NAME-key.pem` in `dir`, signed by the CA there: a client-auth
/// certificate whose SAN and CN are `name`. Checked against `ca.pem` before it is written.
pub fn issue_agent(dir: &Path, name: &WorkerName, force: bool) -> Result<IssuedAgent, CertsError> {
    let cert_name = agent_cert_file(name);
    let key_name = agent_key_file(name);
    let ca = LabCa::load(dir)?;
    refuse_existing(dir, &[&cert_name, &key_name], force)?;
    let key = KeyPair::generate().map_err(generate("the agent's key"))?;
    let mut params = leaf_params(LEAF_VALID_DAYS);
    // A worker name need not be a DNS name (`gpu_1`): the CN carries it then.
    if let Ok(dns) = name.as_str().try_into() {
        params.subject_alt_names = vec![SanType::DnsName(dns)];
    }
    params
        .distinguished_name
        .push(DnType::CommonName, name.as_str());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(generate("the agent certificate"))?;
    ca.check_signed(cert.der())?;
    let issued = IssuedAgent {
        cert: dir.join(&cert_name),
        key: dir.join(&key_name),
    };
    write_file(&issued.key, &key.serialize_pem(), true, force)?;
    write_file(&issued.cert, &cert.pem(), false, force)?;
    Ok(issued)
}

/// The CA of a certificate folder, ready to sign.
struct LabCa {
    dir: PathBuf,
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl LabCa {
    /// Reads `ca.pem` and `ca-key.pem`. rcgen signs with the issuer's subject name, which is
    /// read back from `ca.pem` (so a certificate it makes names its issuer byte for byte).
    fn load(dir: &Path) -> Result<LabCa, CertsError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| CertsError::ReadCa {
                path,
                dir: dir.to_path_buf(),
                source,
            })
        };
        let bad = |message: String| CertsError::BadCa {
            dir: dir.to_path_buf(),
            message,
        };
        let cert_pem = read(CA_CERT)?;
        let key_pem = read(CA_KEY)?;
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| bad(format!("{CA_CERT} holds no PEM certificate ({e})")))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| bad(format!("{CA_KEY} holds no usable private key ({e})")))?;
        let parsed = webpki::EndEntityCert::try_from(&cert)
            .map_err(|e| bad(format!("{CA_CERT} does not parse as X.509 ({e})")))?;
        let spki = parsed.subject_public_key_info();
        if rcgen::PublicKeyData::subject_public_key_info(&key) != spki.as_ref() {
            return Err(bad(format!("{CA_KEY} is not the key of {CA_CERT}")));
        }
        let names = parse_name(parsed.subject()).ok_or_else(|| {
            bad(format!(
                "{CA_CERT}'s subject name is not one this tool writes; sign with the tool that \
                 made this CA, or make a new one with `certs init` in an empty folder"
            ))
        })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = names;
        Ok(LabCa {
            dir: dir.to_path_buf(),
            cert,
            issuer: Issuer::new(params, key),
        })
    }

    /// Verifies `leaf` as a client certificate against this CA, as the server will.
    fn check_signed(&self, leaf: &CertificateDer<'_>) -> Result<(), CertsError> {
        let bad = |message: String| CertsError::BadCa {
            dir: self.dir.clone(),
            message,
        };
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.cert.clone())
            .map_err(|e| bad(format!("{CA_CERT} is not a usable CA certificate ({e})")))?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .map_err(|e| bad(e.to_string()))?;
        verifier
            .verify_client_cert(leaf, &[], UnixTime::now())
            .map_err(|e| {
                bad(format!(
                    "a certificate it signed does not verify against {CA_CERT} ({e})"
                ))
            })?;
        Ok(())
    }
}

/// The worker name a client certificate proves: its first DNS SAN that is a valid worker
/// name, else its subject common name (CN) when that is one.
pub fn certificate_worker_name(cert: &CertificateDer<'_>) -> Option<WorkerName> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    if let Some(name) = parsed
        .valid_dns_names()
        .find_map(|n| WorkerName::parse(n).ok())
    {
        return Some(name);
    }
    subject_common_name(parsed.subject()).and_then(|cn| WorkerName::parse(&cn).ok())
}

// ---- a little DER, for subject names (rcgen reads none without x509-parser) ----

const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_OID: u8 = 0x06;
const TAG_UTF8: u8 = 0x0c;
const TAG_PRINTABLE: u8 = 0x13;
const TAG_IA5: u8 = 0x16;

/// Splits DER bytes into (tag, contents) items; None when malformed.
fn der_items(mut input: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut items = Vec::new();
    while !input.is_empty() {
        let tag = *input.first()?;
        let first = *input.get(1)?;
        let (len, header) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for b in input.get(2..2 + n)? {
                len = (len << 8) | usize::from(*b);
            }
            (len, 2 + n)
        };
        let contents = input.get(header..header.checked_add(len)?)?;
        items.push((tag, contents));
        input = &input[header + len..];
    }
    Some(items)
}

fn oid_arcs(bytes: &[u8]) -> Option<Vec<u64>> {
    let (first, rest) = bytes.split_first()?;
    let mut arcs = vec![u64::from(first / 40), u64::from(first % 40)];
    let mut value: u64 = 0;
    for b in rest {
        value = value.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            arcs.push(value);
            value = 0;
        }
    }
    Some(arcs)
}

/// The attributes of a subject name (the contents of its SEQUENCE): one (OID, tag, text)
/// per attribute, None when malformed or holding a multi-valued RDN.
fn name_attributes(subject: &[u8]) -> Option<Vec<(Vec<u64>, u8, String)>> {
    let mut out = Vec::new();
    for (tag, rdn) in der_items(subject)? {
        if tag != TAG_SET {
            return None;
        }
        let attributes = der_items(rdn)?;
        let [(TAG_SEQUENCE, attribute)] = attributes.as_slice() else {
            return None;
        };
        let parts = der_items(attribute)?;
        let [(TAG_OID, oid), (value_tag, value)] = parts.as_slice() else {
            return None;
        };
        let text = String::from_utf8(value.to_vec()).ok()?;
        out.push((oid_arcs(oid)?, *value_tag, text));
    }
    Some(out)
}

/// Rebuilds a subject name for rcgen, so a certificate signed with it names its issuer
/// exactly as the CA certificate does.
fn parse_name(subject: &[u8]) -> Option<DistinguishedName> {
    let mut dn = DistinguishedName::new();
    for (oid, tag, text) in name_attributes(subject)? {
        let value = match tag {
            TAG_UTF8 => DnValue::Utf8String(text),
            TAG_PRINTABLE => DnValue::PrintableString(text.try_into().ok()?),
            TAG_IA5 => DnValue::Ia5String(text.try_into().ok()?),
            _ => return None,
        };
        dn.push(DnType::from_oid(&oid), value);
    }
    Some(dn)
}

fn subject_common_name(subject: &[u8]) -> Option<String> {
    const COMMON_NAME: [u64; 4] = [2, 5, 4, 3];
    name_attributes(subject)?
        .into_iter()
        .find(|(oid, tag, _)| {
            oid[..] == COMMON_NAME && matches!(*tag, TAG_UTF8 | TAG_PRINTABLE | TAG_IA5)
        })
        .map(|(_, _, text)| text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> WorkerName {
        WorkerName::parse(s).unwrap()
    }

    fn pem_cert(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).unwrap()
    }

    #[test]
    fn init_makes_a_ca_and_a_server_cert_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let report = init(&certs, &["pi.lab".into(), "10.0.0.5".into()], false).unwrap();
        assert!(report.new_ca);
        assert_eq!(report.sans, vec!["pi.lab", "10.0.0.5"]);
        for f in [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY] {
            assert!(certs.join(f).is_file(), "{f}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for (f, want) in [
                (CA_KEY, 0o600),
                (SERVER_KEY, 0o600),
                (CA_CERT, 0o644),
                (SERVER_CERT, 0o644),
            ] {
                let mode = std::fs::metadata(certs.join(f))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, want, "{f}: {mode:o}");
            }
        }
        let server = pem_cert(&certs.join(SERVER_CERT));
        let parsed = webpki::EndEntityCert::try_from(&server).unwrap();
        assert_eq!(parsed.valid_dns_names().collect::<Vec<_>>(), vec!["pi.lab"]);

        // Again: refused, naming the files and --force.
        let err = init(&certs, &[], false).unwrap_err();
        assert!(matches!(err, CertsError::Exists { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("server.pem") && text.contains("--force"),
            "{text}"
        );

        // --force renews the server certificate and keeps the CA.
        let ca_before = std::fs::read(certs.join(CA_CERT)).unwrap();
        let renewed = init(&certs, &["pi.lab".into()], true).unwrap();
        assert!(!renewed.new_ca);
        assert_eq!(std::fs::read(certs.join(CA_CERT)).unwrap(), ca_before);
        assert_ne!(pem_cert(&certs.join(SERVER_CERT)), server);
    }

    #[test]
    fn default_sans_cover_loopback() {
        let sans = default_sans();
        for want in ["localhost", "127.0.0.1"] {
            assert!(sans.iter().any(|s| s == want), "{sans:?}");
        }
        for s in &sans {
            assert!(san(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn bad_sans_are_refused_by_value() {
        let dir = tempfile::tempdir().unwrap();
        let err = init(dir.path(), &["ok.lab".into(), "not a host".into()], false).unwrap_err();
        assert!(matches!(err, CertsError::BadSan { .. }), "{err}");
        assert!(err.to_string().contains("not a host"), "{err}");
        assert!(!dir.path().join(CA_CERT).exists(), "nothing written");
    }

    #[test]
    fn agent_certs_carry_the_worker_name_and_verify_against_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &["localhost".into()], false).unwrap();
        let issued = issue_agent(dir.path(), &name("gpu-box"), false).unwrap();
        assert_eq!(issued.cert, dir.path().join("gpu-box.pem"));
        let cert = pem_cert(&issued.cert);
        assert_eq!(certificate_worker_name(&cert), Some(name("gpu-box")));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&issued.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }
        let err = issue_agent(dir.path(), &name("gpu-box"), false).unwrap_err();
        assert!(err.to_string().contains("gpu-box.pem"), "{err}");
        issue_agent(dir.path(), &name("gpu-box"), true).unwrap();

        // Not a DNS name: the CN carries it.
        let odd = issue_agent(dir.path(), &name("gpu_1..x"), false).unwrap();
        assert_eq!(
            certificate_worker_name(&pem_cert(&odd.cert)),
            Some(name("gpu_1..x"))
        );
        // The server certificate is no client certificate (no clientAuth) ...
        let ca = LabCa::load(dir.path()).unwrap();
        assert!(ca
            .check_signed(&pem_cert(&dir.path().join(SERVER_CERT)))
            .is_err());
        // ... and a certificate from another CA does not verify.
        let other = tempfile::tempdir().unwrap();
        init(other.path(), &["localhost".into()], false).unwrap();
        let foreign = issue_agent(other.path(), &name("gpu-box"), false).unwrap();
        assert!(ca.check_signed(&pem_cert(&foreign.cert)).is_err());
    }

    #[test]
    fn issuing_without_a_ca_says_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = issue_agent(dir.path(), &name("a"), false).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("ca.pem") && text.contains("certs init"),
            "{text}"
        );
    }

    #[test]
    fn a_ca_key_that_does_not_match_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &["localhost".into()], false).unwrap();
        std::fs::copy(dir.path().join(SERVER_KEY), dir.path().join(CA_KEY)).unwrap();
        let err = issue_agent(dir.path(), &name("a"), false).unwrap_err();
        assert!(
            err.to_string().contains("is not the key of ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn malformed_der_is_none_never_a_panic() {
        for bytes in [
            &[][..],
            &[0x31],
            &[0x31, 0x85, 1, 2, 3, 4, 5],
            &[0x31, 0x05, 0x30],
        ] {
            let _ = name_attributes(bytes);
            let _ = subject_common_name(bytes);
        }
        assert!(der_items(&[0x30, 0x05, 1]).is_none());
    }
}
