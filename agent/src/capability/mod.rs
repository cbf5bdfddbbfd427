//! What this host is and can run: hostname, OS, cores, RAM (sysinfo), NVIDIA GPUs (NVML,
//! behind [`GpuProbe`]), torch as the trainer's Python sees it, and the work dir's git
//! commit. `cis490-agent capability` prints it; the agent reports it as node status.

pub mod nvml;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cis490_api::Capability;
use serde::Deserialize;

pub use nvml::{GpuProbe, GpuReport, NvmlProbe, StaticGpuProbe};

const MIB: u64 = 1024 * 1024;

/// Why a host cannot run any job.
#[derive(Debug, thiserror::Error)]
pub enum CapabilityError {
    /// Trainer commands run in the work dir; without it nothing can run.
    #[error("work dir {0} does not exist or is not a directory")]
    WorkDirMissing(PathBuf),
    /// The OS refused to tell us about memory or CPUs.
    #[error("cannot read system information: {0}")]
    System(String),
}

/// Inputs of detection that come from configuration.
#[derive(Debug, Clone)]
pub struct DetectOptions {
    /// Where trainer commands run (its git commit is reported).
    pub work_dir: PathBuf,
    /// The trainer's Python, asked for its torch version.
    pub python: String,
    /// How long the torch and git probes may take each.
    pub probe_timeout: Duration,
    pub labels: BTreeMap<String, String>,
    pub max_concurrent: u32,
}

/// Detects the host's capability. Only a missing work dir (or an OS that hides its memory)
/// is an error; missing GPUs, torch or git are facts, reported as absent.
pub async fn detect(
    opts: &DetectOptions,
    gpu: &dyn GpuProbe,
) -> Result<Capability, CapabilityError> {
    if !opts.work_dir.is_dir() {
        return Err(CapabilityError::WorkDirMissing(opts.work_dir.clone()));
    }
    let mut sys = sysinfo::System::new().map_err(|e| CapabilityError::System(e.to_string()))?;
    sys.refresh_memory();
    let ram_total_mib = sys.total_memory() / MIB;
    if ram_total_mib == 0 {
        return Err(CapabilityError::System("total RAM reads as 0".into()));
    }
    let cores = std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1);
    let gpus = gpu.probe();
    let (torch_version, torch_cuda) = torch_probe(opts).await;
    let git_commit = git_commit(&opts.work_dir, opts.probe_timeout).await;
    let os = match (sysinfo::System::name(), sysinfo::System::os_version()) {
        (Ok(name), Ok(version)) => format!("{name} {version}"),
        (Ok(name), Err(_)) => name,
        _ => std::env::consts::OS.to_string(),
    };
    Ok(Capability {
        hostname: hostname(),
        os,
        arch: sysinfo::System::cpu_arch(),
        cores,
        cores_allocatable: None,
        ram_total_mib,
        ram_available_mib: sys.available_memory() / MIB,
        ram_allocatable_mib: ram_total_mib,
        cuda: !gpus.gpus.is_empty(),
        gpus: gpus.gpus,
        driver_version: gpus.driver_version,
        cuda_version: gpus.cuda_version,
        torch_version,
        torch_cuda,
        gpu_note: gpus.note,
        git_commit,
        agent_version: cis490_api::VERSION.to_string(),
        labels: opts.labels.clone(),
        max_concurrent: opts.max_concurrent.max(1),
        running_jobs: Vec::new(),
        instance: None,
    })
}

/// The host name, or "localhost" when the OS will not say.
pub fn hostname() -> String {
    sysinfo::System::host_name()
        .ok()
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Kills a probe's whole process group when dropped: when the probe is done, timed out, or
/// abandoned because a signal stopped the agent during detection. `kill_on_drop` alone
/// reaches only the probe itself, not what it started (a Python wrapper's interpreter).
#[cfg_attr(not(unix), allow(dead_code))]
struct ProbeGroup(u32);

impl Drop for ProbeGroup {
    fn drop(&mut self) {
        #[cfg(unix)]
        crate::runner::kill_tree(self.0, true);
    }
}

/// Runs `cmd` (stdout piped, stdin/stderr closed) and returns its stdout when it exits 0
/// within `timeout`; a slow child is killed, with anything it started.
async fn output_within(mut cmd: tokio::process::Command, timeout: Duration) -> Option<String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    let child = cmd.spawn().ok()?;
    let _group = ProbeGroup(child.id()?);
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .ok()?
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

const TORCH_PROBE: &str = "import json\ntry:\n    import torch\n    print(json.dumps({'version': torch.__version__, 'cuda': bool(torch.cuda.is_available())}))\nexcept ImportError:\n    print(json.dumps({'version': None, 'cuda': None}))\n";

#[derive(Deserialize)]
struct TorchAnswer {
    version: Option<String>,
    cuda: Option<bool>,
}

/// Asks the trainer's Python for torch; absent Python or torch is `(None, None)`.
async fn torch_probe(opts: &DetectOptions) -> (Option<String>, Option<bool>) {
    let mut cmd = tokio::process::Command::new(&opts.python);
    cmd.arg("-c").arg(TORCH_PROBE).current_dir(&opts.work_dir);
    let Some(text) = output_within(cmd, opts.probe_timeout).await else {
        return (None, None);
    };
    let last = text.lines().last().unwrap_or("");
    match serde_json::from_str::<TorchAnswer>(last) {
        Ok(a) => (a.version, a.cuda),
        Err(_) => (None, None),
    }
}

/// `git rev-parse HEAD` in the work dir; None outside a repository or without git.
pub async fn git_commit(work_dir: &Path, timeout: Duration) -> Option<String> {
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("-C").arg(work_dir).args(["rev-parse", "HEAD"]);
    output_within(cmd, timeout)
        .await
        .filter(|s| s.len() >= 7 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn gib(mib: u64) -> String {
    format!("{:.1} GiB", mib as f64 / 1024.0)
}

/// The human form `cis490-agent capability` prints.
pub fn render_text(cap: &Capability) -> String {
    let mut s = String::new();
    let none = || "-".to_string();
    let _ = writeln!(s, "hostname:       {}", cap.hostname);
    let _ = writeln!(s, "os:             {} ({})", cap.os, cap.arch);
    let _ = writeln!(s, "cores:          {}", cap.cores);
    let _ = writeln!(
        s,
        "ram:            {} total, {} available, {} allocatable",
        gib(cap.ram_total_mib),
        gib(cap.ram_available_mib),
        gib(cap.ram_allocatable_mib)
    );
    let _ = writeln!(s, "cuda:           {}", cap.cuda);
    let _ = writeln!(
        s,
        "driver/cuda:    {} / {}",
        cap.driver_version.clone().unwrap_or_else(none),
        cap.cuda_version.clone().unwrap_or_else(none)
    );
    if cap.gpus.is_empty() {
        let _ = writeln!(
            s,
            "gpus:           none ({})",
            cap.gpu_note.as_deref().unwrap_or("none found")
        );
    } else {
        let _ = writeln!(s, "gpus:");
        for g in &cap.gpus {
            let _ = writeln!(
                s,
                "  [{}] {}: {} total, {} free, {} allocatable",
                g.index,
                g.name,
                gib(g.vram_total_mib),
                gib(g.vram_free_mib),
                gib(g.vram_allocatable_mib)
            );
        }
    }
    let _ = writeln!(
        s,
        "torch:          {} (cuda: {})",
        cap.torch_version
            .clone()
            .unwrap_or_else(|| "not found".into()),
        cap.torch_cuda.map(|b| b.to_string()).unwrap_or_else(none)
    );
    let _ = writeln!(
        s,
        "git commit:     {}",
        cap.git_commit.clone().unwrap_or_else(none)
    );
    let _ = writeln!(s, "agent version:  {}", cap.agent_version);
    let _ = writeln!(s, "max concurrent: {}", cap.max_concurrent);
    if !cap.labels.is_empty() {
        let labels: Vec<String> = cap.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(s, "labels:         {}", labels.join(","));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use cis490_api::Gpu;

    fn opts(dir: &Path) -> DetectOptions {
        DetectOptions {
            work_dir: dir.to_path_buf(),
            python: "python3".into(),
            probe_timeout: Duration::from_secs(20),
            labels: BTreeMap::new(),
            max_concurrent: 1,
        }
    }

    fn gpu(index: u32, name: &str, gib: u64) -> Gpu {
        Gpu {
            index,
            name: name.into(),
            uuid: Some(format!("GPU-{index}")),
            vram_total_mib: gib * 1024,
            vram_free_mib: gib * 1024 - 300,
            vram_allocatable_mib: gib * 1024,
            vram_allocated_mib: 0,
        }
    }

    #[tokio::test]
    async fn fake_device_list_of_two_gpus_is_reported_with_vram_and_cuda() {
        let dir = tempfile::tempdir().unwrap();
        let probe = StaticGpuProbe(GpuReport {
            gpus: vec![gpu(0, "RTX 4090", 24), gpu(1, "RTX 3060", 12)],
            driver_version: Some("550.54".into()),
            cuda_version: Some("12.4".into()),
            note: None,
        });
        let cap = detect(&opts(dir.path()), &probe).await.unwrap();
        assert!(cap.cuda);
        assert_eq!(cap.gpus.len(), 2);
        assert_eq!(cap.gpus[0].vram_total_mib, 24 * 1024);
        assert_eq!(cap.gpus[1].name, "RTX 3060");
        assert_eq!(cap.cuda_version.as_deref(), Some("12.4"));
        assert!(cap.ram_total_mib > 0 && cap.cores > 0);
        assert_eq!(cap.agent_version, cis490_api::VERSION);
        let text = render_text(&cap);
        assert!(text.contains("[1] RTX 3060: 12.0 GiB total"), "{text}");
    }

    #[tokio::test]
    async fn real_probe_on_this_machine_without_a_gpu_reports_zero_gpus_and_a_reason() {
        // CI machines have no NVIDIA driver. Where one exists, the probe must list devices.
        let report = NvmlProbe.probe();
        if report.gpus.is_empty() {
            let note = report.note.expect("a reason for no GPUs");
            assert!(!note.is_empty() && !note.contains('\n'), "{note:?}");
            let dir = tempfile::tempdir().unwrap();
            let cap = detect(&opts(dir.path()), &NvmlProbe).await.unwrap();
            assert!(!cap.cuda);
            assert!(cap.gpus.is_empty());
            assert!(render_text(&cap).contains("gpus:           none ("));
        } else {
            assert!(report.gpus.iter().all(|g| g.vram_total_mib > 0));
        }
    }

    #[tokio::test]
    async fn missing_work_dir_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = detect(&opts(&missing), &StaticGpuProbe::default())
            .await
            .unwrap_err();
        assert!(matches!(err, CapabilityError::WorkDirMissing(_)), "{err}");
    }

    #[tokio::test]
    async fn git_commit_of_a_repository_and_of_a_plain_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(git_commit(dir.path(), Duration::from_secs(20)).await, None);
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        if let Some(c) = git_commit(repo, Duration::from_secs(20)).await {
            assert_eq!(c.len(), 40);
        }
    }

    #[tokio::test]
    async fn absent_python_means_no_torch_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        o.python = "/nonexistent/python-for-cis490".into();
        let cap = detect(&o, &StaticGpuProbe::default()).await.unwrap();
        assert_eq!(cap.torch_version, None);
        assert_eq!(cap.torch_cuda, None);
    }
}
