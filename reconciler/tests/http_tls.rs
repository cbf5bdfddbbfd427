//! The server over TLS on `127.0.0.1:0`, with certificates from `certs init` and
//! `certs issue-agent`: mTLS names the worker, a missing certificate is 401 on worker routes
//! only, another worker's name is 403, plain HTTP on the TLS port is told to use https, a
//! client without the lab CA is told to pass --ca-file, and shutdown still answers waiting
//! claims at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_common;

use std::path::Path;
use std::time::Duration;

use cis490_api::{Client, JobFilter, TlsProblem};
use cis490_reconciler::certs;
use cis490_reconciler::server::{Secret, Server, ServerConfig, ServerError, TlsSettings};
use http_common::{cpu_claim, jobs_manifest, worker, OPERATOR_TOKEN, WORKER_TOKEN};
use reqwest::StatusCode;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct TlsApp {
    url: String,
    dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), ServerError>>,
}

impl TlsApp {
    fn certs(&self) -> std::path::PathBuf {
        self.dir.path().join("tls")
    }

    /// A client that trusts the lab CA, with agent `name`'s certificate when given.
    fn client(&self, name: Option<&str>) -> Client {
        let tls = self.certs();
        let mut builder = Client::builder(&self.url).ca_file(tls.join(certs::CA_CERT));
        if let Some(name) = name {
            builder = builder.identity(
                tls.join(format!("{name}.pem")),
                tls.join(format!("{name}-key.pem")),
            );
        }
        builder
            .build()
            .unwrap()
            .with_operator_token(Some(OPERATOR_TOKEN.into()))
    }

    async fn shutdown(mut self) -> Result<(), ServerError> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("the server stops within 30 s")
            .unwrap()
    }
}

async fn spawn_tls_app(manifest: &str) -> TlsApp {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    certs::init(&tls, &["localhost".into(), "127.0.0.1".into()], false).unwrap();
    for name in ["w1", "w2"] {
        certs::issue_agent(&tls, &worker(name), false).unwrap();
    }
    let manifest_path = dir.path().join("training_manifest.toml");
    std::fs::write(&manifest_path, manifest).unwrap();
    let mut config = ServerConfig::new(&manifest_path, dir.path().join("state"));
    config.operator_token = Secret::new(OPERATOR_TOKEN);
    // Configured, and not needed: the certificate alone proves the worker.
    config.worker_token = Secret::new(WORKER_TOKEN);
    config.watch = false;
    config.tls = Some(TlsSettings {
        cert_file: tls.join(certs::SERVER_CERT),
        key_file: tls.join(certs::SERVER_KEY),
        client_ca_file: Some(tls.join(certs::CA_CERT)),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let server = Server::build(config).await.unwrap();
    assert!(server.tls());
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(server.run(listener, async move {
        let _ = stopped.await;
    }));
    TlsApp {
        url,
        dir,
        stop: Some(stop),
        handle,
    }
}

fn text_of(err: &cis490_api::ClientError) -> String {
    err.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mtls_names_the_worker_and_refuses_everything_else() {
    let app = spawn_tls_app(&jobs_manifest(1..=2)).await;

    // Reads need no certificate; health reports the posture.
    let anon = app.client(None);
    let health = anon.health().await.unwrap();
    assert!(health.tls && health.client_certs && !health.insecure);
    assert!(health.warnings.is_empty(), "{:?}", health.warnings);
    assert_eq!(anon.jobs(&JobFilter::default()).await.unwrap().len(), 2);

    // A worker route without a certificate: 401 naming the command that makes one, even
    // with the shared worker token.
    let with_token = anon.clone().with_worker_token(Some(WORKER_TOKEN.into()));
    let err = with_token.claim(&cpu_claim("w1"), None).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED), "{err}");
    assert!(text_of(&err).contains("certs issue-agent NAME"), "{err}");

    // With w1's certificate: w1 may claim, and may not act as w2.
    let w1 = app.client(Some("w1"));
    let claimed = w1.claim(&cpu_claim("w1"), None).await.unwrap().unwrap();
    let prefix = cis490_api::IdPrefix::parse(claimed.job.id.as_str()).unwrap();
    assert_eq!(anon.job(&prefix).await.unwrap().worker, Some(worker("w1")));
    let err = w1.claim(&cpu_claim("w2"), None).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN), "{err}");
    assert_eq!(err.code(), Some("wrong_worker"));
    assert!(
        text_of(&err).contains("w1") && text_of(&err).contains("w2"),
        "{err}"
    );

    // Plain HTTP on the TLS port: a 400 that says to use https.
    let plain = Client::new(&app.url.replace("https://", "http://")).unwrap();
    let err = plain.health().await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST), "{err}");
    assert_eq!(err.code(), Some("tls_required"));
    assert!(text_of(&err).contains("https://"), "{err}");

    // A client without the lab CA: the error names --ca-file.
    let untrusting = Client::new(&app.url).unwrap();
    let err = untrusting.health().await.unwrap_err();
    assert_eq!(
        err.tls_problem(),
        Some(&TlsProblem::UntrustedServer),
        "{err}"
    );
    assert!(
        text_of(&err).contains("--ca-file") && text_of(&err).contains("CIS490_CA_FILE"),
        "{err}"
    );
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_from_another_ca_is_refused_at_the_handshake() {
    let app = spawn_tls_app(&jobs_manifest(1..=1)).await;
    let other = tempfile::tempdir().unwrap();
    certs::init(other.path(), &["localhost".into()], false).unwrap();
    certs::issue_agent(other.path(), &worker("w1"), false).unwrap();
    let stranger = Client::builder(&app.url)
        .ca_file(app.certs().join(certs::CA_CERT))
        .identity(other.path().join("w1.pem"), other.path().join("w1-key.pem"))
        .build()
        .unwrap();
    let err = stranger.health().await.unwrap_err();
    assert_eq!(
        err.tls_problem(),
        Some(&TlsProblem::ClientCertificateRefused),
        "{err}"
    );
    assert!(text_of(&err).contains("--cert-file"), "{err}");
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_over_tls_answers_waiting_claims_at_once() {
    let app = spawn_tls_app(&jobs_manifest(std::iter::empty())).await;
    let w1 = app.client(Some("w1"));
    let waiting = tokio::spawn(async move {
        w1.claim(&cpu_claim("w1"), Some(Duration::from_secs(60)))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished());
    app.shutdown().await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting claim was answered at shutdown")
        .unwrap()
        .unwrap();
    assert!(answer.is_none(), "204 at shutdown");
}

#[tokio::test]
async fn unusable_tls_files_stop_the_build_with_the_flag_named() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.toml");
    std::fs::write(&manifest, jobs_manifest(1..=1)).unwrap();
    let mut config = ServerConfig::new(&manifest, dir.path().join("state"));
    config.tls = Some(TlsSettings {
        cert_file: dir.path().join("nope.pem"),
        key_file: dir.path().join("nope-key.pem"),
        client_ca_file: None,
    });
    let err = Server::build(config).await.err().expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("--tls-cert-file") && text.contains("nope.pem"),
        "{text}"
    );
    assert!(
        !Path::new(&dir.path().join("state")).exists(),
        "no state touched"
    );
}
