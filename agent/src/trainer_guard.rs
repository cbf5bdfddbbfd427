//! The trainers die with their agent: a guard process ends them when the agent is gone.
//!
//! At start the agent starts one helper, `cis490-agent __trainer-guard`, in a process group
//! of its own, holding the read end of a pipe whose only write end the agent keeps. The
//! agent tells it each trainer's process group as the trainer starts (`+PGID`) and once it
//! is gone (`-PGID`). When the agent dies, however it dies (SIGKILL included), the kernel
//! closes the write end; the guard reads end-of-file and kills every group it still holds,
//! then exits. So a killed agent's trainers, and whatever they started in their group, end
//! at once instead of running beside attempt 2 on another host.
//!
//! Trainers are started directly, so a job costs no extra program start (the parent-death
//! shim of `exec_trainer`, which the agent falls back to when the guard cannot start, costs
//! an exec of the agent's binary per job). What escapes both (the guard killed together
//! with the agent) is ended by the next agent on this state dir (`leftover_trainers`).

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

/// The hidden first argument that selects the guard's entry point.
pub const GUARD_ARG: &str = "__trainer-guard";

/// Called first thing in `main`: when the process was started as the guard, it guards
/// until its input ends, then exits.
pub fn run_if_requested() {
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() != Some(std::ffi::OsStr::new(GUARD_ARG)) {
        return;
    }
    let stdin = std::io::stdin();
    guard(stdin.lock(), |pgid| crate::runner::kill_tree(pgid, true));
    std::process::exit(0);
}

/// Reads `+PGID` and `-PGID` lines until the input ends (or fails), then calls `kill` on
/// every group added and not removed.
fn guard(input: impl BufRead, mut kill: impl FnMut(u32)) {
    let mut groups = std::collections::BTreeSet::new();
    for line in input.lines() {
        let Ok(line) = line else { break };
        let (sign, number) = line.split_at(line.len().min(1));
        match (sign, number.trim().parse::<u32>()) {
            ("+", Ok(pgid)) if pgid > 1 => {
                groups.insert(pgid);
            }
            ("-", Ok(pgid)) => {
                groups.remove(&pgid);
            }
            _ => eprintln!("cis490-agent trainer guard: ignoring {line:?}"),
        }
    }
    for pgid in groups {
        kill(pgid);
    }
}

/// The agent's end of the guard.
#[derive(Debug)]
pub struct TrainerGuard {
    /// None only while dropping (closed first).
    pipe: Option<ChildStdin>,
    /// Kept so the guard is reaped when the agent drops it.
    child: Child,
}

impl TrainerGuard {
    /// Starts the guard from the agent's executable `agent_exe`.
    pub fn start(agent_exe: &Path) -> std::io::Result<TrainerGuard> {
        let mut cmd = Command::new(agent_exe);
        cmd.arg(GUARD_ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // Its own group: a Ctrl-C meant for the agent's terminal group must not end it
        // before the agent has stopped its trainers.
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let mut child = cmd.spawn()?;
        let pipe = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("the guard's input pipe was not made"))?;
        Ok(TrainerGuard {
            pipe: Some(pipe),
            child,
        })
    }

    /// The guard ends group `pgid` if the agent dies before [`TrainerGuard::forget`].
    pub fn watch(&self, pgid: u32) {
        self.send('+', pgid);
    }

    /// Group `pgid` is gone (or stopped by the agent itself).
    pub fn forget(&self, pgid: u32) {
        self.send('-', pgid);
    }

    /// One `write` per line: a pipe write under `PIPE_BUF` bytes is atomic, so lines from
    /// trainers starting and ending at once never interleave (no lock needed).
    fn send(&self, sign: char, pgid: u32) {
        let Some(mut pipe) = self.pipe.as_ref() else {
            return;
        };
        if let Err(e) = pipe.write_all(format!("{sign}{pgid}\n").as_bytes()) {
            tracing::warn!(
                "the trainer guard is gone ({e}): trainers will not die with the agent; \
                 the next agent on this state dir ends what they leave"
            );
        }
    }
}

impl Drop for TrainerGuard {
    fn drop(&mut self) {
        // Closing the pipe ends the guard (with nothing left to kill on a clean stop).
        drop(self.pipe.take());
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn killed(input: &str) -> Vec<u32> {
        let mut killed = Vec::new();
        guard(input.as_bytes(), |pgid| killed.push(pgid));
        killed
    }

    #[test]
    fn at_the_end_of_its_input_the_guard_kills_the_groups_still_held() {
        assert_eq!(killed("+100\n+200\n+300\n-200\n"), [100, 300]);
        assert_eq!(killed("+100\n-100\n"), Vec::<u32>::new());
        assert_eq!(killed(""), Vec::<u32>::new());
    }

    #[test]
    fn the_guard_never_kills_group_0_or_1_and_skips_lines_it_cannot_read() {
        assert_eq!(killed("+0\n+1\n+x\n\n*5\n+7\n"), [7]);
    }
}
