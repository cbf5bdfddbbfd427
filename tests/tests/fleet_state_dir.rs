//! One server per state directory: a second `serve` on a state dir that a live server holds
//! refuses to start and names the holder's PID, so it can never run the store's start-up
//! repair (which removes partial uploads) under the first server's in-flight uploads.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cis490_tests::bin;
use cis490_tests::fleet::Fleet;

#[test]
fn a_second_server_on_a_held_state_dir_refuses_and_names_the_holder() {
    let fleet = Fleet::start("version = 1\n\n[defaults]\ncommand = [\"true\"]\n").unwrap();
    let first_pid = fleet.server.as_ref().unwrap().process.pid();
    let partial_dir = fleet.path("state/models/.incoming");
    std::fs::create_dir_all(&partial_dir).unwrap();
    // Stands for an upload the first server is streaming right now.
    let in_flight = partial_dir.join("in-flight.partial");
    std::fs::write(&in_flight, b"half an upload").unwrap();

    let mut second = Command::new(bin("cis490-reconciler").unwrap())
        .arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--manifest")
        .arg(fleet.path("manifest.toml"))
        .arg("--state-dir")
        .arg(fleet.path("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("the second server is still running on a held state dir");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::io::read_to_string(second.stderr.take().unwrap()).unwrap();
    assert!(!status.success(), "second server exited with {status}");
    assert!(
        stderr.contains(&format!("pid {first_pid}")),
        "the refusal does not name the holder's pid {first_pid}: {stderr}"
    );
    assert!(
        in_flight.exists(),
        "the second server removed the first one's in-flight upload"
    );
    let health = fleet.rt.block_on(fleet.client.health());
    assert!(
        health.is_ok(),
        "the first server stopped answering: {health:?}"
    );
}

#[test]
fn serve_refuses_a_manifest_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere/training_manifest.toml");
    let out = Command::new(bin("cis490-reconciler").unwrap())
        .arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--manifest")
        .arg(&missing)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve started without a manifest");
    assert!(
        stderr.contains("does not exist") && stderr.contains(&missing.display().to_string()),
        "{stderr}"
    );
}
