//! Keeping a job's lease alive after its trainer is gone.
//!
//! Packing, uploading and completing a job (retries included) can take longer than its
//! lease (`stale_after_s`): a large output, a slow link, a server outage. Without
//! heartbeats in that time the sweeper would take the job back, count an attempt and run it
//! again elsewhere, and the finished result would be refused. So from the moment the
//! trainer exits until the job is completed, failed or released, a [`LeaseKeeper`]
//! heartbeats the lease in the background; dropping it stops the heartbeats.

use std::time::Duration;

use cis490_api::{Client, HeartbeatRequest, JobId, Lease, WorkerName};
use tokio::time::{Instant, MissedTickBehavior};

use crate::log_ship::LogShipper;

/// Heartbeats one lease until dropped (or until the server says the lease is gone).
#[derive(Debug)]
pub struct LeaseKeeper {
    task: tokio::task::JoinHandle<()>,
}

/// What the keeper sends, and how often.
#[derive(Debug, Clone)]
pub struct KeepLease {
    pub client: Client,
    pub worker: WorkerName,
    pub job: JobId,
    pub lease: Lease,
    pub period: Duration,
    /// Longest a heartbeat may take.
    pub call_timeout: Duration,
    /// The trainer's log, whose unsent part rides on each heartbeat (so the last lines a
    /// trainer wrote are on the server even before the job completes).
    pub log: Option<LogShipper>,
}

impl LeaseKeeper {
    /// Starts heartbeating one period from now.
    pub fn start(keep: KeepLease) -> LeaseKeeper {
        LeaseKeeper {
            task: tokio::spawn(keep_alive(keep)),
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep_alive(keep: KeepLease) {
    let mut tick = tokio::time::interval_at(Instant::now() + keep.period, keep.period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let req = HeartbeatRequest {
            worker: keep.worker.clone(),
            lease: keep.lease.clone(),
            log_tail: None,
            log: keep.log.as_ref().and_then(|l| l.next_chunk(true)),
            progress: None,
        };
        match tokio::time::timeout(keep.call_timeout, keep.client.heartbeat(&keep.job, &req)).await
        {
            Ok(Ok(answer)) => {
                if let Some(log) = &keep.log {
                    log.ack(answer.log_offset);
                }
            }
            // The job moved on: the stage in progress learns it from its own call.
            Ok(Err(e)) if e.is_lease_lost() || e.status().is_some_and(|s| s.as_u16() == 404) => {
                tracing::debug!(job = %keep.job.short(), "lease gone; no more heartbeats: {e}");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(job = %keep.job.short(), "heartbeat while finishing failed ({e}); trying again next period");
            }
            Err(_) => {
                keep.client.gave_up_waiting();
                tracing::warn!(job = %keep.job.short(), "heartbeat while finishing timed out; trying again next period");
            }
        }
    }
}
