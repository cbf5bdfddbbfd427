//! Figure 7: makespan. 1,000 trivial jobs (the trainer is `true`, the output one small
//! file) through one real agent with `--max-concurrent 2`, from the reload to the last
//! completion. Needs the agent binary.

use super::{Ctx, Row};

pub async fn run(_ctx: &Ctx, server_missing: Option<&str>) -> Vec<Row> {
    let name = "7. makespan: 1000 trivial jobs, one agent, 2 slots";
    let why = server_missing.unwrap_or("the agent binary is not on this branch yet");
    vec![Row::not_measured(name, ">= 500 jobs/s", why)]
}
