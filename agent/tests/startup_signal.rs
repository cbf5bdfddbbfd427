//! Black-box: a SIGTERM that reaches `cis490-agent run` while it is still detecting the
//! host (its torch probe running) stops it cleanly: exit 0, and the probe with everything
//! it started is gone.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Kills the agent if the test ends before it exits.
struct AgentGuard(Child);

impl AgentGuard {
    fn pid(&self) -> Pid {
        let raw = i32::try_from(self.0.id()).unwrap();
        assert!(raw > 1);
        Pid::from_raw(raw)
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for AgentGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids of live (not zombie) processes whose command line mentions `needle`.
fn processes_naming(needle: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn sigterm_during_capability_detection_kills_the_probe_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let bin = root.join("bin");
    let work = root.join("work");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let started = root.join("probe-started");
    // A slow "python3": says it started, then waits on a child of its own (whose command
    // line also names the temp dir), as a real interpreter loading torch takes its time.
    let marker = root.display().to_string();
    write_script(
        &bin.join("python3"),
        &format!(
            "#!/bin/sh\nsh -c 'sleep 30; : {marker}' &\necho $$ > '{}'\nwait\n",
            started.display()
        ),
    );
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cis490-agent"));
    cmd.arg("run")
        // Nothing listens there; the agent must not get that far anyway.
        .args(["--server", "http://127.0.0.1:9", "--name", "startup-signal"])
        .arg("--work-dir")
        .arg(&work)
        .arg("--state-dir")
        .arg(root.join("state"))
        .env("PATH", &path)
        .env_remove("CIS490_SERVER")
        .env_remove("CIS490_WORKER_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(root.join("agent.log")).unwrap());
    let mut agent = AgentGuard(cmd.spawn().unwrap());
    let log = || std::fs::read_to_string(root.join("agent.log")).unwrap_or_default();

    wait_until("the torch probe to start", Duration::from_secs(30), || {
        std::fs::metadata(&started).ok().filter(|m| m.len() > 0)
    });
    kill(agent.pid(), Signal::SIGTERM).unwrap();
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("agent still running 10 s after SIGTERM\n{}", log()));
    assert!(
        status.success(),
        "agent exit after SIGTERM during detection: {status:?}\n{}",
        log()
    );
    assert!(
        !log().contains("agent starting"),
        "detection finished before the signal: the test did not test anything\n{}",
        log()
    );
    let left = wait_until_gone(&marker);
    assert!(left.is_empty(), "probe processes left behind: {left:?}");
}

/// Waits a few seconds for processes naming `marker` to go (a SIGKILL takes a moment to
/// land); returns those still there.
fn wait_until_gone(marker: &str) -> Vec<(i32, String)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_naming(marker);
        if left.is_empty() || Instant::now() >= deadline {
            for (pid, _) in &left {
                // Do not leave them to the next test; pids from /proc are > 1.
                if *pid > 1 {
                    let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
                }
            }
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
