//! One process per state directory. Two servers on one state dir would each repair the
//! artifact store at start-up (removing the other's in-flight uploads as "partials left by
//! a crash"); two agents on one would end each other's trainers as leftovers. So `serve`
//! and `cis490-agent run` take an advisory lock on a file in their state dir for their
//! whole life and write their PID into it; a second process finds the lock taken and
//! refuses to start, naming that PID. The OS drops the lock when the process dies, however
//! it dies, so a crash never leaves a stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Why the state dir could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum StateLockError {
    /// Another live process holds the lock.
    #[error(
        "another {program} (pid {holder}) is using the state dir {state_dir}: stop it first, \
         or give this one another --state-dir"
    )]
    Held {
        program: &'static str,
        state_dir: String,
        holder: String,
    },
    /// The lock file could not be opened, locked or written.
    #[error("cannot lock the state dir ({path}): {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Holds the state dir's lock until dropped.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    /// Takes the lock on `<state_dir>/<file>` or says who holds it (`program` names the
    /// kind of process in the message). Never waits.
    pub fn acquire(
        state_dir: &Path,
        file: &str,
        program: &'static str,
    ) -> Result<StateLock, StateLockError> {
        let path = state_dir.join(file);
        let io = |source| StateLockError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                // The holder wrote its PID after locking; an empty read means it is between
                // the two steps.
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "unknown".to_string(),
                    pid => pid.to_string(),
                };
                return Err(StateLockError::Held {
                    program,
                    state_dir: state_dir.display().to_string(),
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(StateLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_state_dir_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path(), "x.lock", "cis490-x").unwrap();
        let err = StateLock::acquire(dir.path(), "x.lock", "cis490-x").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(matches!(err, StateLockError::Held { .. }));
        drop(first);
        assert!(text.contains("another cis490-x"), "{text}");
        let again = StateLock::acquire(dir.path(), "x.lock", "cis490-x").unwrap();
        let pid = std::fs::read_to_string(again.path()).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
    }
}
