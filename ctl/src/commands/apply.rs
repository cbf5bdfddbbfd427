//! `apply -f FILE` (operator): validate FILE on the server, show the diff, ask (on a
//! terminal), then write it as the server's manifest (`PUT /v1/manifest`) and apply it.
//! `apply` without -f reloads the server's own manifest, as `reload` does.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;

use super::diff::render;
use super::Ctx;
use crate::cli::{ApplyArgs, DataFormat};
use crate::output::print;

pub async fn run(ctx: &Ctx, args: &ApplyArgs) -> anyhow::Result<()> {
    let Some(file) = &args.file else {
        let client = ctx.operator("apply")?;
        let plan = client.reload().await.context("reloading the manifest")?;
        return print(&render(&plan, args.output, ctx.term.color)?);
    };
    let client = ctx.operator("apply")?;
    let name = file.display().to_string();
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    // The server validates and plans it (the client has no manifest parser): an invalid
    // file stops here with every error, before anything is written.
    let plan = client
        .diff(text.clone(), &name)
        .await
        .with_context(|| format!("checking {name} against the queue"))?;
    if args.dry_run {
        return print(&render(&plan, args.output, ctx.term.color)?);
    }
    if args.output == DataFormat::Text {
        print(&render(&plan, DataFormat::Text, ctx.term.color)?)?;
    }
    if !args.yes && std::io::stdin().is_terminal() && !confirm(&name)? {
        anyhow::bail!("not applied: nothing was written");
    }
    let applied = client
        .put_manifest(text, &name)
        .await
        .with_context(|| format!("writing {name} as the server's manifest"))?;
    match args.output {
        DataFormat::Text => print(&format!(
            "manifest written and applied (generation {})\n",
            applied.generation
        )),
        other => print(&render(&applied, other, ctx.term.color)?),
    }
}

/// Asks on stderr; only `y` or `yes` goes on.
fn confirm(name: &str) -> anyhow::Result<bool> {
    let mut err = std::io::stderr().lock();
    write!(
        err,
        "Write {name} as the server's manifest and apply it? [y/N] "
    )?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(is_yes(&answer))
}

fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

#[cfg(test)]
mod tests {
    use super::is_yes;

    #[test]
    fn only_yes_goes_on() {
        for yes in ["y", "Y\n", " yes ", "YES"] {
            assert!(is_yes(yes), "{yes:?}");
        }
        for no in ["", "\n", "n", "no", "yess", "sure"] {
            assert!(!is_yes(no), "{no:?}");
        }
    }
}
