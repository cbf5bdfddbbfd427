//! The server's TLS: the rustls configuration built from `--tls-cert-file`,
//! `--tls-key-file` and `--client-ca-file` (ring provider), and the worker name of a
//! connection's verified client certificate.
//!
//! With a client CA, the verifier *allows* clients without a certificate (read and operator
//! routes stay usable from cis490ctl and curl); a certificate that is presented must verify
//! against the CA with the client-auth usage, or the handshake fails. Whether a worker route
//! then requires one is `auth::check_worker`'s decision.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cis490_api::tls::{read_certificates_pem, read_private_key_pem, TlsFileError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use super::config::TlsSettings;
use super::identity::ClientCertName;

/// Why the server's TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file is unreadable or holds the wrong thing.
    #[error("{flag}: {source}")]
    File {
        flag: &'static str,
        #[source]
        source: TlsFileError,
    },
    /// A PEM section does not decode.
    #[error("{flag}: {path} is not valid PEM: {message}")]
    Pem {
        flag: &'static str,
        path: PathBuf,
        message: String,
    },
    /// The key is not the certificate's.
    #[error(
        "the key in {key} (--tls-key-file) does not belong to the certificate in {cert} \
         (--tls-cert-file): pass the pair made together, e.g. server.pem and server-key.pem"
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// rustls refused the certificate or key.
    #[error("cannot use the certificate {cert} with the key {key}: {message}")]
    Rejected {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
    /// The client CA file holds nothing rustls accepts as a trust anchor.
    #[error("--client-ca-file: {path} holds no usable CA certificate: {message}")]
    ClientCa { path: PathBuf, message: String },
}

fn certificates(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_certificates_pem(path).map_err(|source| TlsError::File { flag, source })?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            flag,
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let flag = "--tls-key-file";
    let pem = read_private_key_pem(path).map_err(|source| TlsError::File { flag, source })?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        flag,
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Reads the files and builds the server's rustls configuration (HTTP/1.1 only, as the
/// server speaks nothing else).
pub fn server_config(settings: &TlsSettings) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certificates("--tls-cert-file", &settings.cert_file)?;
    let key = private_key(&settings.key_file)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let rejected = |message: String| TlsError::Rejected {
        cert: settings.cert_file.clone(),
        key: settings.key_file.clone(),
        message,
    };
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| rejected(e.to_string()))?;
    let builder = match &settings.client_ca_file {
        Some(path) => {
            let client_ca = |message: String| TlsError::ClientCa {
                path: path.clone(),
                message,
            };
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates("--client-ca-file", path)? {
                roots.add(cert).map_err(|e| client_ca(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| client_ca(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            cert: settings.cert_file.clone(),
            key: settings.key_file.clone(),
        },
        other => rejected(other.to_string()),
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The worker name of the client certificate a finished handshake verified (see
/// [`crate::certs::certificate_worker_name`]). None without a certificate; a verified one
/// with no usable name is logged and treated as none.
pub fn client_cert_name(
    conn: &rustls::ServerConnection,
    peer: std::net::SocketAddr,
) -> Option<ClientCertName> {
    let leaf = conn.peer_certificates()?.first()?;
    match crate::certs::certificate_worker_name(leaf) {
        Some(name) => Some(ClientCertName(name)),
        None => {
            tracing::warn!(
                %peer,
                "a client certificate signed by the client CA names no valid worker name \
                 (neither a DNS SAN nor the CN); treated as no certificate"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs;
    use cis490_api::WorkerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn settings(dir: &Path, client_ca: bool) -> TlsSettings {
        TlsSettings {
            cert_file: dir.join(certs::SERVER_CERT),
            key_file: dir.join(certs::SERVER_KEY),
            client_ca_file: client_ca.then(|| dir.join(certs::CA_CERT)),
        }
    }

    fn client_config(ca_dir: &Path, identity: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_dir.join(certs::CA_CERT)).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        Arc::new(match identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(cert)
                        .unwrap()
                        .map(Result::unwrap)
                        .collect(),
                    PrivateKeyDer::from_pem_file(key).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        })
    }

    /// A handshake over an in-memory pipe; the server's view of the client certificate, or
    /// the client's error.
    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        host: &str,
    ) -> Result<Option<ClientCertName>, std::io::Error> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let connector = tokio_rustls::TlsConnector::from(client);
        let server_name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
        let serve = tokio::spawn(async move {
            let mut tls = acceptor.accept(server_io).await?;
            let name = client_cert_name(tls.get_ref().1, "127.0.0.1:1".parse().unwrap());
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await?;
            tls.write_all(b"pong").await?;
            tls.shutdown().await?;
            Ok::<_, std::io::Error>(name)
        });
        let mut tls = connector.connect(server_name, client_io).await?;
        tls.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"pong");
        serve.await.unwrap()
    }

    #[tokio::test]
    async fn a_generated_chain_completes_a_handshake_with_and_without_client_certs() {
        let dir = tempfile::tempdir().unwrap();
        certs::init(dir.path(), &["localhost".into(), "127.0.0.1".into()], false).unwrap();
        let name = WorkerName::parse("gpu-box").unwrap();
        let agent = certs::issue_agent(dir.path(), &name, false).unwrap();

        let mtls = server_config(&settings(dir.path(), true)).unwrap();
        let with_cert = client_config(dir.path(), Some((&agent.cert, &agent.key)));
        let seen = handshake(Arc::clone(&mtls), with_cert, "localhost")
            .await
            .unwrap();
        assert_eq!(seen, Some(ClientCertName(name)));
        // An IP SAN works too.
        let anonymous = client_config(dir.path(), None);
        let seen = handshake(Arc::clone(&mtls), anonymous, "127.0.0.1")
            .await
            .unwrap();
        assert_eq!(seen, None, "no certificate is allowed, and proves no name");

        // A client certificate from another CA fails the handshake.
        let other = tempfile::tempdir().unwrap();
        certs::init(other.path(), &["localhost".into()], false).unwrap();
        let stranger =
            certs::issue_agent(other.path(), &WorkerName::parse("x").unwrap(), false).unwrap();
        let foreign = client_config(dir.path(), Some((&stranger.cert, &stranger.key)));
        assert!(handshake(Arc::clone(&mtls), foreign, "localhost")
            .await
            .is_err());

        // A client that trusts another CA refuses the server: rustls says UnknownIssuer.
        let wrong_ca = client_config(other.path(), None);
        let err = handshake(mtls, wrong_ca, "localhost").await.unwrap_err();
        assert_eq!(
            cis490_api::TlsProblem::of(&err),
            Some(cis490_api::TlsProblem::UntrustedServer),
            "{err}"
        );

        // Without a client CA no certificate is asked for.
        let plain = server_config(&settings(dir.path(), false)).unwrap();
        let with_cert = client_config(dir.path(), Some((&agent.cert, &agent.key)));
        assert_eq!(
            handshake(plain, with_cert, "localhost").await.unwrap(),
            None
        );
    }

    #[test]
    fn bad_files_are_named_with_their_flag() {
        let dir = tempfile::tempdir().unwrap();
        certs::init(dir.path(), &["localhost".into()], false).unwrap();
        let mut s = settings(dir.path(), true);
        s.key_file = dir.path().join(certs::CA_KEY);
        let err = server_config(&s).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("--tls-key-file"), "{err}");

        let mut s = settings(dir.path(), false);
        s.cert_file = dir.path().join("missing.pem");
        let text = server_config(&s).unwrap_err().to_string();
        assert!(
            text.starts_with("--tls-cert-file: cannot read") && text.contains("missing.pem"),
            "{text}"
        );

        let mut s = settings(dir.path(), true);
        s.client_ca_file = Some(dir.path().join(certs::SERVER_KEY));
        let text = server_config(&s).unwrap_err().to_string();
        assert!(
            text.starts_with("--client-ca-file:") && text.contains("no PEM certificate"),
            "{text}"
        );
    }
}
