//! The trainer's progress file (`$CIS490_PROGRESS_FILE`): JSON lines the trainer appends,
//! each a flat object of numbers and strings (`{"step": 7, "of": 20, "loss": 0.31}`).
//!
//! While the trainer runs, each heartbeat carries the latest complete line (read from the
//! file's end, so a long file costs no more than a short one). When it has exited, the
//! whole file is read once, streaming, into a series of at most
//! [`MAX_PROGRESS_POINTS`](cis490_api::results::MAX_PROGRESS_POINTS) points spread evenly
//! over the run. Lines that are too long or not flat objects are skipped and counted in
//! one warning; they never fail the job.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use cis490_api::results::{
    bound_series, check_flat, parse_flat, thin_evenly, ResultsProblem, MAX_PROGRESS_LINE_BYTES,
    MAX_PROGRESS_POINTS,
};
use cis490_api::Metrics;

/// The progress file's name in the attempt directory (beside `output/`, so it is not part
/// of the artifact).
pub const PROGRESS_FILE_NAME: &str = "progress.jsonl";

/// The latest complete line of the file (one that ends in a newline, so a line the
/// trainer is still writing is never read half), when it is a valid point.
pub fn latest_point(path: &Path) -> Option<Metrics> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    // The last line's newline, the line, and the newline before it.
    let window = (MAX_PROGRESS_LINE_BYTES + 2) as u64;
    let start = len.saturating_sub(window);
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut tail = Vec::with_capacity(window as usize);
    file.take(window).read_to_end(&mut tail).ok()?;
    let end = tail.iter().rposition(|&b| b == b'\n')?;
    let complete = &tail[..end];
    let line = match complete.iter().rposition(|&b| b == b'\n') {
        Some(newline) => &complete[newline + 1..],
        // No newline before it: the line starts at the window's start only if that is the
        // file's start; otherwise it is longer than the window allows.
        None if start == 0 => complete,
        None => return None,
    };
    parse_point(trim_cr(line)).ok()
}

/// One line as a point, checked as it will be sent (numbers are written back in their
/// shortest form, which is not always the trainer's).
fn parse_point(line: &[u8]) -> Result<Metrics, ResultsProblem> {
    let point = parse_flat(line, MAX_PROGRESS_LINE_BYTES)?;
    check_flat(&point, MAX_PROGRESS_LINE_BYTES)?;
    Ok(point)
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The whole file, read once the trainer has exited.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct History {
    /// At most `MAX_PROGRESS_POINTS`, evenly spread, the first and last line among them.
    pub points: Vec<Metrics>,
    /// What was wrong with the file, for a warning event.
    pub warning: Option<String>,
}

/// Keeps an even sample of a stream of unknown length in bounded memory: every
/// `stride`-th point, the stride doubling (and every other kept point dropped) whenever
/// twice the wanted number are kept.
struct EvenSample {
    /// (line number among the points, point)
    kept: Vec<(u64, Metrics)>,
    stride: u64,
    seen: u64,
    last: Option<Metrics>,
}

impl EvenSample {
    fn new() -> Self {
        Self {
            kept: Vec::new(),
            stride: 1,
            seen: 0,
            last: None,
        }
    }

    fn push(&mut self, point: Metrics) {
        if self.seen.is_multiple_of(self.stride) {
            self.kept.push((self.seen, point.clone()));
            if self.kept.len() >= 2 * MAX_PROGRESS_POINTS {
                self.stride *= 2;
                let stride = self.stride;
                self.kept.retain(|(n, _)| n.is_multiple_of(stride));
            }
        }
        self.seen += 1;
        self.last = Some(point);
    }

    fn finish(self) -> Vec<Metrics> {
        let last_kept = self.kept.last().map(|(n, _)| *n);
        let mut points: Vec<Metrics> = self.kept.into_iter().map(|(_, p)| p).collect();
        // The last point always ends the series.
        if let Some(last) = self.last {
            if last_kept != Some(self.seen - 1) {
                points.push(last);
            }
        }
        bound_series(&thin_evenly(&points, MAX_PROGRESS_POINTS))
    }
}

/// Reads the whole progress file; a missing file is an empty history.
pub fn read_history(path: &Path) -> History {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return History::default(),
        Err(e) => {
            return History {
                points: Vec::new(),
                warning: Some(format!("progress file: cannot read it: {e}")),
            }
        }
    };
    let mut reader = BufReader::new(file);
    let mut sample = EvenSample::new();
    let mut line: Vec<u8> = Vec::new();
    let (mut lines, mut skipped) = (0u64, 0u64);
    let mut first_problem: Option<String> = None;
    let mut too_long = false;
    let mut finish_line = |line: &mut Vec<u8>, too_long: &mut bool| {
        lines += 1;
        let text = trim_cr(line);
        let problem = if *too_long {
            Some(format!("is longer than {MAX_PROGRESS_LINE_BYTES} bytes"))
        } else if text.iter().all(u8::is_ascii_whitespace) {
            lines -= 1;
            None
        } else {
            match parse_point(text) {
                Ok(point) => {
                    sample.push(point);
                    None
                }
                Err(e) => Some(e.to_string()),
            }
        };
        if let Some(problem) = problem {
            skipped += 1;
            first_problem.get_or_insert_with(|| format!("line {lines} {problem}"));
        }
        line.clear();
        *too_long = false;
    };
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) => {
                first_problem.get_or_insert_with(|| format!("reading it failed: {e}"));
                break;
            }
        };
        if buf.is_empty() {
            if !line.is_empty() || too_long {
                finish_line(&mut line, &mut too_long);
            }
            break;
        }
        let (chunk, newline) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i)),
            None => (buf, None),
        };
        // A line past the limit is not kept in memory: only the fact that it was too long.
        if !too_long {
            if line.len() + chunk.len() > MAX_PROGRESS_LINE_BYTES {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let used = newline.map_or(chunk.len(), |i| i + 1);
        reader.consume(used);
        if newline.is_some() {
            finish_line(&mut line, &mut too_long);
        }
    }
    let warning = first_problem.map(|first| {
        if skipped == 0 {
            format!("progress file: {first}")
        } else {
            format!("progress file: skipped {skipped} of {lines} lines (first: {first})")
        }
    });
    History {
        points: sample.finish(),
        warning,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cis490_api::MetricValue;

    fn step(point: &Metrics) -> i64 {
        match &point["step"] {
            MetricValue::Number(n) => n.as_i64().unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_latest_point_is_the_last_complete_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PROGRESS_FILE_NAME);
        assert_eq!(latest_point(&path), None, "no file yet");
        std::fs::write(&path, "{\"step\": 1}\n").unwrap();
        assert_eq!(latest_point(&path).map(|p| step(&p)), Some(1));
        std::fs::write(&path, "{\"step\": 1}\n{\"step\": 2}\r\n{\"step\": 3").unwrap();
        assert_eq!(
            latest_point(&path).map(|p| step(&p)),
            Some(2),
            "a line still being written is not read"
        );
        let long = format!("{{\"step\": 1}}\n{{\"note\": \"{}\"}}\n", "x".repeat(9000));
        std::fs::write(&path, long).unwrap();
        assert_eq!(latest_point(&path), None, "a line too long is no point");
        std::fs::write(&path, "{\"step\": 1}\nnot json\n").unwrap();
        assert_eq!(latest_point(&path), None);
    }

    #[test]
    fn history_keeps_every_point_of_a_short_run_and_warns_of_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PROGRESS_FILE_NAME);
        assert_eq!(read_history(&path), History::default());
        let long = "x".repeat(MAX_PROGRESS_LINE_BYTES + 10);
        let text = format!(
            "{{\"step\": 1}}\n\nnot json\n{{\"note\": \"{long}\"}}\n{{\"step\": [2]}}\n{{\"step\": 3}}"
        );
        std::fs::write(&path, text).unwrap();
        let h = read_history(&path);
        let steps: Vec<i64> = h.points.iter().map(step).collect();
        assert_eq!(
            steps,
            [1, 3],
            "the unterminated last line counts once the run is over"
        );
        let warning = h.warning.unwrap();
        assert!(
            warning.starts_with("progress file: skipped 3 of 5 lines (first: line 2 is not JSON"),
            "{warning}"
        );
    }

    #[test]
    fn a_long_history_is_thinned_evenly_to_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PROGRESS_FILE_NAME);
        let n = 25_000;
        let text: String = (0..n).map(|i| format!("{{\"step\": {i}}}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let h = read_history(&path);
        assert_eq!(h.warning, None);
        assert!(h.points.len() <= MAX_PROGRESS_POINTS, "{}", h.points.len());
        assert!(
            h.points.len() >= MAX_PROGRESS_POINTS / 2,
            "{}",
            h.points.len()
        );
        let steps: Vec<i64> = h.points.iter().map(step).collect();
        assert_eq!((steps[0], *steps.last().unwrap()), (0, n - 1));
        // Evenly: no gap is more than about twice the average.
        let average = n / steps.len() as i64;
        let widest = steps.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        assert!(widest <= 3 * average, "gap {widest}, average {average}");
    }
}
