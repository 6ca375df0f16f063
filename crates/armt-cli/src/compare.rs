//! `armt eval --compare [CKPT...]`: checkpoints side by side on the same held-out tasks, greedy.
//! Per task kind: accuracy, format, right-tool rate, tool calls, stage-2 reward, and the share of
//! the most common verdict, so that a constant judge (share 1.0, accuracy = that verdict's share
//! of the ground truths) shows at a glance. Without CKPTs on the built-in default: the cold start,
//! stage 1, stage 2, and stage 2 with no tools offered.

use crate::forward::{parse_device, parse_dtype};
use anyhow::{bail, Context, Result};
use armt_model::Qwen25Vl;
use armt_processing::Processor;
use armt_tools::ToolRegistry;
use armt_train::validation::{evaluate, task_name, EvalReport, KindSummary};
use armt_train::{builtin, checkpoint, TrainConfig};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct CompareArgs {
    pub checkpoints: Vec<PathBuf>,
    pub data: Option<PathBuf>,
    pub tools: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub batch: usize,
    pub device: Option<String>,
    pub dtype: Option<String>,
    pub builtin_root: PathBuf,
    /// Evaluate every given checkpoint with no tools offered.
    pub no_tools: bool,
}

/// One column of the comparison.
struct Column {
    label: String,
    checkpoint: PathBuf,
    no_tools: bool,
}

/// The built-in default's stages under `root`, those that have a checkpoint.
fn builtin_columns(root: &Path) -> Result<Vec<Column>> {
    let mut cols = Vec::new();
    for (label, dir) in [
        ("cold start", "sft"),
        ("stage 1", "stage1"),
        ("stage 2", "stage2"),
    ] {
        match checkpoint::latest(&root.join(dir)) {
            Some(c) => cols.push(Column {
                label: label.into(),
                checkpoint: c,
                no_tools: false,
            }),
            None => eprintln!(
                "armt eval --compare: no {label} checkpoint in {}",
                root.join(dir).display()
            ),
        }
    }
    let Some(last) = cols.last() else {
        bail!(
            "no checkpoint under {}: run `armt train --stage 1` and `--stage 2` first",
            root.display()
        );
    };
    cols.push(Column {
        label: format!("{} no tools", last.label),
        checkpoint: last.checkpoint.clone(),
        no_tools: true,
    });
    Ok(cols)
}

pub fn run(args: CompareArgs) -> Result<()> {
    let cfg = match &args.config {
        Some(p) => TrainConfig::load(Some(p), &[])?,
        None => {
            TrainConfig::from_toml_str(builtin::TINY_STAGE2_TOML, "the built-in tiny default config", &[])?
        }
    };
    let columns = if args.checkpoints.is_empty() {
        builtin::limit_threads();
        builtin_columns(&args.builtin_root)?
    } else {
        args.checkpoints
            .iter()
            .map(|c| Column {
                label: c
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| c.display().to_string()),
                checkpoint: c.clone(),
                no_tools: args.no_tools,
            })
            .collect()
    };
    let samples = match &args.data {
        Some(d) => armt_data::read_samples(d)?,
        None => builtin::open(&args.builtin_root)?.val,
    };
    if samples.is_empty() {
        bail!("no samples to evaluate");
    }
    let tools = match &args.tools {
        Some(t) => ToolRegistry::from_yaml_file(t)?,
        None => builtin::tools()?,
    };
    let no_tools = ToolRegistry::new();
    let device = parse_device(args.device.as_deref())?;
    let kind = parse_dtype(args.dtype.as_deref(), device)?;
    let rewards = cfg.reward.clone();
    let mut reports = Vec::new();
    for col in &columns {
        let started = Instant::now();
        let processor = Processor::from_model_dir(&col.checkpoint)
            .with_context(|| format!("loading {}", col.checkpoint.display()))?;
        let model = Qwen25Vl::load(&col.checkpoint, device, kind)?;
        let registry = if col.no_tools { &no_tools } else { &tools };
        let report = evaluate(
            &model,
            &processor,
            registry,
            &cfg.rollout,
            &rewards,
            &samples,
            args.batch,
            |_, _, _| Ok(()),
        )?;
        eprintln!(
            "{}: {} ({:.0} s)",
            col.label,
            col.checkpoint.display(),
            started.elapsed().as_secs_f64()
        );
        reports.push(report);
    }
    println!("{} held-out samples, greedy", samples.len());
    print!("{}", comparison_table(&columns, &reports));
    Ok(())
}

/// Metric rows (each per task kind, then all) against checkpoint columns.
fn comparison_table(columns: &[Column], reports: &[EvalReport]) -> String {
    type Get = fn(&KindSummary) -> String;
    let metrics: [(&str, Get); 6] = [
        ("accuracy", |s| format!("{:.3}", s.accuracy)),
        ("format", |s| format!("{:.3}", s.format)),
        ("right tool", |s| format!("{:.3}", s.right_tool)),
        ("tool calls", |s| format!("{:.2}", s.tool_calls)),
        ("reward", |s| format!("{:.3}", s.reward)),
        ("top verdict", |s| {
            if s.top_verdict.is_empty() {
                format!("{:.2}", s.top_verdict_share)
            } else {
                format!("{:.2} {}", s.top_verdict_share, s.top_verdict)
            }
        }),
    ];
    let width = columns.iter().map(|c| c.label.len()).max().unwrap_or(0).max(16);
    let mut out = format!("{:<12} {:<12}", "metric", "task");
    for c in columns {
        out.push_str(&format!(" {:>width$}", c.label));
    }
    out.push('\n');
    let kinds = reports.first().map(|r| r.kinds()).unwrap_or_default();
    for (name, get) in metrics {
        let rows = kinds
            .iter()
            .map(|&k| (task_name(k), Some(k)))
            .chain([("all".to_string(), None)]);
        for (task, kind) in rows {
            out.push_str(&format!("{name:<12} {task:<12}"));
            for r in reports {
                out.push_str(&format!(" {:>width$}", get(&r.summary(kind))));
            }
            out.push('\n');
        }
    }
    out
}
