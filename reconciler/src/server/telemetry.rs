//! What `/metrics` serves (OpenMetrics text, through `prometheus-client`): counters and
//! histograms the server keeps as it works (claims and empty claims, completions and
//! failures by model and cause, lease expiries, reconciles by result, claim and upload
//! durations, upload bytes), and gauges read at each scrape (jobs per status, workers per
//! state, the manifest, the listener's and the caps' load). Counter names end in `_total`
//! as before, so scrapers of the hand-written text keep working.

use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use super::limits::Budgets;

/// One label.
pub type Label1 = [(&'static str, String); 1];
/// Two labels.
pub type Label2 = [(&'static str, String); 2];

/// Why a job failed, as the `cause` label of `cis490_job_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCause {
    /// The trainer failed (non-zero exit, bad output): the job failed or is retried.
    Trainer,
    /// The agent handed it back (shutting down, could not fit it): back to pending.
    Released,
    /// Its lease expired with no attempts left (the agent vanished).
    LeaseExpired,
}

impl FailureCause {
    fn as_str(self) -> &'static str {
        match self {
            FailureCause::Trainer => "trainer",
            FailureCause::Released => "released",
            FailureCause::LeaseExpired => "lease_expired",
        }
    }
}

/// The server's counters and histograms.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    claims: Family<Label1, Counter>,
    claims_empty: Counter,
    completions: Family<Label1, Counter>,
    failures: Family<Label2, Counter>,
    lease_expiries: Counter,
    claim_seconds: Histogram,
    upload_seconds: Histogram,
    upload_bytes: Counter,
}

/// What a scrape reads from the queue.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub jobs: std::collections::BTreeMap<String, u64>,
    pub workers: std::collections::BTreeMap<String, u64>,
    pub manifest_generation: u64,
    pub manifest_errors: usize,
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Telemetry {
    /// The server's metrics; `reconciles` (kept by the reconciler) is served with them.
    pub fn new(reconciles: Family<Label1, Counter>) -> Self {
        let mut registry = Registry::default();
        let claims = Family::<Label1, Counter>::default();
        registry.register(
            "cis490_claims",
            "Claims answered with a job, by model.",
            claims.clone(),
        );
        let claims_empty = Counter::default();
        registry.register(
            "cis490_claims_empty",
            "Claims answered 204: nothing this worker may run within its wait.",
            claims_empty.clone(),
        );
        let completions = Family::<Label1, Counter>::default();
        registry.register(
            "cis490_job_completions",
            "Jobs completed, by model.",
            completions.clone(),
        );
        let failures = Family::<Label2, Counter>::default();
        registry.register(
            "cis490_job_failures",
            "Failed attempts by model and cause: trainer (the job failed or is retried), \
             released (handed back by its agent), lease_expired (no attempts left).",
            failures.clone(),
        );
        let lease_expiries = Counter::default();
        registry.register(
            "cis490_lease_expiries",
            "Leases the sweeper expired (the agent stopped heartbeating).",
            lease_expiries.clone(),
        );
        registry.register(
            "cis490_reconciles",
            "Reconciles by result: applied (changed something), unchanged, skipped (a resync \
             of the text last applied), invalid (the manifest), error.",
            reconciles,
        );
        // 0.5 ms to about 4 s.
        let claim_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register_with_unit(
            "cis490_claim_duration",
            "Time one claim took in the queue (each try of a long-poll, not its wait).",
            Unit::Seconds,
            claim_seconds.clone(),
        );
        // 10 ms to about 160 s.
        let upload_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 15));
        registry.register_with_unit(
            "cis490_upload_duration",
            "Time from an upload's headers to its bytes stored and recorded.",
            Unit::Seconds,
            upload_seconds.clone(),
        );
        let upload_bytes = Counter::default();
        registry.register_with_unit(
            "cis490_upload",
            "Bytes of the uploads stored (an upload of bytes already present counts too).",
            Unit::Bytes,
            upload_bytes.clone(),
        );
        Self {
            registry,
            claims,
            claims_empty,
            completions,
            failures,
            lease_expiries,
            claim_seconds,
            upload_seconds,
            upload_bytes,
        }
    }

    pub fn claimed(&self, model: &str) {
        self.claims
            .get_or_create(&[("model", model.to_string())])
            .inc();
    }

    pub fn claim_empty(&self) {
        self.claims_empty.inc();
    }

    pub fn claim_took(&self, took: Duration) {
        self.claim_seconds.observe(took.as_secs_f64());
    }

    pub fn completed(&self, model: &str) {
        self.completions
            .get_or_create(&[("model", model.to_string())])
            .inc();
    }

    pub fn failed(&self, model: &str, cause: FailureCause) {
        self.failures
            .get_or_create(&[
                ("model", model.to_string()),
                ("cause", cause.as_str().to_string()),
            ])
            .inc();
    }

    pub fn leases_expired(&self, n: usize) {
        self.lease_expiries.inc_by(n as u64);
    }

    pub fn uploaded(&self, bytes: u64, took: Duration) {
        self.upload_bytes.inc_by(bytes);
        self.upload_seconds.observe(took.as_secs_f64());
    }

    /// The whole `/metrics` text: the scrape's gauges, then the kept metrics.
    pub fn render(
        &self,
        snapshot: &Snapshot,
        budgets: &Budgets,
    ) -> Result<String, std::fmt::Error> {
        let mut now = Registry::default();
        let jobs = Family::<Label1, Gauge>::default();
        for (status, n) in &snapshot.jobs {
            jobs.get_or_create(&[("status", status.clone())])
                .set(gauge(*n));
        }
        now.register(
            "cis490_jobs",
            "Jobs per status (tombstoned included).",
            jobs,
        );
        let workers = Family::<Label1, Gauge>::default();
        for (state, n) in &snapshot.workers {
            workers
                .get_or_create(&[("state", state.clone())])
                .set(gauge(*n));
        }
        now.register("cis490_workers", "Known workers per node state.", workers);
        now.register(
            "cis490_manifest_generation",
            "Applies that changed something.",
            ConstGauge::new(gauge(snapshot.manifest_generation)),
        );
        now.register(
            "cis490_manifest_errors",
            "Errors of the last reload (0: it applied).",
            ConstGauge::new(gauge(snapshot.manifest_errors as u64)),
        );
        let traffic = &budgets.traffic;
        let (uploads, event_waits, claim_waits) = budgets.in_use();
        now.register(
            "cis490_http_bytes_read",
            "Bytes read from client connections (request heads and bodies).",
            ConstCounter::new(traffic.bytes_read.load(Ordering::Relaxed)),
        );
        now.register(
            "cis490_http_connections_open",
            "Client connections open (max_connections).",
            ConstGauge::new(gauge(
                traffic.connections_open.load(Ordering::Relaxed) as u64
            )),
        );
        now.register(
            "cis490_http_connections_refused",
            "Connections closed at accept because max_connections were open.",
            ConstCounter::new(traffic.connections_refused.load(Ordering::Relaxed)),
        );
        now.register(
            "cis490_uploads_in_flight",
            "Uploads streaming (max_concurrent_uploads).",
            ConstGauge::new(gauge(uploads as u64)),
        );
        now.register(
            "cis490_event_waits",
            "GET /v1/events long-polls waiting (max_event_waits).",
            ConstGauge::new(gauge(event_waits as u64)),
        );
        now.register(
            "cis490_claim_waits",
            "Claim long-polls waiting (max_claim_waits).",
            ConstGauge::new(gauge(claim_waits as u64)),
        );
        let mut out = String::new();
        encode_registry(&mut out, &now)?;
        encode_registry(&mut out, &self.registry)?;
        encode_eof(&mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_histograms_and_gauges_render_with_their_names() {
        let reconciles = Family::<Label1, Counter>::default();
        let t = Telemetry::new(reconciles.clone());
        t.claimed("gbt");
        t.claimed("gbt");
        t.claim_empty();
        t.completed("gbt");
        t.failed("mlp", FailureCause::Trainer);
        t.leases_expired(2);
        t.claim_took(Duration::from_millis(3));
        t.uploaded(1234, Duration::from_millis(40));
        reconciles
            .get_or_create(&[("result", "applied".to_string())])
            .inc();
        let snapshot = Snapshot {
            jobs: [("pending".to_string(), 3)].into(),
            workers: [("Ready".to_string(), 1)].into(),
            manifest_generation: 2,
            manifest_errors: 0,
        };
        let text = t
            .render(&snapshot, &Budgets::new(Default::default()))
            .unwrap();
        for line in [
            "cis490_jobs{status=\"pending\"} 3",
            "cis490_workers{state=\"Ready\"} 1",
            "cis490_manifest_generation 2",
            "cis490_manifest_errors 0",
            "cis490_http_bytes_read_total 0",
            "cis490_http_connections_refused_total 0",
            "cis490_claim_waits 0",
            "cis490_claims_total{model=\"gbt\"} 2",
            "cis490_claims_empty_total 1",
            "cis490_job_completions_total{model=\"gbt\"} 1",
            "cis490_job_failures_total{model=\"mlp\",cause=\"trainer\"} 1",
            "cis490_lease_expiries_total 2",
            "cis490_reconciles_total{result=\"applied\"} 1",
            "cis490_claim_duration_seconds_count 1",
            "cis490_upload_duration_seconds_count 1",
            "cis490_upload_bytes_total 1234",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
