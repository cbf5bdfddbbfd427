//! `get events [--job ID] [--worker NAME] [-w]`: the event log, filtered on the server,
//! like `kubectl get events`.

use anyhow::Context;
use chrono::{DateTime, Utc};
use cis490_api::client::EventsFilter;
use cis490_api::{Event, WorkerName};

use super::{follow_filtered_events, Ctx, EVENTS_WAIT};
use crate::cli::{GetEventsArgs, OutputFormat};
use crate::output::{age, or_none, print, to_json, to_yaml, Cell, Column, Table, Terminal};
use crate::resolve::parse_prefix;

pub async fn run(ctx: &Ctx, args: &GetEventsArgs) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let filter = EventsFilter {
        job: args.job.as_deref().map(parse_prefix).transpose()?,
        worker: args.worker.as_deref().map(WorkerName::parse).transpose()?,
    };
    // The whole (filtered) log, page by page, then, with -w, what follows.
    let mut since = 0;
    let mut events = Vec::new();
    loop {
        let page = client
            .events_filtered(since, std::time::Duration::ZERO, &filter)
            .await
            .context("reading the event log")?;
        // A page may hold no events while `next` moves on (a worker filter looks at one
        // window of the log per page): the log is read through when `next` stops.
        let done = page.next <= since;
        events.extend(page.events);
        since = page.next.max(since);
        if done {
            break;
        }
    }
    let wide = args.output == OutputFormat::Wide;
    let table = events_table(&events, wide, Utc::now());
    let widths = table.widths(ctx.term.width);
    if events.is_empty() && is_table(args.output) && !args.watch {
        eprintln!("No events found.");
        return Ok(());
    }
    if !(events.is_empty() && is_table(args.output)) {
        print(&render(&events, args.output, &table, ctx.term)?)?;
    }
    if !args.watch {
        return Ok(());
    }
    let mut header_printed = !events.is_empty();
    loop {
        let page = follow_filtered_events(&client, since, EVENTS_WAIT, &filter).await?;
        since = page.next.max(since);
        if page.events.is_empty() {
            continue;
        }
        let text = match args.output {
            OutputFormat::Table | OutputFormat::Wide => {
                let rows = events_table(&page.events, wide, Utc::now());
                if header_printed {
                    let fitted: Vec<usize> = rows
                        .widths(ctx.term.width)
                        .iter()
                        .zip(&widths)
                        .map(|(new, old)| *new.max(old))
                        .collect();
                    rows.render_rows(&fitted, ctx.term)
                } else {
                    header_printed = true;
                    rows.render(ctx.term)
                }
            }
            other => render(&page.events, other, &table, ctx.term)?,
        };
        print(&text)?;
    }
}

fn is_table(format: OutputFormat) -> bool {
    matches!(format, OutputFormat::Table | OutputFormat::Wide)
}

fn render(
    events: &[Event],
    format: OutputFormat,
    table: &Table,
    term: Terminal,
) -> anyhow::Result<String> {
    Ok(match format {
        OutputFormat::Table | OutputFormat::Wide => table.render(term),
        OutputFormat::Json => to_json(events)?,
        OutputFormat::Yaml => to_yaml(events)?,
        OutputFormat::Name => events
            .iter()
            .map(|e| format!("event/{}\n", e.seq))
            .collect(),
    })
}

/// AGE, KIND, JOB, WORKER, MESSAGE (its first line); wide puts SEQ and the time first.
pub fn events_table(events: &[Event], wide: bool, now: DateTime<Utc>) -> Table {
    let mut columns = Vec::new();
    if wide {
        columns.push(Column::fixed("SEQ"));
        columns.push(Column::fixed("TIME"));
    }
    columns.extend([
        Column::fixed("AGE"),
        Column::fixed("KIND"),
        Column::fixed("JOB"),
        Column::flex("WORKER"),
        Column::flex("MESSAGE"),
    ]);
    let mut table = Table::new(columns);
    for e in events {
        let mut row = Vec::new();
        if wide {
            row.push(Cell::from(e.seq.to_string()));
            row.push(Cell::from(
                e.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ));
        }
        row.extend([
            Cell::from(age(e.at, now)),
            Cell::from(e.kind.as_str()),
            Cell::from(or_none(e.job_id.as_ref().map(|j| j.short().to_string()))),
            Cell::from(or_none(e.worker.as_ref())),
            Cell::from(e.message.lines().next().unwrap_or_default()),
        ]);
        table.push(row);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, job: Option<&str>, worker: Option<&str>, message: &str) -> Event {
        Event {
            seq,
            at: Utc::now(),
            job_id: job.map(|j| cis490_api::JobId::parse(&j.repeat(64)).unwrap()),
            worker: worker.map(|w| WorkerName::parse(w).unwrap()),
            kind: "Failed".into(),
            message: message.into(),
        }
    }

    #[test]
    fn rows_show_the_first_line_and_none_for_absent_objects() {
        let events = [
            event(
                7,
                Some("a"),
                Some("gpu-box"),
                "attempt 1 failed\n--- log tail ---\nboom",
            ),
            event(8, None, Some("gpu-box"), "cordoned"),
        ];
        let text = events_table(&events, false, Utc::now()).render(Terminal::plain());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["AGE", "KIND", "JOB", "WORKER", "MESSAGE"]
        );
        assert!(lines[1].contains("aaaaaaaaaaaa"), "{text}");
        assert!(lines[1].ends_with("attempt 1 failed"), "{text}");
        assert!(!text.contains("boom"), "{text}");
        assert!(lines[2].contains("<none>"), "{text}");
        let wide = events_table(&events, true, Utc::now()).render(Terminal::plain());
        assert!(wide.starts_with("SEQ"), "{wide}");
        assert!(wide.lines().nth(1).unwrap().starts_with('7'), "{wide}");
    }
}
