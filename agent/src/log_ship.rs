//! Streaming a trainer's log to the server: each heartbeat carries the bytes of the log
//! file after the offset the server last acknowledged (`HeartbeatResponse::log_offset`),
//! at most [`MAX_LOG_CHUNK_BYTES`] at a time, so the server ends up with the whole file
//! however often answers are lost or heartbeats fail (it ignores a chunk it already has).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cis490_api::{LogChunk, MAX_LOG_CHUNK_BYTES};

/// Longest a chunk's text may be once JSON-escaped, so a heartbeat stays well inside the
/// server's 1 MiB body cap even for a log of control characters (6 bytes each escaped).
const MAX_ESCAPED_BYTES: usize = 640 * 1024;

/// One attempt's log file and how much of it the server holds. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct LogShipper {
    path: PathBuf,
    acked: Arc<AtomicU64>,
}

impl LogShipper {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            acked: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How much of the file the server has acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Records the server's answer. Answers may arrive out of order (the lease keeper and
    /// a final flush overlap), and the server's offset only grows, so the largest wins.
    pub fn ack(&self, offset: Option<u64>) {
        if let Some(offset) = offset {
            self.acked.fetch_max(offset, Ordering::SeqCst);
        }
    }

    fn file_len(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// Bytes of the file the server does not have yet.
    pub fn unsent(&self) -> u64 {
        self.file_len().saturating_sub(self.acked())
    }

    /// The next chunk after the acknowledged offset, or None when there is nothing new.
    /// `trainer_done`: the file will not grow, so a character cut off at its very end is
    /// sent (replaced) instead of waiting for the rest of it.
    pub fn next_chunk(&self, trainer_done: bool) -> Option<LogChunk> {
        let from = self.acked();
        let len = self.file_len();
        if len <= from {
            return None;
        }
        let mut window = (len - from).min(MAX_LOG_CHUNK_BYTES);
        loop {
            let buf = read_at(&self.path, from, window).ok()?;
            let at_end = from + buf.len() as u64 >= len;
            let (text, used) = decode(&buf, trainer_done && at_end);
            if used == 0 {
                return None;
            }
            if escaped_len(&text) > MAX_ESCAPED_BYTES && window > 1024 {
                window /= 2;
                continue;
            }
            return Some(LogChunk {
                from,
                to: from + used as u64,
                text,
            });
        }
    }
}

fn read_at(path: &Path, from: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    file.take(len).read_to_end(&mut buf)?;
    Ok(buf)
}

/// `buf` as text and how many of its bytes that used: invalid bytes become U+FFFD, and an
/// incomplete character at the end is left for the next chunk unless `at_eof`.
pub fn decode(buf: &[u8], at_eof: bool) -> (String, usize) {
    let mut out = String::with_capacity(buf.len());
    let mut i = 0;
    while i < buf.len() {
        match std::str::from_utf8(&buf[i..]) {
            Ok(s) => {
                out.push_str(s);
                i = buf.len();
            }
            Err(e) => {
                let valid = e.valid_up_to();
                out.push_str(&String::from_utf8_lossy(&buf[i..i + valid]));
                i += valid;
                match e.error_len() {
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        i += bad;
                    }
                    None if at_eof => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        i = buf.len();
                    }
                    None => break,
                }
            }
        }
    }
    (out, i)
}

/// The length of `text` as a JSON string body (without the quotes).
fn escaped_len(text: &str) -> usize {
    text.chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_keeps_a_cut_character_for_later_and_replaces_bad_bytes() {
        let text = "aé✓".as_bytes();
        // Cut inside ✓ (3 bytes): wait for the rest, unless the file is done.
        let cut = &text[..text.len() - 1];
        assert_eq!(decode(cut, false), ("aé".to_string(), 3));
        assert_eq!(decode(cut, true), ("aé\u{FFFD}".to_string(), cut.len()));
        assert_eq!(decode(b"a\xffb", false), ("a\u{FFFD}b".to_string(), 3));
        assert_eq!(decode(b"", true), (String::new(), 0));
    }

    #[test]
    fn chunks_walk_the_file_from_the_acknowledged_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trainer.log");
        let big: String = (0..60_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &big).unwrap();
        let ship = LogShipper::new(&path);
        let mut got = String::new();
        while let Some(chunk) = ship.next_chunk(true) {
            assert_eq!(chunk.from, ship.acked());
            assert!(chunk.to - chunk.from <= MAX_LOG_CHUNK_BYTES);
            got.push_str(&chunk.text);
            ship.ack(Some(chunk.to));
        }
        assert_eq!(got, big);
        assert_eq!(ship.unsent(), 0);
        // An old answer arriving late does not move the offset back.
        ship.ack(Some(10));
        assert_eq!(ship.acked(), big.len() as u64);
    }

    #[test]
    fn a_log_of_control_characters_is_sent_in_smaller_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trainer.log");
        std::fs::write(&path, vec![0x1b_u8; 300 * 1024]).unwrap();
        let chunk = LogShipper::new(&path).next_chunk(true).unwrap();
        assert!(escaped_len(&chunk.text) <= MAX_ESCAPED_BYTES);
        assert_eq!(chunk.text.len() as u64, chunk.to - chunk.from);
    }
}
