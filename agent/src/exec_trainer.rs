//! The trainer dies with its agent: the fallback for when the trainer guard
//! (`trainer_guard`) cannot start.
//!
//! Then, on Linux, the agent does not start a trainer directly: it starts itself as
//! `cis490-agent __exec-trainer <agent pid> -- PROGRAM ARGS...`, which asks the kernel for a
//! parent-death signal (SIGKILL) and then replaces itself with the trainer. So when the agent
//! dies, even by SIGKILL, the kernel kills the trainer at once instead of leaving it to run
//! beside attempt 2 on another host. The signal follows the leader only; what the trainer
//! started itself is ended by the next agent on this state dir (`leftover_trainers`).
//!
//! The death signal fires when the *thread* that started the child exits, so trainers are
//! started from the runtime's worker threads (which live as long as the agent), never from
//! a blocking-pool thread (which exits when idle).

use std::ffi::OsString;

/// The hidden first argument that selects this entry point.
pub const EXEC_TRAINER_ARG: &str = "__exec-trainer";

/// Exit code when the trainer could not be executed (what shells use for "not found").
const EXEC_FAILED: i32 = 127;

/// Called first thing in `main`: when the process was started as the trainer shim, it
/// becomes the trainer and never returns (or exits with 127 saying why it could not).
pub fn run_if_requested() {
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() != Some(std::ffi::OsStr::new(EXEC_TRAINER_ARG)) {
        return;
    }
    let code = exec(args.collect());
    std::process::exit(code);
}

/// The shim's argv after [`EXEC_TRAINER_ARG`]: the agent's pid, `--`, then the trainer's
/// argv with the program already resolved to a path.
pub fn shim_args(agent_pid: u32, program: &std::path::Path, args: &[String]) -> Vec<OsString> {
    let mut out: Vec<OsString> = vec![
        EXEC_TRAINER_ARG.into(),
        agent_pid.to_string().into(),
        "--".into(),
        program.as_os_str().to_owned(),
    ];
    out.extend(args.iter().map(OsString::from));
    out
}

#[cfg(target_os = "linux")]
fn exec(args: Vec<OsString>) -> i32 {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStringExt;

    use nix::sys::prctl::set_pdeathsig;
    use nix::sys::signal::Signal;
    use nix::unistd::{execv, getppid};

    let [agent_pid, dashes, argv @ ..] = args.as_slice() else {
        eprintln!("cis490-agent: {EXEC_TRAINER_ARG} needs <agent pid> -- PROGRAM [ARGS...]");
        return EXEC_FAILED;
    };
    let Some(agent_pid) = agent_pid.to_str().and_then(|p| p.parse::<i32>().ok()) else {
        eprintln!("cis490-agent: {EXEC_TRAINER_ARG}: {agent_pid:?} is not a pid");
        return EXEC_FAILED;
    };
    if dashes != "--" || argv.is_empty() {
        eprintln!("cis490-agent: {EXEC_TRAINER_ARG} needs <agent pid> -- PROGRAM [ARGS...]");
        return EXEC_FAILED;
    }
    if let Err(e) = set_pdeathsig(Signal::SIGKILL) {
        eprintln!("cis490-agent: cannot ask for a parent-death signal: {e}");
        return EXEC_FAILED;
    }
    // The agent may have died between starting us and the request above: then no signal
    // will ever come, so end here as the signal would have.
    if getppid().as_raw() != agent_pid {
        eprintln!("cis490-agent: the agent (pid {agent_pid}) is gone; not starting the trainer");
        return EXEC_FAILED;
    }
    let argv: Result<Vec<CString>, _> = argv
        .iter()
        .map(|a| CString::new(a.clone().into_vec()))
        .collect();
    let argv = match argv {
        Ok(argv) => argv,
        Err(_) => {
            eprintln!("cis490-agent: a trainer argument contains a NUL byte");
            return EXEC_FAILED;
        }
    };
    let Some(program) = argv.first() else {
        return EXEC_FAILED;
    };
    match execv(program, &argv) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("cis490-agent: cannot start trainer {program:?}: {e}");
            EXEC_FAILED
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn exec(_args: Vec<OsString>) -> i32 {
    eprintln!("cis490-agent: {EXEC_TRAINER_ARG} is only used on Linux");
    EXEC_FAILED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_args_put_the_resolved_program_after_the_separator() {
        let args = shim_args(
            42,
            std::path::Path::new("/usr/bin/python3"),
            &["train.py".into(), "--lr".into(), "0.1".into()],
        );
        let words: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            words,
            [
                EXEC_TRAINER_ARG,
                "42",
                "--",
                "/usr/bin/python3",
                "train.py",
                "--lr",
                "0.1"
            ]
        );
    }
}
