//! `get workers -w`: the listing, then a line whenever a worker changes, like
//! `kubectl get nodes -w`. A worker going NotReady writes no event (it is only time
//! passing), so the listing is read again at least every few seconds, events or not.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use cis490_api::WorkerView;

use super::get::{render_workers, workers_table};
use super::{events_head, follow_events, Ctx};
use crate::cli::OutputFormat;
use crate::output::print;

/// The longest a NotReady (or Ready again) transition waits to be printed.
const RELIST_EVERY: Duration = Duration::from_secs(5);

pub async fn run(ctx: &Ctx, format: OutputFormat) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let mut since = events_head(&client).await?;
    let list = client.workers().await.context("listing workers")?;
    let wide = format == OutputFormat::Wide;
    let widths = workers_table(&list, wide, Utc::now()).widths(ctx.term.width);
    print(&render_workers(&list, format, ctx.term)?)?;
    let mut known: BTreeMap<String, WorkerView> =
        list.into_iter().map(|w| (w.name.to_string(), w)).collect();
    loop {
        let page = follow_events(&client, since, RELIST_EVERY).await?;
        since = page.next.max(since);
        let fresh = client.workers().await.context("listing workers")?;
        let changed = changed_workers(&mut known, fresh);
        if changed.is_empty() {
            continue;
        }
        let text = match format {
            OutputFormat::Table | OutputFormat::Wide => {
                let rows = workers_table(&changed, wide, Utc::now());
                let fitted: Vec<usize> = rows
                    .widths(ctx.term.width)
                    .iter()
                    .zip(&widths)
                    .map(|(new, old)| *new.max(old))
                    .collect();
                rows.render_rows(&fitted, ctx.term)
            }
            other => render_workers(&changed, other, ctx.term)?,
        };
        print(&text)?;
    }
}

/// Workers that are new or whose state, cordon, drain, running jobs, host problem or agent
/// version changed (not last_seen alone, which moves on every heartbeat); updates `known`.
pub fn changed_workers(
    known: &mut BTreeMap<String, WorkerView>,
    fresh: Vec<WorkerView>,
) -> Vec<WorkerView> {
    let mut changed = Vec::new();
    for worker in fresh {
        let key = worker.name.to_string();
        let differs = known.get(&key).is_none_or(|old| {
            old.state != worker.state
                || old.cordoned != worker.cordoned
                || old.draining != worker.draining
                || old.running_jobs != worker.running_jobs
                || old.host_problem != worker.host_problem
                || old.capability.agent_version != worker.capability.agent_version
        });
        if differs {
            changed.push(worker.clone());
        }
        known.insert(key, worker);
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use cis490_api::{Capability, NodeState, WorkerName};

    fn worker(name: &str, state: NodeState) -> WorkerView {
        WorkerView {
            labels: Default::default(),
            name: WorkerName::parse(name).unwrap(),
            state,
            ready: state == NodeState::Ready,
            cordoned: false,
            draining: false,
            capability: Capability::default(),
            first_seen: Utc::now(),
            last_seen: Utc::now(),
            running_jobs: Vec::new(),
            host_problem: None,
        }
    }

    #[test]
    fn only_real_changes_are_printed() {
        let mut known = BTreeMap::new();
        let first = changed_workers(&mut known, vec![worker("a", NodeState::Ready)]);
        assert_eq!(first.len(), 1, "a new worker is a change");
        let mut later = worker("a", NodeState::Ready);
        later.last_seen = Utc::now() + chrono::TimeDelta::seconds(10);
        assert!(
            changed_workers(&mut known, vec![later]).is_empty(),
            "a heartbeat alone is not a change"
        );
        let gone = changed_workers(&mut known, vec![worker("a", NodeState::NotReady)]);
        assert_eq!(gone[0].state, NodeState::NotReady);
        let mut cordoned = worker("a", NodeState::NotReady);
        cordoned.cordoned = true;
        assert_eq!(changed_workers(&mut known, vec![cordoned]).len(), 1);
    }
}
