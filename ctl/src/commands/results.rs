//! `results`: the leaderboard of completed jobs. Columns are the hyper keys that vary and
//! the metrics; `--group-by` aggregates over seeds (mean, std, n); `-o csv` loads straight
//! into pandas.

use anyhow::Context;
use cis490_api::{Client, ResultRow, ResultsQuery, MAX_PAGE_LIMIT};

use super::Ctx;
use crate::cli::{ResultsArgs, ResultsFormat};
use crate::output::{print, to_json, to_yaml, Cell, Column, Table};
use cis490_api::leaderboard::{
    csv_line, default_columns, group, parse_sort, sort_groups, Group, Key, Summary,
};

/// `results [MODEL]`
pub async fn run(ctx: &Ctx, args: &ResultsArgs) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let by: Vec<Key> = args
        .group_by
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.trim().is_empty())
        .map(Key::parse)
        .collect();
    let query = ResultsQuery {
        model: args.model.clone(),
        mode: args.mode.clone(),
        label: args.selector.clone(),
        sort: args.sort.clone(),
        attempts: args.attempts,
        limit: None,
        after: None,
    };
    // Grouping needs every row; a plain leaderboard only its top.
    let top = if by.is_empty() {
        args.top.map(|n| n as usize)
    } else {
        None
    };
    let rows = fetch(&client, query, top).await?;
    if rows.is_empty() && matches!(args.output, ResultsFormat::Table | ResultsFormat::Wide) {
        eprintln!("No results found.");
        return Ok(());
    }
    let sort = args.sort.as_deref().map(parse_sort);
    let columns: Option<Vec<Key>> = args.columns.as_ref().map(|c| {
        c.iter()
            .flat_map(|s| s.split(','))
            .filter(|s| !s.trim().is_empty())
            .map(Key::parse)
            .collect()
    });
    let text = if by.is_empty() {
        let columns = columns.unwrap_or_else(|| {
            default_columns(
                &rows,
                sort.as_ref().map(|(k, _)| k),
                args.output == ResultsFormat::Wide,
            )
        });
        render_rows(&rows, &columns, args.output, ctx)?
    } else {
        let metrics: Option<Vec<String>> = columns.map(|cols| {
            cols.into_iter()
                .filter_map(|k| match k {
                    Key::Metric(m) => Some(m),
                    _ => None,
                })
                .collect()
        });
        let mut groups = group(&rows, &by, metrics.as_deref());
        if let Some((key, descending)) = &sort {
            sort_groups(&mut groups, &by, key, *descending);
        }
        if let Some(n) = args.top {
            groups.truncate(n as usize);
        }
        render_groups(&groups, &by, args.output, ctx)?
    };
    print(&text)
}

/// Pages through the results, stopping once `top` rows are in.
async fn fetch(
    client: &Client,
    mut query: ResultsQuery,
    top: Option<usize>,
) -> anyhow::Result<Vec<ResultRow>> {
    let mut rows = Vec::new();
    loop {
        let want = top.map_or(MAX_PAGE_LIMIT as usize, |t| t - rows.len());
        query.limit = Some(want.clamp(1, MAX_PAGE_LIMIT as usize) as u32);
        let page = client
            .results_page(&query)
            .await
            .context("listing results")?;
        rows.extend(page.items);
        if top.is_some_and(|t| rows.len() >= t) {
            rows.truncate(top.unwrap_or(usize::MAX));
            return Ok(rows);
        }
        match page.next {
            Some(next) => query.after = Some(next),
            None => return Ok(rows),
        }
    }
}

fn render_rows(
    rows: &[ResultRow],
    columns: &[Key],
    format: ResultsFormat,
    ctx: &Ctx,
) -> anyhow::Result<String> {
    Ok(match format {
        ResultsFormat::Table | ResultsFormat::Wide => {
            let mut table = Table::new(
                columns
                    .iter()
                    .map(|k| Column::named(k.header(true), !matches!(k, Key::Id)))
                    .collect(),
            );
            for row in rows {
                table.push(
                    columns
                        .iter()
                        .map(|k| Cell::from(k.value(row).table_text(k)))
                        .collect(),
                );
            }
            table.render(ctx.term)
        }
        ResultsFormat::Csv => {
            let mut out = csv_line(columns.iter().map(|k| k.header(false)));
            for row in rows {
                out.push_str(&csv_line(columns.iter().map(|k| k.value(row).raw_text())));
            }
            out
        }
        ResultsFormat::Json => to_json(rows)?,
        ResultsFormat::Yaml => to_yaml(rows)?,
    })
}

/// The metrics any group summarises, sorted.
fn group_metrics(groups: &[Group]) -> Vec<String> {
    let mut names: Vec<String> = groups
        .iter()
        .flat_map(|g| g.metrics.keys().cloned())
        .collect();
    names.sort();
    names.dedup();
    names
}

fn render_groups(
    groups: &[Group],
    by: &[Key],
    format: ResultsFormat,
    ctx: &Ctx,
) -> anyhow::Result<String> {
    let metrics = group_metrics(groups);
    Ok(match format {
        ResultsFormat::Table | ResultsFormat::Wide => {
            let mut columns: Vec<Column> = by
                .iter()
                .map(|k| Column::named(k.header(true), true))
                .collect();
            columns.push(Column::fixed("N"));
            columns.extend(metrics.iter().map(|m| Column::named(m.clone(), true)));
            let mut table = Table::new(columns);
            for g in groups {
                let mut row: Vec<Cell> = by
                    .iter()
                    .zip(&g.values)
                    .map(|(k, v)| Cell::from(v.table_text(k)))
                    .collect();
                row.push(Cell::from(g.n.to_string()));
                row.extend(metrics.iter().map(|m| {
                    Cell::from(
                        g.metrics
                            .get(m)
                            .map_or_else(|| "<none>".to_string(), Summary::table_text),
                    )
                }));
                table.push(row);
            }
            table.render(ctx.term)
        }
        ResultsFormat::Csv => {
            let mut header: Vec<String> = by.iter().map(|k| k.header(false)).collect();
            header.push("n".into());
            for m in &metrics {
                header.extend([format!("{m}_mean"), format!("{m}_std"), format!("{m}_n")]);
            }
            let mut out = csv_line(header);
            for g in groups {
                let mut fields: Vec<String> = g.values.iter().map(|v| v.raw_text()).collect();
                fields.push(g.n.to_string());
                for m in &metrics {
                    match g.metrics.get(m) {
                        Some(s) => fields.extend([
                            s.mean.to_string(),
                            s.std.map_or_else(String::new, |x| x.to_string()),
                            s.n.to_string(),
                        ]),
                        None => fields.extend([String::new(), String::new(), "0".into()]),
                    }
                }
                out.push_str(&csv_line(fields));
            }
            out
        }
        ResultsFormat::Json => to_json(&groups.iter().map(|g| g.to_json(by)).collect::<Vec<_>>())?,
        ResultsFormat::Yaml => to_yaml(&groups.iter().map(|g| g.to_json(by)).collect::<Vec<_>>())?,
    })
}
