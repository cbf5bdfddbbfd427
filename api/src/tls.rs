//! TLS for the clients (agent, cis490ctl, tests): which CA to trust and which client
//! certificate to present, loaded from PEM files with errors that name the file, and the
//! classification of a failed handshake into a [`TlsProblem`] that says which flag fixes it.
//! The agent and cis490ctl share these names: `--ca-file` / `CIS490_CA_FILE`,
//! `--cert-file` / `CIS490_CERT_FILE`, `--key-file` / `CIS490_KEY_FILE`.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::{self, SectionKind};

/// The CA file's environment variable (agent and cis490ctl).
pub const CA_FILE_ENV: &str = "CIS490_CA_FILE";
/// The client certificate's environment variable (agent and cis490ctl).
pub const CERT_FILE_ENV: &str = "CIS490_CERT_FILE";
/// The client key's environment variable (agent and cis490ctl).
pub const KEY_FILE_ENV: &str = "CIS490_KEY_FILE";

/// The TLS files a client uses; every one optional. With none, `https://` servers are
/// checked against the built-in public roots only (no lab CA) and no certificate is shown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM file of CA certificates to trust (added to the built-in public roots).
    pub ca_file: Option<PathBuf>,
    /// PEM file of this client's certificate (chain), for mTLS.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// Why a TLS file given to a client cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid PEM.
    #[error("{path} is not a valid PEM file: {message}")]
    BadPem { path: PathBuf, message: String },
    /// A certificate file holds no `BEGIN CERTIFICATE` section.
    #[error(
        "{path} holds no PEM certificate (expected a `-----BEGIN CERTIFICATE-----` section, \
         like the ca.pem or NAME.pem made by `cis490-reconciler certs`)"
    )]
    NoCertificate { path: PathBuf },
    /// A key file holds no private key.
    #[error(
        "{path} holds no PEM private key (expected a `-----BEGIN PRIVATE KEY-----` section, \
         like the NAME-key.pem made by `cis490-reconciler certs issue-agent NAME`)"
    )]
    NoPrivateKey { path: PathBuf },
    /// A key file holds something other than one private key.
    #[error(
        "{path} holds {what}, but a key file must hold exactly one private key (PKCS#8, \
         PKCS#1 or SEC1 PEM); convert it with `openssl pkcs8 -topk8 -nocrypt`"
    )]
    UnexpectedKeyContent { path: PathBuf, what: String },
    /// Only one half of the client identity was given.
    #[error(
        "a client certificate needs both --cert-file ({cert_env}) and --key-file ({key_env}); \
         only {given} was given"
    )]
    HalfIdentity {
        given: &'static str,
        cert_env: &'static str,
        key_env: &'static str,
    },
    /// The HTTP client refused the files (for example a key that does not parse).
    #[error("cannot use {what}: {message}")]
    Rejected { what: String, message: String },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn sections(path: &Path, bytes: &[u8]) -> Result<Vec<SectionKind>, TlsFileError> {
    let mut reader = std::io::Cursor::new(bytes);
    let mut kinds = Vec::new();
    loop {
        match pem::from_buf(&mut reader) {
            Ok(Some((kind, _))) => kinds.push(kind),
            Ok(None) => return Ok(kinds),
            Err(e) => {
                return Err(TlsFileError::BadPem {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })
            }
        }
    }
}

/// Reads a PEM file of certificates: its bytes, checked to hold at least one certificate.
pub fn read_certificates_pem(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    let bytes = read(path)?;
    let kinds = sections(path, &bytes)?;
    if !kinds.contains(&SectionKind::Certificate) {
        return Err(TlsFileError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Reads a PEM key file: its bytes, checked to hold exactly one private key and nothing else.
pub fn read_private_key_pem(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    let bytes = read(path)?;
    let kinds = sections(path, &bytes)?;
    let is_key = |k: &SectionKind| {
        matches!(
            k,
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
        )
    };
    let keys = kinds.iter().filter(|k| is_key(k)).count();
    let others: Vec<String> = kinds
        .iter()
        .filter(|k| !is_key(k))
        .map(|k| format!("{k:?}"))
        .collect();
    match (keys, others.is_empty()) {
        (0, true) => Err(TlsFileError::NoPrivateKey {
            path: path.to_path_buf(),
        }),
        (1, true) => Ok(bytes),
        (n, _) => Err(TlsFileError::UnexpectedKeyContent {
            path: path.to_path_buf(),
            what: if others.is_empty() {
                format!("{n} private keys")
            } else {
                format!("{n} private key(s) and {}", others.join(", "))
            },
        }),
    }
}

/// A client identity's PEM (certificate chain, then key) and a description naming its files.
pub(crate) type IdentityPem = (Vec<u8>, String);

impl ClientTls {
    /// The client identity's PEM (certificate chain, then key) and its description, when
    /// both files are given; an error comes with the flag of the file it is about.
    pub(crate) fn identity_pem(&self) -> Result<Option<IdentityPem>, (&'static str, TlsFileError)> {
        let half = |given| TlsFileError::HalfIdentity {
            given,
            cert_env: CERT_FILE_ENV,
            key_env: KEY_FILE_ENV,
        };
        match (&self.cert_file, &self.key_file) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(("--key-file", half("--cert-file"))),
            (None, Some(_)) => Err(("--cert-file", half("--key-file"))),
            (Some(cert), Some(key)) => {
                let mut pem = read_certificates_pem(cert).map_err(|e| ("--cert-file", e))?;
                if !pem.ends_with(b"\n") {
                    pem.push(b'\n');
                }
                pem.extend(read_private_key_pem(key).map_err(|e| ("--key-file", e))?);
                let what = format!(
                    "the client certificate {} with key {}",
                    cert.display(),
                    key.display()
                );
                Ok(Some((pem, what)))
            }
        }
    }
}

/// What went wrong setting up TLS with the server, in terms of what fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsProblem {
    /// The server's certificate is not signed by a CA this client trusts.
    UntrustedServer,
    /// The server's certificate does not name the host the URL connects to.
    WrongServerName,
    /// The server's certificate has expired or is not valid yet.
    ServerCertificateExpired,
    /// The server refused this client's certificate (or required one and got none).
    ClientCertificateRefused,
    /// What answered does not speak TLS (a plain-HTTP server behind an `https://` URL).
    NotTls,
    /// Any other TLS failure, with rustls's words.
    Other(String),
}

impl std::fmt::Display for TlsProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsProblem::UntrustedServer => write!(
                f,
                "the server's certificate is not signed by a CA this client trusts: pass \
                 --ca-file (or {CA_FILE_ENV}) with the lab CA, e.g. the ca.pem made by \
                 `cis490-reconciler certs init`"
            ),
            TlsProblem::WrongServerName => write!(
                f,
                "the server's certificate is not valid for the host name in the URL: connect \
                 with a name or address it lists, or make a server certificate that lists \
                 this one with `cis490-reconciler certs init --san HOST`"
            ),
            TlsProblem::ServerCertificateExpired => write!(
                f,
                "the server's certificate has expired or is not valid yet: check the clocks of \
                 both machines, or make a new one with `cis490-reconciler certs init`"
            ),
            TlsProblem::ClientCertificateRefused => write!(
                f,
                "the server refused this client's certificate: present one signed by the \
                 server's client CA with --cert-file and --key-file ({CERT_FILE_ENV}, \
                 {KEY_FILE_ENV}), made by `cis490-reconciler certs issue-agent NAME`"
            ),
            TlsProblem::NotTls => write!(
                f,
                "the server does not speak TLS on this port: use an http:// URL, or start it \
                 with --tls-cert-file and --tls-key-file"
            ),
            TlsProblem::Other(message) => write!(f, "TLS failed: {message}"),
        }
    }
}

impl TlsProblem {
    fn from_rustls(err: &rustls::Error) -> TlsProblem {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        match err {
            // A bad signature: signed by a CA with the name of one we trust, but not by it.
            E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
                TlsProblem::UntrustedServer
            }
            E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                TlsProblem::WrongServerName
            }
            E::InvalidCertificate(
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. },
            ) => TlsProblem::ServerCertificateExpired,
            E::AlertReceived(
                A::UnknownCA
                | A::BadCertificate
                | A::CertificateRequired
                | A::CertificateUnknown
                | A::CertificateExpired
                | A::UnsupportedCertificate
                | A::AccessDenied,
            ) => TlsProblem::ClientCertificateRefused,
            E::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => TlsProblem::NotTls,
            other => TlsProblem::Other(other.to_string()),
        }
    }

    /// The TLS problem behind a transport error, found by walking its source chain (an
    /// `io::Error` is looked into, since it hides the error it wraps from `source()`).
    /// None when the failure is not about TLS (refused connection, DNS, timeout).
    pub fn of(err: &(dyn StdError + 'static)) -> Option<TlsProblem> {
        let mut current = Some(err);
        while let Some(e) = current {
            if let Some(r) = e.downcast_ref::<rustls::Error>() {
                return Some(TlsProblem::from_rustls(r));
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if let Some(inner) = io.get_ref() {
                    let inner: &(dyn StdError + 'static) = inner;
                    if let Some(found) = TlsProblem::of(inner) {
                        return Some(found);
                    }
                }
            }
            current = e.source();
        }
        // A rustls of another version (two in one build) does not downcast; its words do.
        let mut current = Some(err);
        while let Some(e) = current {
            let text = e.to_string();
            if text.contains("UnknownIssuer") {
                return Some(TlsProblem::UntrustedServer);
            }
            if text.contains("invalid peer certificate") {
                return Some(TlsProblem::Other(text));
            }
            current = e.source();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";

    #[test]
    fn certificate_files_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(dir.path(), "ca.pem", CERT);
        assert!(read_certificates_pem(&good).is_ok());
        let key = write(dir.path(), "key.pem", KEY);
        let err = read_certificates_pem(&key).unwrap_err();
        assert!(matches!(err, TlsFileError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("key.pem"), "{err}");
        let junk = write(dir.path(), "junk.pem", "hello\n");
        assert!(matches!(
            read_certificates_pem(&junk).unwrap_err(),
            TlsFileError::NoCertificate { .. }
        ));
        let broken = write(
            dir.path(),
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n",
        );
        let err = read_certificates_pem(&broken).unwrap_err();
        assert!(matches!(err, TlsFileError::BadPem { .. }), "{err}");
        let missing = dir.path().join("missing.pem");
        let err = read_certificates_pem(&missing).unwrap_err();
        assert!(matches!(err, TlsFileError::Read { .. }), "{err}");
        assert!(err.to_string().contains("missing.pem"), "{err}");
    }

    #[test]
    fn key_files_must_hold_exactly_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = write(dir.path(), "k.pem", KEY);
        assert!(read_private_key_pem(&key).is_ok());
        let cert = write(dir.path(), "c.pem", CERT);
        assert!(matches!(
            read_private_key_pem(&cert).unwrap_err(),
            TlsFileError::UnexpectedKeyContent { .. }
        ));
        let two = write(dir.path(), "two.pem", &format!("{KEY}{KEY}"));
        let err = read_private_key_pem(&two).unwrap_err();
        assert!(err.to_string().contains("2 private keys"), "{err}");
        let empty = write(dir.path(), "empty.pem", "");
        assert!(matches!(
            read_private_key_pem(&empty).unwrap_err(),
            TlsFileError::NoPrivateKey { .. }
        ));
    }

    #[test]
    fn half_an_identity_names_the_missing_flag() {
        let tls = ClientTls {
            cert_file: Some("a.pem".into()),
            ..ClientTls::default()
        };
        let (flag, err) = tls.identity_pem().unwrap_err();
        assert_eq!(flag, "--key-file");
        let err = err.to_string();
        assert!(
            err.contains("--key-file") && err.contains("only --cert-file"),
            "{err}"
        );
        assert!(ClientTls::default().identity_pem().unwrap().is_none());
    }

    #[test]
    fn rustls_errors_are_found_inside_io_errors_and_name_the_fix() {
        let unknown = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, unknown);
        let problem = TlsProblem::of(&io).unwrap();
        assert_eq!(problem, TlsProblem::UntrustedServer);
        let text = problem.to_string();
        assert!(
            text.contains("--ca-file") && text.contains("CIS490_CA_FILE"),
            "{text}"
        );
        assert!(text.contains("certs init"), "{text}");
        let refused = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
        );
        assert_eq!(
            TlsProblem::of(&refused),
            Some(TlsProblem::ClientCertificateRefused)
        );
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(TlsProblem::of(&plain), None);
    }
}
