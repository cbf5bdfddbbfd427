//! TLS and mTLS through the real binaries: `certs init` and `certs issue-agent` make a lab
//! PKI, `serve` runs HTTPS with client certificates required on worker routes, and an agent
//! with its certificate trains a job to completion. The same certificate acting as another
//! worker is refused (403), a worker route without a certificate is refused (401), a wrong CA
//! is refused by the agent and by cis490ctl with the flag named, and plain HTTP on 0.0.0.0
//! without --insecure does not start.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use cis490_api::{Capability, Client, JobStatus, WorkerName};
use cis490_tests::bin;
use cis490_tests::fleet::{Fleet, WORKER_TOKEN};
use reqwest::StatusCode;

const MANIFEST: &str = "version = 1\n\n[defaults]\ncommand = [\"sh\", \"train.sh\"]\n\n[models.m]\n\n[[jobs]]\nmodel = \"m\"\nmode = \"tls\"\nseed = 1\n";
const TRAINER: &str = "#!/bin/sh\necho \"trained over TLS\" > \"$CIS490_OUTPUT_DIR/model.txt\"\n";

fn capability(name: &str) -> Capability {
    Capability {
        hostname: name.into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        cores: 2,
        ram_total_mib: 1024,
        ram_available_mib: 1024,
        ram_allocatable_mib: 1024,
        max_concurrent: 1,
        agent_version: "test".into(),
        ..Capability::default()
    }
}

#[test]
fn a_tls_fleet_trains_with_client_certificates_and_refuses_the_rest() {
    let mut fleet = Fleet::prepare(MANIFEST).unwrap();
    fleet.write_work_file("train.sh", TRAINER).unwrap();

    // The lab PKI, through the binary.
    fleet.enable_tls().unwrap();
    for file in ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem"] {
        assert!(fleet.tls_path(file).is_file(), "{file}");
    }
    for key in ["ca-key.pem", "server-key.pem"] {
        let mode = std::fs::metadata(fleet.tls_path(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}: {mode:o}");
    }
    let again = fleet
        .reconciler_command(&[
            "certs",
            "init",
            "--dir",
            fleet.tls_path("").to_str().unwrap(),
        ])
        .unwrap();
    assert!(!again.status.success(), "init must not overwrite");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("--force"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    fleet.start_server("127.0.0.1:0").unwrap();
    let url = fleet.url().unwrap();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    // An agent with its own certificate trains the job to completion.
    fleet.start_agent("tls-a", &[]).unwrap();
    assert!(fleet.tls_path("tls-a.pem").is_file());
    let id = fleet.wait_jobs(1).unwrap()[0].id.clone();
    let done = fleet
        .wait_status(&id, JobStatus::Completed)
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", fleet.log("tls-a")));
    assert_eq!(done.worker.unwrap().as_str(), "tls-a");
    assert!(done.artifact_id.is_some());

    // tls-a's certificate acting as another worker: 403 wrong_worker.
    let as_a = Client::builder(&url)
        .tls(fleet.client_tls(Some("tls-a")).unwrap())
        .build()
        .unwrap();
    let other = WorkerName::parse("tls-b").unwrap();
    let err = fleet
        .rt
        .block_on(as_a.report_node(&other, &capability("tls-b")))
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN), "{err}");
    assert_eq!(err.code(), Some("wrong_worker"), "{err}");

    // No certificate on a worker route (the shared token does not stand in): 401.
    let anonymous = Client::builder(&url)
        .tls(fleet.client_tls(None).unwrap())
        .build()
        .unwrap()
        .with_worker_token(Some(WORKER_TOKEN.into()));
    let me = WorkerName::parse("tls-a").unwrap();
    let err = fleet
        .rt
        .block_on(anonymous.report_node(&me, &capability("tls-a")))
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED), "{err}");
    assert!(err.to_string().contains("certs issue-agent"), "{err}");

    // cis490ctl with the lab CA reads, and says how the server is secured.
    let status = fleet.ctl(&["status"]).unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(
        text.contains("Transport:   TLS, client certificates on worker routes"),
        "{text}"
    );
    assert!(!text.contains("Warning:"), "{text}");

    // A wrong CA: another lab's.
    let other_lab = fleet.path("other-lab");
    let made = fleet
        .reconciler_command(&["certs", "init", "--dir", other_lab.to_str().unwrap()])
        .unwrap();
    assert!(made.status.success());
    let wrong_ca = other_lab.join("ca.pem");

    let ctl = Command::new(bin("cis490ctl").unwrap())
        .args([
            "--server",
            &url,
            "--ca-file",
            wrong_ca.to_str().unwrap(),
            "status",
        ])
        .env_remove("CIS490_CA_FILE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&ctl.stderr);
    assert_eq!(ctl.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not signed by a CA this client trusts") && stderr.contains("--ca-file"),
        "{stderr}"
    );

    let (cert, key) = fleet.agent_certificate("tls-c").unwrap();
    let agent = Command::new(bin("cis490-agent").unwrap())
        .args(["run", "--server", &url, "--name", "tls-c", "--ca-file"])
        .arg(&wrong_ca)
        .arg("--cert-file")
        .arg(&cert)
        .arg("--key-file")
        .arg(&key)
        .arg("--work-dir")
        .arg(fleet.path("work"))
        .arg("--state-dir")
        .arg(fleet.path("agent-tls-c"))
        .env_remove("CIS490_SERVER")
        .env_remove("CIS490_AGENT_CONFIG")
        .env_remove("CIS490_WORKER_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut agent = cis490_tests::ChildGuard {
        child: agent,
        name: "tls-c".into(),
    };
    let exit = agent.wait_exit(Duration::from_secs(60)).unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut agent.child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!exit.success(), "the agent must stop: {stderr}");
    assert!(
        stderr.contains("--ca-file") && stderr.contains("CIS490_CA_FILE"),
        "{stderr}"
    );
}

#[test]
fn plain_http_on_all_interfaces_without_insecure_does_not_start() {
    let fleet = Fleet::prepare(MANIFEST).unwrap();
    let out = Command::new(bin("cis490-reconciler").unwrap())
        .args(["serve", "--listen", "0.0.0.0:0", "--manifest"])
        .arg(fleet.path("manifest.toml"))
        .arg("--state-dir")
        .arg(fleet.path("state"))
        // A worker token is set: plain HTTP alone is the reason.
        .env("CIS490_WORKER_TOKEN", WORKER_TOKEN)
        .env_remove("CIS490_TLS_CERT_FILE")
        .env_remove("CIS490_TLS_KEY_FILE")
        .env_remove("CIS490_LISTEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 with plain HTTP"),
        "{stderr}"
    );
    for want in [
        "--tls-cert-file",
        "--tls-key-file",
        "certs init",
        "--insecure",
    ] {
        assert!(stderr.contains(want), "missing {want}: {stderr}");
    }
    assert!(out.stdout.is_empty(), "it never listened");
}
