//! `diff -f FILE` (operator): what reloading FILE would change, without applying it.

use std::fmt::Write as _;

use anyhow::Context;
use cis490_api::{PlanEntry, PlanSummary};

use super::Ctx;
use crate::cli::{DataFormat, DiffArgs};
use crate::output::{print, to_json, to_yaml, Paint};

pub async fn run(ctx: &Ctx, args: &DiffArgs) -> anyhow::Result<()> {
    let client = ctx.operator("diff")?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let plan = client
        .diff(text, &args.file.display().to_string())
        .await
        .with_context(|| format!("comparing {} with the queue", args.file.display()))?;
    print(&render(&plan, args.output, ctx.term.color)?)
}

/// The plan in the chosen format.
pub fn render(plan: &PlanSummary, format: DataFormat, color: bool) -> anyhow::Result<String> {
    match format {
        DataFormat::Json => to_json(plan),
        DataFormat::Yaml => to_yaml(plan),
        DataFormat::Text => Ok(plan_text(plan, color)),
    }
}

/// One line per change (`+ create`, `~ update`, `- tombstone`, `^ revive`), the warnings,
/// then a count line.
pub fn plan_text(plan: &PlanSummary, color: bool) -> String {
    let mut out = String::new();
    let groups: [(&[PlanEntry], &str, &str, Paint); 4] = [
        (&plan.create, "+", "create", Paint::Green),
        (&plan.update, "~", "update", Paint::Yellow),
        (&plan.tombstone, "-", "tombstone", Paint::Red),
        (&plan.revive, "^", "revive", Paint::Cyan),
    ];
    for (entries, sign, word, paint) in groups {
        for e in entries {
            let mut line = format!("{sign} {word:<9} {} {}/{}", e.id.short(), e.model, e.mode);
            if !e.changes.is_empty() {
                let _ = write!(line, " ({})", e.changes.join(", "));
            }
            match paint_code(paint).filter(|_| color) {
                Some(code) => {
                    let _ = writeln!(out, "\x1b[{code}m{line}\x1b[0m");
                }
                None => {
                    let _ = writeln!(out, "{line}");
                }
            }
        }
    }
    for w in &plan.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    let counts = format!(
        "{} {}, {} {}, {} {}, {} {}, {} unchanged",
        plan.create.len(),
        if plan.applied { "created" } else { "to create" },
        plan.update.len(),
        if plan.applied { "updated" } else { "to update" },
        plan.tombstone.len(),
        if plan.applied {
            "tombstoned"
        } else {
            "to tombstone"
        },
        plan.revive.len(),
        if plan.applied { "revived" } else { "to revive" },
        plan.keep
    );
    if plan.applied {
        let _ = writeln!(
            out,
            "applied: {counts} (manifest generation {})",
            plan.generation
        );
    } else {
        let _ = writeln!(out, "{counts}");
    }
    out
}

fn paint_code(paint: Paint) -> Option<&'static str> {
    match paint {
        Paint::Green => Some("32"),
        Paint::Yellow => Some("33"),
        Paint::Red => Some("31"),
        Paint::Cyan => Some("36"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::samples::id;
    use cis490_api::JobId;

    fn entry(c: char, model: &str, changes: &[&str]) -> PlanEntry {
        PlanEntry {
            id: JobId::parse(&id(c)).unwrap(),
            model: model.into(),
            mode: "realistic".into(),
            changes: changes.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn plan() -> PlanSummary {
        PlanSummary {
            create: vec![entry('a', "gbt", &[])],
            update: vec![entry('b', "mlp", &["priority", "constraints"])],
            tombstone: vec![entry('c', "gbt", &[])],
            revive: vec![entry('d', "gbt", &[])],
            keep: 4,
            warnings: vec!["model knn has no jobs".into()],
            applied: false,
            generation: 3,
        }
    }

    #[test]
    fn diff_text_lists_each_change_like_kubectl_diff() {
        let text = plan_text(&plan(), false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "+ create    aaaaaaaaaaaa gbt/realistic",
                "~ update    bbbbbbbbbbbb mlp/realistic (priority, constraints)",
                "- tombstone cccccccccccc gbt/realistic",
                "^ revive    dddddddddddd gbt/realistic",
                "warning: model knn has no jobs",
                "1 to create, 1 to update, 1 to tombstone, 1 to revive, 4 unchanged",
            ]
        );
    }

    #[test]
    fn applied_plan_says_so_with_the_generation() {
        let mut p = plan();
        p.applied = true;
        let text = plan_text(&p, false);
        assert!(text.ends_with("applied: 1 created, 1 updated, 1 tombstoned, 1 revived, 4 unchanged (manifest generation 3)\n"), "{text}");
    }

    #[test]
    fn structured_formats_round_trip() {
        let p = plan();
        let json = render(&p, DataFormat::Json, false).unwrap();
        assert_eq!(serde_json::from_str::<PlanSummary>(&json).unwrap(), p);
        let yaml = render(&p, DataFormat::Yaml, false).unwrap();
        assert_eq!(serde_yaml_ng::from_str::<PlanSummary>(&yaml).unwrap(), p);
    }
}
