//! `status`: one screen about the fleet: jobs per status, workers Ready, the manifest.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context;
use chrono::{DateTime, Utc};
use cis490_api::{JobStatus, ManifestStatus, NodeState};
use serde::{Deserialize, Serialize};

use super::Ctx;
use crate::cli::{DataFormat, StatusArgs};
use crate::output::{age, print, to_json, to_yaml};

/// What `status -o json|yaml` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub server: String,
    pub server_version: String,
    /// Jobs per status name (every status present, zero when none).
    pub jobs: BTreeMap<String, u64>,
    /// Tombstoned jobs that no longer run, not counted in `jobs`.
    #[serde(default)]
    pub tombstoned: u64,
    pub workers_ready: u64,
    pub workers_total: u64,
    pub manifest: ManifestStatus,
    /// The server speaks TLS.
    #[serde(default)]
    pub tls: bool,
    /// Worker routes require a client certificate.
    #[serde(default)]
    pub client_certs: bool,
    /// The server's own warnings (`GET /v1/health`), e.g. open worker routes.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The server leads the servers of its database (always, when it is alone on it).
    #[serde(default = "leads_by_default")]
    pub leader: bool,
}

fn leads_by_default() -> bool {
    true
}

pub async fn run(ctx: &Ctx, args: &StatusArgs) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let (health, manifest, workers) =
        tokio::try_join!(client.health(), client.manifest(), client.workers())
            .context("reading the fleet's status")?;
    let mut jobs: BTreeMap<String, u64> = JobStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), 0))
        .collect();
    jobs.extend(health.jobs);
    let tombstoned = health.tombstoned;
    let summary = Summary {
        server: ctx.server.clone(),
        server_version: health.version,
        jobs,
        tombstoned,
        workers_ready: workers
            .iter()
            .filter(|w| w.state == NodeState::Ready)
            .count() as u64,
        workers_total: workers.len() as u64,
        manifest,
        tls: health.tls,
        client_certs: health.client_certs,
        warnings: health.warnings,
        leader: health.leader,
    };
    print(&match args.output {
        DataFormat::Text => summary_text(&summary, Utc::now()),
        DataFormat::Json => to_json(&summary)?,
        DataFormat::Yaml => to_yaml(&summary)?,
    })
}

/// The human summary.
pub fn summary_text(s: &Summary, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Server:      {} (version {})",
        s.server, s.server_version
    );
    let total: u64 = s.jobs.values().sum();
    // Held is an operator's exception: shown only when some job is held.
    let counts: Vec<String> = JobStatus::ALL
        .iter()
        .map(|st| (st, s.jobs.get(st.as_str()).copied().unwrap_or(0)))
        .filter(|(st, n)| **st != JobStatus::Held || *n > 0)
        .map(|(st, n)| format!("{n} {st}"))
        .collect();
    let tombstoned = if s.tombstoned > 0 {
        format!(
            " (and {} tombstoned, not counted: cis490ctl get jobs --all)",
            s.tombstoned
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "Jobs:        {total} total: {}{tombstoned}",
        counts.join(", ")
    );
    let _ = writeln!(
        out,
        "Workers:     {}/{} Ready",
        s.workers_ready, s.workers_total
    );
    let transport = match (s.tls, s.client_certs) {
        (true, true) => "TLS, client certificates on worker routes",
        (true, false) => "TLS",
        (false, _) => "plain HTTP",
    };
    let _ = writeln!(out, "Transport:   {transport}");
    // A lone server always leads: the line is only news among several servers.
    if !s.leader {
        let _ = writeln!(
            out,
            "Role:        follower (another server on this database reconciles the manifest and sweeps leases)"
        );
    }
    let m = &s.manifest;
    let applied = match m.last_applied_at {
        Some(t) => format!("applied {} ago", age(t, now)),
        None => "never applied".to_string(),
    };
    let _ = writeln!(
        out,
        "Manifest:    {} (generation {}, {applied})",
        m.path, m.generation
    );
    match m.last_errors.as_slice() {
        [] => {
            let _ = writeln!(out, "Last Error:  <none>");
        }
        errors => {
            let when = m
                .last_error_at
                .map(|t| format!(" ({} ago)", age(t, now)))
                .unwrap_or_default();
            let _ = writeln!(out, "Last Error:{when}");
            for e in errors {
                let at = match (e.line, e.column) {
                    (Some(l), Some(c)) => format!("{}:{l}:{c}", e.path),
                    (Some(l), None) => format!("{}:{l}", e.path),
                    _ => e.path.clone(),
                };
                let _ = writeln!(out, "  {at}: {}", e.message);
            }
        }
    }
    for w in s.warnings.iter().chain(&m.warnings) {
        let _ = writeln!(out, "Warning:     {w}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::samples::now;
    use cis490_api::ManifestError;

    fn summary() -> Summary {
        let mut jobs: BTreeMap<String, u64> = JobStatus::ALL
            .iter()
            .map(|s| (s.as_str().to_string(), 0))
            .collect();
        jobs.insert("pending".into(), 3);
        jobs.insert("completed".into(), 10);
        Summary {
            server: "http://pi:8787".into(),
            server_version: "0.1.0".into(),
            jobs,
            tombstoned: 0,
            workers_ready: 2,
            workers_total: 3,
            manifest: ManifestStatus {
                path: "etc/training_manifest.toml".into(),
                sha256: None,
                generation: 4,
                last_applied_at: Some(now() - chrono::TimeDelta::minutes(3)),
                last_errors: vec![ManifestError {
                    path: "etc/training_manifest.toml".into(),
                    line: Some(12),
                    column: Some(5),
                    message: "unknown hyper key \"lrate\"".into(),
                }],
                last_error_at: Some(now() - chrono::TimeDelta::seconds(30)),
                warnings: vec![],
            },
            tls: false,
            client_certs: false,
            warnings: vec![
                "plain HTTP on 0.0.0.0:8787 (--insecure): tokens cross the network".into(),
                "worker routes are open: no worker token configured".into(),
            ],
            leader: true,
        }
    }

    #[test]
    fn a_follower_says_so_and_a_leader_says_nothing() {
        assert!(!summary_text(&summary(), now()).contains("Role:"));
        let follower = Summary {
            leader: false,
            ..summary()
        };
        let text = summary_text(&follower, now());
        assert!(text.contains("Role:        follower"), "{text}");
    }

    #[test]
    fn summary_shows_counts_workers_generation_and_last_error() {
        let text = summary_text(&summary(), now());
        assert!(text.contains("Jobs:        13 total: 3 pending, 0 claimed, 0 running, 10 completed, 0 failed, 0 cancelled"), "{text}");
        assert!(!text.contains("tombstoned"), "{text}");
        assert!(text.contains("Workers:     2/3 Ready"), "{text}");
        assert!(text.contains("Transport:   plain HTTP"), "{text}");
        let with_tombstones = Summary {
            tombstoned: 4,
            ..summary()
        };
        let mut with_held = summary();
        with_held.jobs.insert("held".into(), 2);
        let text = summary_text(&with_held, now());
        assert!(
            text.contains("15 total: 3 pending, 2 held, 0 claimed"),
            "{text}"
        );
        let text = summary_text(&with_tombstones, now());
        assert!(
            text.contains("10 completed, 0 failed, 0 cancelled (and 4 tombstoned, not counted: cis490ctl get jobs --all)"),
            "{text}"
        );
        assert!(
            text.contains("Warning:     plain HTTP on 0.0.0.0:8787 (--insecure)"),
            "{text}"
        );
        assert!(text.contains("generation 4, applied 3m ago"), "{text}");
        assert!(text.contains("Last Error: (30s ago)"), "{text}");
        assert!(
            text.contains("  etc/training_manifest.toml:12:5: unknown hyper key \"lrate\""),
            "{text}"
        );
        assert!(
            text.contains("Warning:     worker routes are open: no worker token configured"),
            "{text}"
        );
    }

    #[test]
    fn summary_round_trips_as_json_and_yaml() {
        let s = summary();
        let back: Summary = serde_json::from_str(&to_json(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let back: Summary = serde_yaml_ng::from_str(&to_yaml(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
