//! Rendering: kubectl-like tables that fit the terminal, colour only on a TTY, and the
//! structured formats (JSON, YAML, names).

use std::io::IsTerminal;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;

use cis490_api::JobStatus;

/// Spaces between columns, as kubectl prints them.
const GAP: usize = 3;
/// The narrowest a shrinkable column becomes before the table gives up fitting.
const MIN_SHRUNK: usize = 6;
/// Marks a cell cut to fit the terminal.
const ELLIPSIS: char = '…';

/// Where output goes and what it may use.
#[derive(Debug, Clone, Copy)]
pub struct Terminal {
    /// Columns available; `None` when stdout is not a terminal (never cut cells then).
    pub width: Option<usize>,
    /// ANSI colour allowed (stdout is a terminal and NO_COLOR is unset).
    pub color: bool,
}

impl Terminal {
    /// Looks at the real stdout.
    pub fn detect() -> Self {
        let is_tty = std::io::stdout().is_terminal();
        let width = if is_tty {
            console::Term::stdout()
                .size_checked()
                .map(|(_rows, cols)| usize::from(cols))
                .or_else(|| std::env::var("COLUMNS").ok()?.parse().ok())
        } else {
            None
        };
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self {
            width,
            color: is_tty && !no_color,
        }
    }

    /// No terminal: full cells, no colour (pipes, files, tests).
    #[cfg(test)]
    pub fn plain() -> Self {
        Self {
            width: None,
            color: false,
        }
    }
}

/// How a cell is coloured on a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paint {
    None,
    Green,
    Red,
    Yellow,
    Cyan,
    Dim,
}

impl Paint {
    fn code(self) -> Option<&'static str> {
        match self {
            Paint::None => None,
            Paint::Green => Some("32"),
            Paint::Red => Some("31"),
            Paint::Yellow => Some("33"),
            Paint::Cyan => Some("36"),
            Paint::Dim => Some("2"),
        }
    }

    /// The colour of a job status.
    pub fn for_status(status: JobStatus) -> Self {
        match status {
            JobStatus::Pending => Paint::Yellow,
            JobStatus::Claimed | JobStatus::Running => Paint::Cyan,
            JobStatus::Completed => Paint::Green,
            JobStatus::Failed => Paint::Red,
            JobStatus::Held | JobStatus::Cancelled => Paint::Dim,
        }
    }

    /// The colour of a node state name.
    pub fn for_node_state(state: &str) -> Self {
        match state {
            "Ready" => Paint::Green,
            "NotReady" => Paint::Red,
            _ => Paint::Yellow,
        }
    }
}

/// One column: its header, and whether it may be cut to fit (IDs may not).
#[derive(Debug, Clone)]
pub struct Column {
    pub header: std::borrow::Cow<'static, str>,
    pub shrinkable: bool,
}

impl Column {
    pub fn fixed(header: &'static str) -> Self {
        Self {
            header: header.into(),
            shrinkable: false,
        }
    }
    pub fn flex(header: &'static str) -> Self {
        Self {
            header: header.into(),
            shrinkable: true,
        }
    }
    /// A column whose header is made at run time (a metric or hyper key).
    pub fn named(header: String, shrinkable: bool) -> Self {
        Self {
            header: header.into(),
            shrinkable,
        }
    }
}

/// One table cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub text: String,
    pub paint: Paint,
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Self {
            text,
            paint: Paint::None,
        }
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Self::from(text.to_string())
    }
}

impl Cell {
    pub fn painted(text: impl Into<String>, paint: Paint) -> Self {
        Self {
            text: text.into(),
            paint,
        }
    }
}

/// A kubectl-style table: upper-case headers, left-aligned columns three spaces apart.
#[derive(Debug, Clone)]
pub struct Table {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Cell>>,
}

fn width_of(s: &str) -> usize {
    s.chars().count()
}

/// Cuts `s` to `width` characters, ending with an ellipsis when it was cut.
fn cut(s: &str, width: usize) -> String {
    if width_of(s) <= width {
        return s.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(width - 1).collect();
    out.push(ELLIPSIS);
    out
}

impl Table {
    pub fn new(columns: Vec<Column>) -> Self {
        Self {
            columns,
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<Cell>) {
        self.rows.push(row);
    }

    /// Column widths: the widest cell, then shrunk (widest shrinkable column first) until
    /// the table fits `max_width`, never below a column's header or `MIN_SHRUNK`. When even
    /// that cannot fit, nothing is cut.
    pub fn widths(&self, max_width: Option<usize>) -> Vec<usize> {
        let mut widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, col)| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|c| width_of(&c.text))
                    .chain(std::iter::once(width_of(&col.header)))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let Some(max) = max_width else {
            return widths;
        };
        let natural = widths.clone();
        let floor: Vec<usize> = self
            .columns
            .iter()
            .zip(&widths)
            .map(|(col, &w)| {
                if col.shrinkable {
                    w.min(width_of(&col.header).max(MIN_SHRUNK))
                } else {
                    w
                }
            })
            .collect();
        let total = |ws: &[usize]| ws.iter().sum::<usize>() + GAP * ws.len().saturating_sub(1);
        while total(&widths) > max {
            let widest = widths
                .iter()
                .enumerate()
                .filter(|(i, &w)| w > floor[*i])
                .max_by_key(|(_, &w)| w)
                .map(|(i, _)| i);
            match widest {
                Some(i) => widths[i] -= 1,
                // Cutting cannot make it fit: print whole cells and let lines wrap, as
                // kubectl does, rather than cut for nothing.
                None => return natural,
            }
        }
        widths
    }

    /// The table as text, one line per row, each ending in a newline.
    pub fn render(&self, term: Terminal) -> String {
        let widths = self.widths(term.width);
        let mut out = String::new();
        let headers: Vec<Cell> = self
            .columns
            .iter()
            .map(|c| Cell::from(c.header.as_ref()))
            .collect();
        for row in std::iter::once(&headers).chain(self.rows.iter()) {
            out.push_str(&render_row(row, &widths, term.color));
        }
        out
    }

    /// Only the data rows (for `-w`, which prints changes under the first listing).
    pub fn render_rows(&self, widths: &[usize], term: Terminal) -> String {
        self.rows
            .iter()
            .map(|r| render_row(r, widths, term.color))
            .collect()
    }
}

fn render_row(row: &[Cell], widths: &[usize], color: bool) -> String {
    let mut line = String::new();
    let last = widths.len().saturating_sub(1);
    for (i, width) in widths.iter().enumerate() {
        let empty = Cell::from("");
        let cell = row.get(i).unwrap_or(&empty);
        let text = cut(&cell.text, *width);
        let pad = width.saturating_sub(width_of(&text));
        match cell.paint.code().filter(|_| color) {
            Some(code) => line.push_str(&format!("\x1b[{code}m{text}\x1b[0m")),
            None => line.push_str(&text),
        }
        if i != last {
            line.push_str(&" ".repeat(pad + GAP));
        }
    }
    let trimmed = line.trim_end().len();
    line.truncate(trimmed);
    line.push('\n');
    line
}

pub use cis490_api::human::human_duration;

/// How long ago `t` was, kubectl style.
pub fn age(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    human_duration(now - t)
}

/// Sizes the way `ls -h` does, with binary units: 512B, 1.5Ki, 20Mi, 3.2Gi.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["Ki", "Mi", "Gi", "Ti", "Pi"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value < 10.0 {
        format!("{value:.1}{}", UNITS[unit])
    } else {
        format!("{value:.0}{}", UNITS[unit])
    }
}

/// MiB as a GiB figure for the workers table: 24Gi, 7.8Gi.
pub fn mib_as_gib(mib: u64) -> String {
    if mib == 0 {
        return "0".to_string();
    }
    let gib = mib as f64 / 1024.0;
    if gib < 10.0 && gib.fract() >= 0.05 {
        format!("{gib:.1}Gi")
    } else {
        format!("{gib:.0}Gi")
    }
}

/// `<none>`, like kubectl, for an absent value.
pub fn or_none(value: Option<impl ToString>) -> String {
    value
        .map(|v| v.to_string())
        .unwrap_or_else(|| "<none>".to_string())
}

/// Pretty JSON with a trailing newline.
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<String> {
    let mut text = serde_json::to_string_pretty(value).context("encoding JSON")?;
    text.push('\n');
    Ok(text)
}

/// YAML (serde_yaml_ng ends it with a newline).
pub fn to_yaml<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<String> {
    serde_yaml_ng::to_string(value).context("encoding YAML")
}

/// Writes to stdout; a closed pipe (`| head`) ends quietly rather than with an error.
pub fn print(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(e).context("writing to stdout"),
    }
}

#[cfg(test)]
pub mod samples {
    //! Sample objects for the renderers' tests.
    use std::collections::BTreeMap;

    use chrono::{TimeZone, Utc};
    use cis490_api::*;

    pub fn id(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    pub fn now() -> chrono::DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap()
    }

    pub fn job(idc: char, status: JobStatus) -> JobView {
        let mut hyper = Hyper::new();
        hyper.insert("lr".into(), serde_json::json!(0.1));
        hyper.insert("depth".into(), serde_json::json!(6));
        let mut labels = BTreeMap::new();
        labels.insert("team".to_string(), "vision".to_string());
        JobView {
            id: JobId::parse(&id(idc)).unwrap(),
            model: "gbt".into(),
            mode: "realistic".into(),
            hyper,
            split_recipe: Some("kfold5".into()),
            train_hosts: vec!["lab-a".into()],
            seed: 7,
            constraints: Constraints {
                require_cuda: true,
                prefer_cuda: false,
                min_vram_gib: 8.0,
                min_ram_gib: 16.5,
                allowed_hosts: vec!["gpu-box".into()],
                ..Constraints::default()
            },
            priority: 2,
            labels,
            timeout_s: None,
            env: BTreeMap::new(),
            status,
            worker: status
                .is_leased()
                .then(|| WorkerName::parse("gpu-box").unwrap()),
            attempts: 1,
            max_attempts: 3,
            artifact_id: (status == JobStatus::Completed)
                .then(|| ArtifactId::parse(&id('e')).unwrap()),
            error: (status == JobStatus::Failed).then(|| JobError {
                reason: "trainer exited with status 3".into(),
                exit_code: Some(3),
                log_tail: Some("Traceback...\nValueError: bad\n".into()),
            }),
            tombstoned: false,
            created_at: now() - chrono::TimeDelta::minutes(5),
            updated_at: now() - chrono::TimeDelta::seconds(30),
            started_at: status
                .is_leased()
                .then(|| now() - chrono::TimeDelta::seconds(90)),
            finished_at: None,
            lease_expires_at: status
                .is_leased()
                .then(|| now() + chrono::TimeDelta::seconds(60)),
            log_tail: None,
            events: vec![Event {
                seq: 1,
                at: now() - chrono::TimeDelta::minutes(5),
                job_id: Some(JobId::parse(&id(idc)).unwrap()),
                worker: None,
                kind: "Created".into(),
                message: "created by manifest generation 1".into(),
            }],
            progress: None,
            metrics: None,
        }
    }

    pub fn worker() -> WorkerView {
        WorkerView {
            name: WorkerName::parse("gpu-box").unwrap(),
            state: NodeState::Ready,
            ready: true,
            cordoned: false,
            draining: false,
            capability: Capability {
                hostname: "gpu-box".into(),
                os: "linux".into(),
                arch: "x86_64".into(),
                cores: 16,
                ram_total_mib: 64 * 1024,
                ram_available_mib: 60 * 1024,
                ram_allocatable_mib: 60 * 1024,
                gpus: vec![Gpu {
                    index: 0,
                    name: "RTX 4090".into(),
                    uuid: None,
                    vram_total_mib: 24 * 1024,
                    vram_free_mib: 24 * 1024,
                    vram_allocatable_mib: 24 * 1024,
                    vram_allocated_mib: 0,
                }],
                cuda: true,
                cuda_version: Some("12.4".into()),
                agent_version: "0.1.0".into(),
                max_concurrent: 1,
                ..Capability::default()
            },
            first_seen: now() - chrono::TimeDelta::hours(3),
            last_seen: now() - chrono::TimeDelta::seconds(4),
            running_jobs: vec![JobId::parse(&id('a')).unwrap()],
            host_problem: None,
            labels: [("gpu".to_string(), "rtx-4090".to_string())].into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn sample_table() -> Table {
        let mut t = Table::new(vec![
            Column::fixed("ID"),
            Column::flex("MODEL"),
            Column::fixed("STATUS"),
        ]);
        t.push(vec![
            "0123456789ab".into(),
            "a-very-long-model-name-indeed".into(),
            Cell::painted("running", Paint::Cyan),
        ]);
        t.push(vec!["ba9876543210".into(), "gbt".into(), "pending".into()]);
        t
    }

    #[test]
    fn table_aligns_columns_three_spaces_apart() {
        let text = sample_table().render(Terminal::plain());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "ID             MODEL                           STATUS"
        );
        assert_eq!(
            lines[1],
            "0123456789ab   a-very-long-model-name-indeed   running"
        );
        assert_eq!(
            lines[2],
            "ba9876543210   gbt                             pending"
        );
    }

    #[test]
    fn table_shrinks_flexible_columns_to_fit_and_keeps_ids_whole() {
        let term = Terminal {
            width: Some(40),
            color: false,
        };
        let text = sample_table().render(term);
        for line in text.lines() {
            assert!(line.chars().count() <= 40, "{line:?} is wider than 40");
        }
        assert!(text.contains("0123456789ab"), "{text}");
        assert!(text.contains('…'), "{text}");
        assert!(text.contains("a-very-long"), "{text}");
    }

    #[test]
    fn table_that_cannot_fit_is_not_cut() {
        let natural = sample_table().widths(None);
        assert_eq!(natural, vec![12, 29, 7]);
        assert_eq!(sample_table().widths(Some(5)), natural);
        // 12 + 3 + 6 + 3 + 7 = 31 is the narrowest it gets.
        assert_eq!(sample_table().widths(Some(30)), natural);
        assert_eq!(sample_table().widths(Some(31)), vec![12, 6, 7]);
    }

    #[test]
    fn colour_only_when_asked_and_padding_ignores_escapes() {
        let plain = sample_table().render(Terminal::plain());
        assert!(!plain.contains('\x1b'));
        let coloured = sample_table().render(Terminal {
            width: None,
            color: true,
        });
        assert!(coloured.contains("\x1b[36mrunning\x1b[0m"), "{coloured}");
        let stripped = coloured.replace("\x1b[36m", "").replace("\x1b[0m", "");
        assert_eq!(stripped, plain);
    }

    #[test]
    fn human_durations_match_kubectl() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (5, "5s"),
            (119, "119s"),
            (180, "3m"),
            (200, "3m20s"),
            (45 * 60, "45m"),
            (2 * 3600, "120m"),
            (3 * 3600, "3h"),
            (2 * 3600 + 30 * 60 + 3 * 3600, "5h30m"),
            (20 * 3600, "20h"),
            (4 * 86_400, "4d"),
            (4 * 86_400 + 6 * 3600, "4d6h"),
            (30 * 86_400, "30d"),
            (2 * 365 * 86_400 + 40 * 86_400, "2y40d"),
            (9 * 365 * 86_400, "9y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(TimeDelta::seconds(secs)), want, "{secs}s");
        }
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536), "1.5Ki");
        assert_eq!(human_bytes(20 * 1024 * 1024), "20Mi");
        assert_eq!(mib_as_gib(24 * 1024), "24Gi");
        assert_eq!(mib_as_gib(8000), "7.8Gi");
        assert_eq!(mib_as_gib(0), "0");
    }

    #[test]
    fn cut_marks_truncation() {
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(cut("abc", 4), "abc");
    }
}
