//! The benchmark harness behind `cis490-bench`: one module per figure of issue 7 (and
//! `load` and `big_lists` for issue 12's hostile and careless clients, 12a-12f, and `dashboard`
//! for issue 15's web pages, 15a-15b), a shared
//! workload generator (`workload`), and the result table.
//!
//! Every figure returns [`Row`]s. A row is measured (with its target checked), only "ran"
//! (`--quick`: small sizes, where a time means nothing), or "not measured" with the reason
//! (a piece it needs is missing) — never a made-up number.

pub mod artifacts;
pub mod big_lists;
pub mod claim_throughput;
pub mod dashboard;
pub mod dispatch_latency;
pub mod footprint;
pub mod full_cycle;
pub mod growth;
pub mod load;
pub mod makespan;
pub mod proc_stats;
pub mod reconcile_scale;
pub mod server;
pub mod workload;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

/// What every figure gets: the mode and a scratch directory on the real disk (not tmpfs:
/// fsync must cost what it costs).
pub struct Ctx {
    /// Small sizes; rows report "ran", never a verdict on a time.
    pub quick: bool,
    /// Scratch space for databases, manifests and stores; removed at exit.
    pub work: PathBuf,
    /// Overrides the job count of figures 1 and 2 (for profiling at other sizes).
    pub jobs: Option<usize>,
}

impl Ctx {
    /// A fresh directory under the scratch space for one figure.
    pub fn dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.work.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Removes every figure's directory: a figure's databases and stores are not kept
    /// after its rows are taken, so the run needs the disk of its largest figure only.
    pub fn clear(&self) -> std::io::Result<()> {
        for entry in std::fs::read_dir(&self.work)? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Jobs for figures 1 and 2: `--jobs`, else `full` or `quick`.
    pub fn jobs(&self, full: usize, quick: usize) -> usize {
        self.jobs.unwrap_or_else(|| self.size(full, quick))
    }

    /// `full` normally, `quick` with `--quick`.
    pub fn size(&self, full: usize, quick: usize) -> usize {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// The verdict of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Measured at full size and at or past its target.
    Ok,
    /// Measured at full size and short of its target.
    Miss,
    /// `--quick`: the figure ran to the end and its checks held; the time is not judged.
    Ran,
    /// A piece the figure needs is missing (the reason is in `measured`).
    NotMeasured,
    /// The figure failed (a check did not hold or something broke).
    Error,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Miss => "MISS",
            Status::Ran => "ran",
            Status::NotMeasured => "-",
            Status::Error => "ERROR",
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub figure: String,
    pub target: String,
    pub measured: String,
    pub status: Status,
    /// The number behind `measured`, in `unit`, when there is one.
    pub value: Option<f64>,
    pub unit: Option<String>,
}

impl Row {
    /// A measured value against its target. `ok` says whether the target was met; with
    /// `quick` the verdict is "ran".
    pub fn measured(
        ctx: &Ctx,
        figure: &str,
        target: &str,
        value: f64,
        unit: &str,
        ok: bool,
    ) -> Row {
        let status = match (ctx.quick, ok) {
            (true, _) => Status::Ran,
            (false, true) => Status::Ok,
            (false, false) => Status::Miss,
        };
        Row {
            figure: figure.to_string(),
            target: target.to_string(),
            measured: format!("{} {unit}", fmt_value(value)),
            status,
            value: Some(value),
            unit: Some(unit.to_string()),
        }
    }

    /// A figure that could not be measured, and why.
    pub fn not_measured(figure: &str, target: &str, why: &str) -> Row {
        Row {
            figure: figure.to_string(),
            target: target.to_string(),
            measured: format!("not measured: {why}"),
            status: Status::NotMeasured,
            value: None,
            unit: None,
        }
    }

    /// A figure that broke or whose check failed.
    pub fn error(figure: &str, target: &str, err: &anyhow::Error) -> Row {
        Row {
            figure: figure.to_string(),
            target: target.to_string(),
            measured: format!("error: {err:#}"),
            status: Status::Error,
            value: None,
            unit: None,
        }
    }
}

/// Numbers as a person reads them: 12345.6 -> "12346", 4.321 -> "4.32", 0.01234 -> "0.0123".
pub fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Milliseconds of a duration, as f64.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `p`th percentile (0..=100) of `samples` (sorted in place), nearest rank.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

/// The table as text: figure, target, measured, ok.
pub fn render_table(rows: &[Row]) -> String {
    let headers = ["figure", "target", "measured", "ok"];
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|r| {
            [
                r.figure.clone(),
                r.target.clone(),
                r.measured.clone(),
                r.status.label().to_string(),
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: [&str; 4]| {
        let mut s = String::new();
        for (i, (c, w)) in cols.iter().zip(widths).enumerate() {
            if i > 0 {
                s.push_str(" | ");
            }
            s.push_str(c);
            if i < 3 {
                s.push_str(&" ".repeat(w.saturating_sub(c.chars().count())));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(headers);
    out.push_str(&line(
        widths.map(|w| "-".repeat(w)).each_ref().map(String::as_str),
    ));
    for row in &cells {
        out.push_str(&line(row.each_ref().map(String::as_str)));
    }
    out
}

/// The JSON document `--json` writes.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub quick: bool,
    pub machine: Machine,
    pub rows: &'a [Row],
}

/// Where the numbers came from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub ram_mib: u64,
    pub kernel: String,
    pub disk: String,
    pub at: String,
    /// /proc/loadavg when the run ended: the machine is shared, so this says how quiet
    /// it was.
    pub load_average: String,
}

impl Machine {
    /// Reads /proc (Linux); fields it cannot read say "unknown".
    pub fn detect(work: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".to_string());
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let ram_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
            .map(|kib| kib / 1024)
            .unwrap_or(0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".to_string());
        Machine {
            cpu,
            cores,
            ram_mib,
            kernel,
            disk: disk_of(work),
            load_average: std::fs::read_to_string("/proc/loadavg")
                .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|_| "unknown".to_string()),
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }
}

/// The filesystem type and device that hold `path`, from /proc/mounts (longest match).
fn disk_of(path: &Path) -> String {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dev, at, fs) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(at)
                .then(|| (at.len(), format!("{fs} on {dev}")))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, s)| s)
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn percentile_uses_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&mut v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&mut v, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&mut [], 50.0), Duration::ZERO);
    }

    #[test]
    fn quick_rows_never_judge_a_time() {
        let ctx = Ctx {
            quick: true,
            work: PathBuf::from("."),
            jobs: None,
        };
        let row = Row::measured(&ctx, "f", ">= 1", 0.5, "x/s", false);
        assert_eq!(row.status, Status::Ran);
        let full = Ctx {
            quick: false,
            ..ctx
        };
        assert_eq!(
            Row::measured(&full, "f", ">= 1", 0.5, "x/s", false).status,
            Status::Miss
        );
        assert_eq!(
            Row::measured(&full, "f", ">= 1", 2.0, "x/s", true).status,
            Status::Ok
        );
    }

    #[test]
    fn table_has_one_line_per_row_and_aligned_columns() {
        let rows = vec![
            Row::not_measured("a", "t", "no server"),
            Row::not_measured("longer figure", "t2", "x"),
        ];
        let table = render_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[2].contains("not measured: no server"));
        let bar = lines[0].find('|').unwrap();
        assert_eq!(lines[2].find('|').unwrap(), bar);
    }
}
