//! Trainers a previous life of this agent left behind.
//!
//! Every trainer's process group is recorded as a file `<state_dir>/trainers/<pgid>`
//! holding its job ID while it runs, and the record is removed once the group is gone. An
//! agent that was killed cannot remove its records, and its trainers may still run when
//! its trainer guard died with it (or, without a guard, the parent-death signal reached only
//! the leader). So an agent starting on that
//! state dir ends those groups before it claims anything: a job is never trained twice at
//! once on one host. A process is ended only when it is still in the recorded group *and*
//! its environment carries the recorded `CIS490_JOB_ID`, so a reused pid is never hit.

use std::path::{Path, PathBuf};

use cis490_api::JobId;

/// Where the records live inside the agent's state dir.
pub fn records_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("trainers")
}

/// The record of one running trainer group; removing it is the caller's job once the
/// group is gone.
#[derive(Debug)]
pub struct TrainerRecord {
    path: PathBuf,
}

impl TrainerRecord {
    /// Writes `<dir>/<pgid>` with the job ID.
    pub fn write(dir: &Path, pgid: u32, job: &JobId) -> std::io::Result<TrainerRecord> {
        let path = dir.join(pgid.to_string());
        let line = format!("{job}\n");
        // The directory is made once, by the first record (not checked for every job).
        match std::fs::write(&path, &line) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)?;
                std::fs::write(&path, &line)?;
            }
            other => other?,
        }
        Ok(TrainerRecord { path })
    }

    /// Forgets the group (it is gone).
    pub fn remove(self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), "cannot remove trainer record: {e}");
            }
        }
    }
}

/// A leftover group that was ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub pgid: u32,
    pub job: String,
    /// How many of the group's processes were still alive.
    pub processes: usize,
}

/// Ends every recorded group whose processes still carry the recorded job, and removes all
/// records. Returns what was ended.
pub fn end_leftovers(dir: &Path) -> Vec<Ended> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut ended = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let pgid = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok());
        let job = std::fs::read_to_string(&path).ok();
        if let (Some(pgid), Some(job)) = (pgid, job) {
            let job = job.trim().to_string();
            let processes = processes_of(pgid, &job);
            if !processes.is_empty() {
                crate::runner::kill_tree(pgid, true);
                ended.push(Ended {
                    pgid,
                    job,
                    processes: processes.len(),
                });
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    ended
}

/// The pids in process group `pgid` whose environment has `CIS490_JOB_ID=<job>`.
#[cfg(target_os = "linux")]
fn processes_of(pgid: u32, job: &str) -> Vec<u32> {
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let marker = format!("CIS490_JOB_ID={job}");
    proc_dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| process_group(*pid) == Some(pgid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == marker.as_bytes()))
        })
        .collect()
}

/// Field 5 of `/proc/<pid>/stat` (after the command name, which may hold spaces and
/// parentheses, so it is parsed from the last `)`).
#[cfg(target_os = "linux")]
fn process_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest: " state ppid pgrp ..."
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// Elsewhere no process can be checked against its job, so none is ended.
#[cfg(not(target_os = "linux"))]
fn processes_of(_pgid: u32, _job: &str) -> Vec<u32> {
    Vec::new()
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::Command;
    use std::time::{Duration, Instant};

    use super::*;

    fn job(c: char) -> JobId {
        JobId::parse(&c.to_string().repeat(64)).unwrap()
    }

    fn alive(pid: u32) -> bool {
        process_group(pid).is_some()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z")
    }

    #[test]
    fn a_recorded_group_with_its_job_is_ended_and_a_foreign_one_is_spared() {
        let dir = tempfile::tempdir().unwrap();
        let records = records_dir(dir.path());
        let ours = job('a');
        let mut leftover = Command::new("sleep")
            .arg("30")
            .env("CIS490_JOB_ID", ours.to_string())
            .process_group(0)
            .spawn()
            .unwrap();
        // Same shape, but its environment names another job: a reused pid must be spared.
        let mut stranger = Command::new("sleep")
            .arg("30")
            .env("CIS490_JOB_ID", job('b').to_string())
            .process_group(0)
            .spawn()
            .unwrap();
        let _ours = TrainerRecord::write(&records, leftover.id(), &ours).unwrap();
        let _theirs = TrainerRecord::write(&records, stranger.id(), &ours).unwrap();
        // Until a child has exec'd, /proc shows the environment it forked with (ours), not
        // the one it was given: wait for both, as a previous life's trainers long have.
        let deadline = Instant::now() + Duration::from_secs(10);
        for pid in [leftover.id(), stranger.id()] {
            while !std::fs::read(format!("/proc/{pid}/environ"))
                .unwrap_or_default()
                .windows(b"CIS490_JOB_ID=".len())
                .any(|w| w == b"CIS490_JOB_ID=")
            {
                assert!(Instant::now() < deadline, "sleep {pid} never started");
                std::thread::sleep(Duration::from_millis(5));
            }
        }

        let ended = end_leftovers(&records);
        assert_eq!(
            ended,
            vec![Ended {
                pgid: leftover.id(),
                job: ours.to_string(),
                processes: 1
            }]
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while leftover.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the leftover trainer still runs");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(alive(stranger.id()), "a process of another job was ended");
        assert_eq!(std::fs::read_dir(&records).unwrap().count(), 0);
        let _ = stranger.kill();
        let _ = stranger.wait();
    }
}
