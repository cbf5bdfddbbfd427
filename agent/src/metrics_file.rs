//! The trainer's final metrics: `$CIS490_OUTPUT_DIR/metrics.json`, a flat JSON object of
//! numbers and strings, read when the trainer exits 0. A missing file is no metrics; a bad
//! or oversized one is a warning, and the job completes all the same.

use std::io::Read;
use std::path::Path;

use cis490_api::results::{check_flat, parse_flat, MAX_METRICS_BYTES};
use cis490_api::Metrics;

/// The file's name in the output directory.
pub const METRICS_FILE_NAME: &str = "metrics.json";

/// What the agent made of `metrics.json`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MetricsFile {
    pub metrics: Option<Metrics>,
    pub warning: Option<String>,
}

fn warn(text: String) -> MetricsFile {
    MetricsFile {
        metrics: None,
        warning: Some(format!(
            "{METRICS_FILE_NAME} {text}; the job's metrics are left empty"
        )),
    }
}

/// Reads `output_dir/metrics.json`, at most [`MAX_METRICS_BYTES`] of it.
pub fn read_metrics(output_dir: &Path) -> MetricsFile {
    let path = output_dir.join(METRICS_FILE_NAME);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return MetricsFile::default(),
        Err(e) => return warn(format!("cannot be read: {e}")),
    };
    if !meta.is_file() {
        return warn("is not a regular file".to_string());
    }
    if meta.len() > MAX_METRICS_BYTES as u64 {
        return warn(format!(
            "is {} bytes, more than the {MAX_METRICS_BYTES} the fleet reads",
            meta.len()
        ));
    }
    let mut text = Vec::new();
    let read = std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_METRICS_BYTES as u64 + 1).read_to_end(&mut text));
    if let Err(e) = read {
        return warn(format!("cannot be read: {e}"));
    }
    // Checked again as it will be sent: numbers are written back in their shortest form,
    // which is not always the trainer's.
    match parse_flat(&text, MAX_METRICS_BYTES)
        .and_then(|m| check_flat(&m, MAX_METRICS_BYTES).map(|()| m))
    {
        Ok(metrics) => MetricsFile {
            metrics: Some(metrics),
            warning: None,
        },
        Err(e) => warn(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_missing_bad_and_oversized_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_metrics(dir.path()), MetricsFile::default());
        let path = dir.path().join(METRICS_FILE_NAME);
        std::fs::write(&path, r#"{"accuracy": 0.91, "model": "gbt"}"#).unwrap();
        let read = read_metrics(dir.path());
        assert_eq!(read.warning, None);
        assert_eq!(read.metrics.unwrap()["accuracy"].as_f64(), Some(0.91));
        for (text, says) in [
            (
                r#"{"accuracy": [1]}"#.to_string(),
                "is not a flat JSON object",
            ),
            ("{oops".to_string(), "is not JSON"),
            (
                format!(r#"{{"a": "{}"}}"#, "x".repeat(MAX_METRICS_BYTES)),
                "bytes, more than the 65536",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let read = read_metrics(dir.path());
            assert_eq!(read.metrics, None);
            let warning = read.warning.unwrap();
            assert!(
                warning.starts_with("metrics.json ") && warning.contains(says),
                "{warning}"
            );
        }
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(read_metrics(dir.path())
            .warning
            .unwrap()
            .contains("not a regular file"));
    }
}
