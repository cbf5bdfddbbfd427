//! Helpers for black-box tests that start the real cis490 binaries.
//!
//! The binaries are found beside the test executable (`target/<profile>/`). `cargo test
//! --workspace` builds them, because each binary's package has integration tests of its own;
//! when one is missing, the helper says which command builds it.
//!
//! Contract with `cis490-reconciler serve`: once it is accepting connections it prints one
//! line `cis490-reconciler listening on http://ADDR` (`https://` with TLS) to stdout, so tests can pass
//! `--listen 127.0.0.1:0` and learn the port without sleeping.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub mod bench;
pub mod fleet;
pub mod scratch_postgres;

/// The line prefix `serve` prints once it listens.
pub const LISTENING_PREFIX: &str = "cis490-reconciler listening on ";

/// `target/<profile>`, the folder that holds the workspace's binaries.
pub fn target_profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    // target/<profile>/deps/<test-binary>, or target/<profile>/<binary> for this crate's
    // own binaries (the benchmark harness).
    let dir = exe.parent().context("test executable has no parent")?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        let profile = dir.parent().context("deps folder has no parent")?;
        return Ok(profile.to_path_buf());
    }
    Ok(dir.to_path_buf())
}

/// The path of one of the workspace's binaries (`cis490-reconciler`, `cis490-agent`,
/// `cis490ctl`), checked to exist.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = target_profile_dir()?.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        bail!(
            "{} is not built: run `cargo test --workspace` (or `cargo build --workspace --bins`)",
            path.display()
        );
    }
    Ok(path)
}

/// The workspace root (for `etc/...` files).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A `Command` for `program` that is killed when the thread that starts it ends: on Linux
/// through util-linux's `setpriv --pdeathsig KILL` (the workspace forbids the `unsafe` a
/// `pre_exec` would need), elsewhere a plain command. [`ChildGuard`] kills its child on
/// drop, but nothing runs on drop when a test or `cis490-bench` is itself killed (`kill
/// -9`, a CI timeout, Ctrl-C: its children are in process groups of their own, out of the
/// terminal's reach). Every long-lived child of the harness starts through this, so none
/// outlives it: a server left running would load the machine for the next figure.
/// Start such a command from the thread that lives as long as the child must.
pub fn command_dying_with_parent(program: impl AsRef<std::ffi::OsStr>) -> Command {
    const SETPRIV: &str = "/usr/bin/setpriv";
    if cfg!(target_os = "linux") && Path::new(SETPRIV).is_file() {
        let mut cmd = Command::new(SETPRIV);
        cmd.args(["--pdeathsig", "KILL", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// A child process that is killed (with its process group on Unix) when dropped, so a
/// failing test never leaves processes behind.
pub struct ChildGuard {
    pub child: Child,
    pub name: String,
}

impl ChildGuard {
    /// Starts `cmd` in its own process group (Unix) so that the whole tree can be killed.
    pub fn spawn(name: &str, mut cmd: Command) -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Self {
            child,
            name: name.to_string(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the process (Unix): "TERM", "INT", "KILL", "STOP", "CONT".
    #[cfg(unix)]
    pub fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{sig} {} failed", self.child.id());
        }
        Ok(())
    }

    /// Kills the whole process group at once (SIGKILL) and reaps the child.
    pub fn kill_now(&mut self) {
        #[cfg(unix)]
        {
            let _ = Command::new("kill")
                .arg("-KILL")
                // `--` keeps procps kill from reading the negative group ID as a signal
                // option: `kill -KILL -15` for an exited child killed every process.
                .arg("--")
                .arg(format!("-{}", self.child.id()))
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the child to exit by itself, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// Polls `check` every 20 ms until it returns `Some`, or fails after `timeout` with `what`.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `cis490-reconciler serve` child.
pub struct Reconciler {
    pub process: ChildGuard,
    /// e.g. `http://127.0.0.1:40123`
    pub url: String,
}

impl Reconciler {
    /// Starts `cis490-reconciler serve --listen 127.0.0.1:0 <extra args>` with `envs`, and
    /// waits (up to 30 s) for its listening line. Its stderr goes to `stderr_log`.
    pub fn start(
        extra_args: &[&str],
        envs: &[(&str, &str)],
        stderr_log: &Path,
    ) -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0", extra_args, envs, stderr_log)
    }

    /// Like `start`, on a chosen address (to restart a server on the same port).
    pub fn start_on(
        listen: &str,
        extra_args: &[&str],
        envs: &[(&str, &str)],
        stderr_log: &Path,
    ) -> anyhow::Result<Self> {
        let mut cmd = command_dying_with_parent(bin("cis490-reconciler")?);
        cmd.arg("serve")
            .arg("--listen")
            .arg(listen)
            .args(extra_args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let log = std::fs::File::create(stderr_log)
            .with_context(|| format!("creating {}", stderr_log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut process = ChildGuard::spawn("cis490-reconciler", cmd)?;
        let stdout = process
            .child
            .stdout
            .take()
            .context("reconciler stdout not piped")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    if let Some(url) = line.strip_prefix(LISTENING_PREFIX) {
                        let _ = tx.send(url.trim().to_string());
                        sent = true;
                    }
                }
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(30)).with_context(|| {
            let log = std::fs::read_to_string(stderr_log).unwrap_or_default();
            format!("reconciler did not print its listening line; its stderr:\n{log}")
        })?;
        Ok(Self { process, url })
    }

    /// The `host:port` part of the URL.
    pub fn addr(&self) -> &str {
        self.url
            .strip_prefix("https://")
            .or_else(|| self.url.strip_prefix("http://"))
            .unwrap_or(&self.url)
    }
}

/// Where the server's artifact store (`store_root`, e.g. `<state>/models`) keeps the
/// bytes of `artifact_id` (64 hex digits): one folder per byte sequence, named by its sha256.
pub fn stored_bundle(store_root: &Path, artifact_id: &str) -> PathBuf {
    store_root
        .join("blobs")
        .join(artifact_id)
        .join("bundle.tar.zst")
}

/// sha256 (hex) of a file's bytes.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_returns_value_or_times_out() {
        let mut n = 0;
        let v = wait_until(Duration::from_secs(1), "n to reach 3", || {
            n += 1;
            (n >= 3).then_some(n)
        })
        .unwrap();
        assert_eq!(v, 3);
        let err = wait_until::<()>(Duration::from_millis(50), "never", || None).unwrap_err();
        assert!(err.to_string().contains("never"));
    }

    #[cfg(unix)]
    #[test]
    fn child_guard_kills_on_drop() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let guard = ChildGuard::spawn("sleep", cmd).unwrap();
        let pid = guard.pid();
        drop(guard);
        let alive = Command::new("kill")
            .arg("-0")
            .arg(pid.to_string())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(!alive, "process {pid} still alive after drop");
    }

    /// What keeps a killed harness from leaving its servers behind: the child dies with
    /// the thread (here: the whole of the parent, to the child) that started it.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_child_dies_when_the_thread_that_started_it_ends() {
        if !Path::new("/usr/bin/setpriv").is_file() {
            eprintln!("skipped: no /usr/bin/setpriv (util-linux)");
            return;
        }
        let mut child = std::thread::spawn(|| {
            let mut cmd = command_dying_with_parent("sleep");
            cmd.arg("30");
            let child = cmd.spawn().unwrap();
            // The request for the signal is made before the exec: once the child is
            // `sleep`, it stands (a parent gone before it would never signal).
            let comm = format!("/proc/{}/comm", child.id());
            wait_until(Duration::from_secs(10), "the child to exec", || {
                let name = std::fs::read_to_string(&comm).unwrap_or_default();
                (name.trim() == "sleep").then_some(())
            })
            .unwrap();
            child
        })
        .join()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the child outlived its parent thread"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{status:?}");
    }
}
