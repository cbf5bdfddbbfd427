//! `cis490-bench`: the benchmark figures of cis490 fleet (see BENCHMARKS.md).
//!
//!     cargo run --release -p cis490-tests --bin cis490-bench -- all [--quick] [--json FILE]
//!
//! Drives the real `cis490-reconciler serve` over loopback with simulated agents, and the
//! queue and reconcile path in-process. Prints one table (figure, target, measured, ok).
//! With `--quick` (small sizes, under a minute) it checks only that every figure ran and its
//! checks held. It exits non-zero when a figure errors (with `--quick`, also when one could
//! not be measured), never for a missed target: the table says so.

use std::path::PathBuf;

use anyhow::Context;
use cis490_tests::bench::server::Backend;
use cis490_tests::bench::{self, Ctx, Machine, Report, Row, Status};
use clap::{Parser, Subcommand};

/// The reconciler's allocator, so that figure 4's reconcile child (this binary) measures
/// the peak memory the server would have.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "cis490-bench", about = "Benchmark figures of cis490 fleet")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs every figure (or those named with --only).
    All {
        /// Small sizes, under a minute: checks that each figure runs, never a time.
        #[arg(long)]
        quick: bool,
        /// Also writes the table as JSON to FILE.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Only these figures, comma separated: 1-8 (each with its in-process variant),
        /// 1q / 2q for only the in-process variant of figure 1 or 2, 12a-12f for
        /// the hostile-client figures (12 for all three), 15 for the dashboard, 1pg, 1pg2,
        /// 2pg, 7pg (or pg) for those on PostgreSQL (see --postgres).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Job count for figures 1 and 2 (default 20,000 and 10,000), to profile other sizes.
        #[arg(long)]
        jobs: Option<usize>,
        /// Scratch directory (on the disk to measure; default: the system temp dir).
        #[arg(long, value_name = "DIR")]
        work_dir: Option<PathBuf>,
        /// A PostgreSQL server's admin URL (postgres://USER@HOST/postgres): figures 1, 2
        /// and 7 also run on PostgreSQL (1pg, 2pg, 7pg; `--only pg` for those alone), and
        /// 1pg2 claims through two servers on one database. Each makes and drops a
        /// database of its own.
        #[arg(long, value_name = "URL", env = "CIS490_TEST_POSTGRES")]
        postgres: Option<String>,
    },
    /// Internal: one reconcile-at-scale run in its own process (for its peak RSS).
    #[command(hide = true)]
    ReconcileChild { jobs: usize, dir: PathBuf },
    /// Internal: load JOBS jobs into a queue in DIR and drain it with THREADS threads
    /// (0: one thread claiming for the 64 agents in turn), for profilers.
    #[command(hide = true)]
    ClaimProfile {
        jobs: usize,
        threads: usize,
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::ReconcileChild { jobs, dir } => bench::reconcile_scale::child_main(jobs, &dir),
        Cmd::ClaimProfile { jobs, threads, dir } => {
            bench::claim_throughput::profile_main(jobs, threads, &dir)
        }
        Cmd::All {
            quick,
            json,
            only,
            jobs,
            work_dir,
            postgres,
        } => {
            let scratch = match work_dir {
                Some(d) => tempfile::Builder::new()
                    .prefix("cis490-bench-")
                    .tempdir_in(d),
                None => tempfile::Builder::new().prefix("cis490-bench-").tempdir(),
            }
            .context("creating the scratch directory")?;
            let ctx = Ctx {
                quick,
                work: scratch.path().to_path_buf(),
                jobs,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            let postgres = postgres.map(|admin| Backend::Postgres { admin });
            let rows = runtime.block_on(run_all(&ctx, &only, postgres.as_ref()))?;
            print!("{}", bench::render_table(&rows));
            if let Some(path) = json {
                let report = Report {
                    quick,
                    machine: Machine::detect(&ctx.work),
                    rows: &rows,
                };
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            // In --quick (CI) every figure must run: a "not measured" row means the harness
            // or a binary it drives has rotted.
            let errors = rows
                .iter()
                .filter(|r| r.status == Status::Error || (quick && r.status == Status::NotMeasured))
                .count();
            if errors > 0 {
                anyhow::bail!("{errors} figure(s) failed or did not run");
            }
            Ok(())
        }
    }
}

async fn run_all(
    ctx: &Ctx,
    only: &[String],
    postgres: Option<&Backend>,
) -> anyhow::Result<Vec<Row>> {
    let want = |n: &str| only.is_empty() || only.iter().any(|o| o == n);
    // "pg" selects every figure on PostgreSQL; without a server they are left out unless
    // named.
    let named = |n: &str| only.iter().any(|o| o == n || o == "pg");
    let want_pg = |n: &str| (postgres.is_some() && want(n)) || named(n);
    // "1" selects figure 1 and its in-process variant "1q".
    let want_q = |n: &str| want(n) || want(n.trim_end_matches('q'));
    // "12" selects 12a-12f.
    let want_12 = |n: &str| want(n) || want("12");
    let needs_server = ["1", "2", "2r", "3", "5", "6", "7"]
        .iter()
        .any(|&n| want(n))
        || ["1pg", "1pg2", "2pg", "7pg"].iter().any(|&n| want_pg(n))
        || ["12a", "12b", "12c", "12d"].iter().any(|&n| want_12(n))
        || want("15");
    let missing = if needs_server {
        bench::server::unavailable(&ctx.dir("probe")?).await
    } else {
        None
    };
    let missing = missing.as_deref();
    let mut rows = Vec::new();
    let mut add = |figure: Vec<Row>| {
        for r in &figure {
            eprintln!("  {} | {} | {}", r.figure, r.target, r.measured);
        }
        rows.extend(figure);
        if let Err(e) = ctx.clear() {
            eprintln!("  (could not clear {}: {e})", ctx.work.display());
        }
    };
    if want("1") {
        add(bench::claim_throughput::run_http(ctx, missing, &Backend::Sqlite, 1).await);
    }
    for (figure, servers) in [("1pg", 1), ("1pg2", 2)] {
        if want_pg(figure) {
            add(match postgres {
                Some(pg) => bench::claim_throughput::run_http(ctx, missing, pg, servers).await,
                None => vec![no_postgres(figure)],
            });
        }
    }
    if want_q("1q") {
        add(blocking(ctx, bench::claim_throughput::run_queue).await);
    }
    let mut figure_2 = None;
    if want("2") {
        let figure = bench::full_cycle::run_http(ctx, missing, &Backend::Sqlite).await;
        figure_2 = figure.first().and_then(|r| r.value);
        add(figure);
    }
    if want("2") || want("2r") {
        add(bench::full_cycle::run_http_results(ctx, missing, figure_2).await);
    }
    if want_pg("2pg") {
        add(match postgres {
            Some(pg) => bench::full_cycle::run_http(ctx, missing, pg).await,
            None => vec![no_postgres("2pg")],
        });
    }
    if want_q("2q") {
        add(blocking(ctx, bench::full_cycle::run_queue).await);
    }
    if want("3") {
        add(bench::dispatch_latency::run(ctx, missing).await);
    }
    if want("4") {
        add(blocking(ctx, bench::reconcile_scale::run).await);
    }
    if want("5") {
        add(bench::artifacts::run(ctx, missing).await);
    }
    if want("6") {
        add(bench::footprint::run(ctx, missing).await);
    }
    if want("7") {
        add(bench::makespan::run(ctx, missing, &Backend::Sqlite).await);
    }
    if want_pg("7pg") {
        add(match postgres {
            Some(pg) => bench::makespan::run(ctx, missing, pg).await,
            None => vec![no_postgres("7pg")],
        });
    }
    if want("8") {
        add(blocking(ctx, bench::growth::run).await);
    }
    if want_12("12a") {
        add(bench::load::run_slow_clients(ctx, missing).await);
    }
    if want_12("12b") {
        add(bench::load::run_refused_put(ctx, missing).await);
    }
    if want_12("12c") {
        add(bench::load::run_long_polls(ctx, missing).await);
    }
    if want_12("12d") {
        add(bench::big_lists::run_paging(ctx, missing).await);
    }
    if want_12("12e") {
        add(blocking(ctx, bench::big_lists::run_manifest_cap).await);
    }
    if want_12("12f") {
        add(blocking(ctx, bench::big_lists::run_host_warnings).await);
    }
    if want("15") {
        add(bench::dashboard::run(ctx, missing).await);
    }
    Ok(rows)
}

/// The row of a PostgreSQL figure asked for without a server to run it on.
fn no_postgres(figure: &str) -> Row {
    Row::not_measured(
        figure,
        "as its SQLite figure",
        "no PostgreSQL server: pass --postgres URL (or set CIS490_TEST_POSTGRES)",
    )
}

/// Runs a figure that blocks (threads on the queue, child processes) off the runtime.
async fn blocking(ctx: &Ctx, figure: fn(&Ctx) -> Vec<Row>) -> Vec<Row> {
    tokio::task::block_in_place(|| figure(ctx))
}
