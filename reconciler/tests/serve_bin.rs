//! Black-box: the real `cis490-reconciler serve` binary prints its listening line, serves
//! the API, stops cleanly on SIGTERM, and refuses an exposed address without a worker token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cis490_api::{Client, JobFilter};

const BIN: &str = env!("CARGO_BIN_EXE_cis490-reconciler");
const PREFIX: &str = "cis490-reconciler listening on ";

/// Kills the child on drop, so a failing test leaves no process behind.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_manifest(path: &Path, seeds: &str) {
    std::fs::write(
        path,
        format!(
            "version = 1\n[defaults]\ncommand = [\"true\"]\n[models.gbt]\n\
             [[jobs]]\nmodel = \"gbt\"\nmode = \"realistic\"\nmatrix = {{ seed = [{seeds}] }}\n"
        ),
    )
    .unwrap();
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_listens_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("training_manifest.toml");
    write_manifest(&manifest, "1, 2, 3");
    let config = dir.path().join("reconciler.toml");
    // The config file names a different listen address; the flag wins.
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:1\"\nstate_dir = \"{}\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env("CIS490_MANIFEST", &manifest)
        .env("CIS490_OPERATOR_TOKEN", "op-token-7f3a")
        .env_remove("CIS490_WORKER_TOKEN")
        .env_remove("CIS490_LISTEN")
        .env_remove("CIS490_STATE_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    let stdout = guard.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the listening line");
    let url = line.strip_prefix(PREFIX).expect(&line).trim().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(!url.ends_with(":0"), "the real port is printed: {url}");

    let client = Client::new(&url)
        .unwrap()
        .with_operator_token(Some("op-token-7f3a".into()));
    assert_eq!(client.health().await.unwrap().status, "ok");
    assert_eq!(client.jobs(&JobFilter::default()).await.unwrap().len(), 3);
    write_manifest(&manifest, "1, 2, 3, 4");
    let summary = client.reload().await.unwrap();
    assert_eq!(summary.create.len(), 1);
    assert!(dir.path().join("state").join("queue.db").exists());

    let status = Command::new("kill")
        .args(["-TERM", &guard.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = wait_exit(&mut guard.0, Duration::from_secs(30));
    assert!(exit.success(), "exit status {exit:?}");
    let mut stderr = String::new();
    guard
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert!(!stderr.contains("op-token-7f3a"), "no token in the log");
    // Exactly one stdout line.
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
}

#[test]
fn serve_refuses_an_exposed_address_without_a_worker_token() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.toml");
    write_manifest(&manifest, "1");
    let out = Command::new(BIN)
        .args(["serve", "--listen", "0.0.0.0:0", "--manifest"])
        .arg(&manifest)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env_remove("CIS490_WORKER_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0"),
        "{stderr}"
    );
    assert!(stderr.contains("CIS490_WORKER_TOKEN"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn serve_without_a_manifest_says_how_to_give_one() {
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("CIS490_MANIFEST")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--manifest"), "{stderr}");
}
