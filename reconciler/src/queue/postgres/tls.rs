//! TLS to PostgreSQL, with libpq's URL parameters: `sslmode` (`disable`, `prefer`,
//! `require`, `verify-ca`, `verify-full`), `sslrootcert` (a PEM file of CA certificates, or
//! `system` for the Mozilla roots built into the binary), and `sslcert` with `sslkey` (a
//! client certificate, for `cert` authentication in `pg_hba.conf`).
//!
//! The sync client parses neither `sslrootcert` nor the `verify-*` modes, so they are taken
//! out of the URL here and the client is handed a rustls configuration instead.
//!
//! One rule differs from libpq, on purpose: without an `sslmode`, libpq's `prefer` falls
//! back to plain text without a word, which on a real network lets anyone on the path read
//! the queue and its tokens. Here plain text is only chosen on its own for a Unix socket or
//! a loopback address; a remote host needs TLS or an explicit `sslmode=disable`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::queue::QueueError;

/// The TLS parameters of a `--database` URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsParams {
    pub(crate) mode: Option<SslMode>,
    pub(crate) root_cert: Option<RootCert>,
    pub(crate) client_cert: Option<PathBuf>,
    pub(crate) client_key: Option<PathBuf>,
}

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, QueueError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(bad(
                    "sslmode=allow is not supported (it tries plain text first): use \
                     sslmode=verify-full, or sslmode=disable",
                ))
            }
            other => {
                return Err(bad(format!(
                    "sslmode={other:?} is not one of disable, prefer, require, verify-ca, \
                     verify-full"
                )))
            }
        })
    }
}

/// Where the CA certificates that vouch for the server come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RootCert {
    File(PathBuf),
    /// `sslrootcert=system`: the Mozilla roots compiled into the binary (webpki-roots), for
    /// a database whose certificate a public CA signed.
    System,
}

/// What the connections of one URL do.
#[derive(Debug)]
pub(crate) enum Plan {
    Plain,
    Tls {
        config: Box<rustls::ClientConfig>,
        /// Said once at start-up: a choice that works but that an operator should know of.
        warning: Option<String>,
    },
}

fn bad(message: impl Into<String>) -> QueueError {
    QueueError::BadRequest {
        message: format!("--database: {}", message.into()),
    }
}

/// Takes the TLS parameters out of `url`, giving back the URL the client can parse.
/// Parameters the client itself knows (every other `key=value`) stay where they are.
pub(crate) fn split_url(url: &str) -> Result<(String, TlsParams), QueueError> {
    const OURS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];
    let Some((base, query)) = url.split_once('?') else {
        if !url.contains("://") && OURS.iter().any(|key| url.contains(key)) {
            return Err(bad(
                "give sslmode, sslrootcert, sslcert and sslkey in the URL form \
                 (postgresql://user@host/db?sslmode=verify-full&sslrootcert=ca.pem), not \
                 as key=value words",
            ));
        }
        return Ok((url.to_owned(), TlsParams::default()));
    };
    let mut params = TlsParams::default();
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = percent_decode(value)
            .ok_or_else(|| bad(format!("{key}: {value:?} is not valid percent-encoding")))?;
        match key {
            "sslmode" => params.mode = Some(SslMode::parse(&decoded)?),
            "sslrootcert" if decoded == "system" => params.root_cert = Some(RootCert::System),
            "sslrootcert" => params.root_cert = Some(RootCert::File(non_empty(key, decoded)?)),
            "sslcert" => params.client_cert = Some(non_empty(key, decoded)?),
            "sslkey" => params.client_key = Some(non_empty(key, decoded)?),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, params))
}

fn non_empty(key: &str, value: String) -> Result<PathBuf, QueueError> {
    if value.is_empty() {
        return Err(bad(format!("{key} names no file")));
    }
    Ok(PathBuf::from(value))
}

fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A host the client connects to, as far as the choice of TLS goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    UnixSocket,
    Tcp(String),
}

impl Endpoint {
    fn is_local(&self) -> bool {
        match self {
            Endpoint::UnixSocket => true,
            Endpoint::Tcp(host) => {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                host.eq_ignore_ascii_case("localhost")
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        }
    }
}

/// Decides plain text or TLS, and which checks, for `params` on `hosts`.
pub(crate) fn decide(params: &TlsParams, hosts: &[Endpoint]) -> Result<Plan, QueueError> {
    if params.client_cert.is_some() != params.client_key.is_some() {
        return Err(bad("sslcert and sslkey go together: give both or neither"));
    }
    let mode = params.mode.unwrap_or(SslMode::Prefer);
    let verify = match mode {
        SslMode::Disable => return Ok(Plan::Plain),
        SslMode::Prefer => {
            if let Some(remote) = hosts.iter().find(|h| !h.is_local()) {
                let Endpoint::Tcp(name) = remote else {
                    return Ok(Plan::Plain);
                };
                if params.root_cert.is_none() {
                    return Err(bad(format!(
                        "the connection to {name} would be plain text, readable by anyone on \
                         the network path. Add sslmode=verify-full&sslrootcert=CA.pem (or \
                         sslrootcert=system for a public CA), or sslmode=disable to accept \
                         plain text on purpose"
                    )));
                }
                Verify::Full
            } else if params.root_cert.is_some() {
                // libpq verifies the server with the CA given, whatever the mode says.
                Verify::Full
            } else {
                return Ok(Plan::Plain);
            }
        }
        SslMode::Require if params.root_cert.is_some() => Verify::ChainOnly,
        SslMode::Require => Verify::Nothing,
        SslMode::VerifyCa => Verify::ChainOnly,
        SslMode::VerifyFull => Verify::Full,
    };
    let roots = match &params.root_cert {
        Some(root) => Some(load_roots(root)?),
        None if verify == Verify::Nothing => None,
        None => {
            return Err(bad(format!(
                "sslmode={} needs sslrootcert=CA.pem (the CA that signed the server's \
                 certificate), or sslrootcert=system for a public CA",
                if mode == SslMode::VerifyCa {
                    "verify-ca"
                } else {
                    "verify-full"
                }
            )))
        }
    };
    let identity = match (&params.client_cert, &params.client_key) {
        (Some(cert), Some(key)) => Some(load_identity(cert, key)?),
        _ => None,
    };
    let warning = (verify == Verify::Nothing).then(|| {
        "sslmode=require without sslrootcert: the connection to PostgreSQL is encrypted, \
         but the server's certificate is not checked, so a machine on the path can pose as \
         the database. Add sslrootcert=CA.pem and sslmode=verify-full"
            .to_owned()
    });
    let config = Box::new(client_config(verify, roots, identity)?);
    Ok(Plan::Tls { config, warning })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    /// The chain up to a trusted root, and the host name in the certificate.
    Full,
    /// The chain only (`verify-ca`): any certificate the CA signed will do.
    ChainOnly,
    /// Nothing (`require` without a CA): encryption against passive readers only.
    Nothing,
}

fn load_roots(root: &RootCert) -> Result<RootCertStore, QueueError> {
    let mut store = RootCertStore::empty();
    match root {
        RootCert::System => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        RootCert::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| pem_error("sslrootcert", path, e))?;
            for cert in certs {
                let cert = cert.map_err(|e| pem_error("sslrootcert", path, e))?;
                store.add(cert).map_err(|e| {
                    bad(format!(
                        "sslrootcert {}: not a usable CA certificate: {e}",
                        path.display()
                    ))
                })?;
            }
            if store.is_empty() {
                return Err(bad(format!(
                    "sslrootcert {}: holds no PEM certificate",
                    path.display()
                )));
            }
        }
    }
    Ok(store)
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn load_identity(cert: &Path, key: &Path) -> Result<Identity, QueueError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_error("sslcert", cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error("sslcert", cert, e))?;
    if chain.is_empty() {
        return Err(bad(format!(
            "sslcert {}: holds no PEM certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error("sslkey", key, e))?;
    Ok((chain, key))
}

fn pem_error(key: &str, path: &Path, e: rustls::pki_types::pem::Error) -> QueueError {
    let why = match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("not PEM ({other:?})"),
    };
    bad(format!("{key} {}: {why}", path.display()))
}

fn client_config(
    verify: Verify,
    roots: Option<RootCertStore>,
    identity: Option<Identity>,
) -> Result<rustls::ClientConfig, QueueError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_error = |e: rustls::Error| bad(format!("TLS set-up: {e}"));
    let webpki = |roots: RootCertStore| {
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(|e| bad(format!("sslrootcert: {e}")))
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (verify, roots) {
        (Verify::Full, Some(roots)) => webpki(roots)?,
        (Verify::ChainOnly, Some(roots)) => Arc::new(Relaxed {
            chain: Some(webpki(roots)?),
            provider: Arc::clone(&provider),
        }),
        (Verify::Nothing, _) | (_, None) => Arc::new(Relaxed {
            chain: None,
            provider: Arc::clone(&provider),
        }),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| bad(format!("sslcert/sslkey: {e}"))),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// The checks below WebPKI's: `verify-ca` (`chain`: the whole check except that the
/// certificate names the host) and `require` without a CA (no `chain`: any certificate).
/// Either way the handshake's signatures are checked, so the server holds the key of the
/// certificate it sent and the session keys are its own.
#[derive(Debug)]
struct Relaxed {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Relaxed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A hint for an operator after a failed connection, where the error says what went
/// wrong in TLS terms only.
pub(crate) fn explain(error: &str) -> Option<&'static str> {
    // Each hint with the phrases (rustls's Display and Debug forms, PostgreSQL's messages)
    // that call for it.
    const HINTS: [(&[&str], &str); 7] = [
        (
            &["UnknownIssuer", "unknown issuer"],
            "the database's certificate is not signed by a CA in sslrootcert",
        ),
        (
            &["NotValidForName", "not valid for name"],
            "the database's certificate does not name the host in the URL: connect by a \
             name the certificate holds, or use sslmode=verify-ca",
        ),
        (
            &["Expired", "expired"],
            "the database's certificate has expired (or this machine's clock is wrong)",
        ),
        (
            &["server does not support TLS"],
            "the database does not offer TLS (ssl = off in postgresql.conf)",
        ),
        (
            &["no encryption"],
            "the database accepts this client only over TLS: add sslmode=verify-full and \
             sslrootcert to the URL",
        ),
        (
            &["valid client certificate"],
            "the database authenticates this role by client certificate: add sslcert and \
             sslkey: a certificate its ssl_ca_file's CA signed, whose CN is the role",
        ),
        (
            &["CertificateRequired", "certificate required"],
            "the database wants a client certificate: add sslcert and sslkey to the URL",
        ),
    ];
    HINTS
        .iter()
        .find(|(needles, _)| needles.iter().any(|n| error.contains(n)))
        .map(|(_, hint)| *hint)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn tcp(host: &str) -> Vec<Endpoint> {
        vec![Endpoint::Tcp(host.to_owned())]
    }

    #[test]
    fn the_tls_parameters_are_taken_out_and_the_rest_kept() {
        let (rest, params) = split_url(
            "postgresql://u@db.lab:5432/q?connect_timeout=5&sslmode=verify-full\
             &sslrootcert=%2Fetc%2Fca.pem&sslcert=c.pem&sslkey=k.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgresql://u@db.lab:5432/q?connect_timeout=5");
        assert_eq!(params.mode, Some(SslMode::VerifyFull));
        assert_eq!(
            params.root_cert,
            Some(RootCert::File(PathBuf::from("/etc/ca.pem")))
        );
        assert_eq!(params.client_cert, Some(PathBuf::from("c.pem")));
        assert_eq!(params.client_key, Some(PathBuf::from("k.pem")));

        let (rest, params) = split_url("postgresql://u@h/q?sslrootcert=system").unwrap();
        assert_eq!(rest, "postgresql://u@h/q");
        assert_eq!(params.root_cert, Some(RootCert::System));
        assert_eq!(split_url("host=/tmp user=u").unwrap().0, "host=/tmp user=u");
    }

    #[test]
    fn bad_parameters_are_refused_with_what_would_work() {
        for (url, says) in [
            ("postgresql://h/q?sslmode=sometimes", "not one of"),
            ("postgresql://h/q?sslmode=allow", "not supported"),
            ("postgresql://h/q?sslrootcert=", "names no file"),
            ("postgresql://h/q?sslkey=%zz", "percent-encoding"),
            ("host=h sslmode=verify-full", "URL form"),
        ] {
            let err = split_url(url).unwrap_err().to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
    }

    #[test]
    fn plain_text_is_only_chosen_alone_for_local_connections() {
        let none = TlsParams::default();
        for local in [
            vec![Endpoint::UnixSocket],
            tcp("localhost"),
            tcp("127.0.0.1"),
            tcp("::1"),
        ] {
            assert!(matches!(decide(&none, &local).unwrap(), Plan::Plain));
        }
        let err = decide(&none, &tcp("db.lab")).unwrap_err().to_string();
        assert!(err.contains("db.lab would be plain text"), "{err}");
        assert!(err.contains("sslmode=verify-full") && err.contains("sslmode=disable"));
        let disable = TlsParams {
            mode: Some(SslMode::Disable),
            ..TlsParams::default()
        };
        assert!(matches!(
            decide(&disable, &tcp("db.lab")).unwrap(),
            Plan::Plain
        ));
    }

    #[test]
    fn verifying_modes_need_a_root_and_require_alone_warns() {
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            let params = TlsParams {
                mode: Some(mode),
                ..TlsParams::default()
            };
            let err = decide(&params, &tcp("db.lab")).unwrap_err().to_string();
            assert!(err.contains("needs sslrootcert"), "{err}");
        }
        let require = TlsParams {
            mode: Some(SslMode::Require),
            ..TlsParams::default()
        };
        match decide(&require, &tcp("db.lab")).unwrap() {
            Plan::Tls { warning, .. } => assert!(warning.unwrap().contains("not checked")),
            Plan::Plain => panic!("require must use TLS"),
        }
        let system = TlsParams {
            mode: Some(SslMode::VerifyFull),
            root_cert: Some(RootCert::System),
            ..TlsParams::default()
        };
        match decide(&system, &tcp("db.lab")).unwrap() {
            Plan::Tls { warning, .. } => assert_eq!(warning, None),
            Plan::Plain => panic!("verify-full must use TLS"),
        }
    }

    #[test]
    fn files_that_are_missing_or_not_pem_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        for (params, says) in [
            (
                TlsParams {
                    mode: Some(SslMode::VerifyFull),
                    root_cert: Some(RootCert::File(dir.path().join("missing.pem"))),
                    ..TlsParams::default()
                },
                "missing.pem",
            ),
            (
                TlsParams {
                    mode: Some(SslMode::VerifyFull),
                    root_cert: Some(RootCert::File(junk.clone())),
                    ..TlsParams::default()
                },
                "holds no PEM certificate",
            ),
            (
                TlsParams {
                    mode: Some(SslMode::Require),
                    client_cert: Some(junk.clone()),
                    ..TlsParams::default()
                },
                "go together",
            ),
        ] {
            let err = decide(&params, &tcp("db.lab")).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn tls_errors_get_a_hint() {
        assert!(explain("invalid peer certificate: UnknownIssuer")
            .unwrap()
            .contains("not signed"));
        assert_eq!(explain("connection refused"), None);
    }
}
