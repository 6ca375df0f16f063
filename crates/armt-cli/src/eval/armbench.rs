//! `armt eval --armbench TRACK.jsonl…`: ARMBench-VL as the original evaluates it — its prompts
//! and per-turn instruction, its answer extraction and scoring (`score = choice == gt`), per-item
//! results JSONL (the item plus `judge_result`) and a scores JSON per `rm_tag` and overall, plus
//! per track (one file per track, named by its stem). Resumable: items whose `idx` is already in
//! the results file are skipped. `--direct` is the no-tool baseline (no tools offered, the
//! direct instruction).

use super::EvalArgs;
use crate::messages::trajectory_messages;
use anyhow::{bail, Context, Result};
use armt_data::formats::armbench::{
    extract_choice, item_sample, read_items, ArmBenchItem, Choice, FIXED_COT_PROMPT, FIXED_COT_PROMPT_DIRECT,
};
use armt_data::{FormatOptions, Sample, Trajectory};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Default)]
pub struct BenchArgs {
    /// ARMBench-VL item files (JSONL), one per track (the track is the file's stem).
    #[arg(long, num_args = 1..)]
    pub armbench: Vec<PathBuf>,
    /// The no-tool baseline: no tools offered, the original's direct instruction.
    #[arg(long)]
    pub direct: bool,
    /// Where results go: `<work-dir>/<name>.jsonl`, `<name>_scores.json`, `images/`.
    #[arg(long, default_value = "eval_results")]
    pub work_dir: PathBuf,
    /// Item (and `--data` row) images resolve here (default: each file's folder).
    #[arg(long)]
    pub image_root: Option<PathBuf>,
    /// Document pages `<doc_id>_<page>.<ext>` are here (default: the image root).
    #[arg(long)]
    pub doc_root: Option<PathBuf>,
}

impl BenchArgs {
    /// `base` with the image and document roots given on the command line.
    pub fn format_options(&self, base: &FormatOptions) -> FormatOptions {
        FormatOptions {
            image_root: self.image_root.clone().or_else(|| base.image_root.clone()),
            doc_root: self.doc_root.clone().or_else(|| base.doc_root.clone()),
            ..base.clone()
        }
    }
}

/// One item's outcome, as the original's `judge_result`.
pub struct Judged {
    pub trajectory: Trajectory,
    pub system: String,
}

/// Rolls out a batch of samples (observation images saved under the given folder).
pub type JudgeFn<'a> = dyn FnMut(&[Sample], &Path) -> Result<Vec<Judged>> + 'a;

/// Runs the benchmark with `judge` doing the rollouts (in-process model or a remote server).
pub fn run_bench(args: &EvalArgs, model_name: &str, judge: &mut JudgeFn) -> Result<()> {
    let bench = &args.bench;
    std::fs::create_dir_all(&bench.work_dir)
        .with_context(|| format!("creating {}", bench.work_dir.display()))?;
    let results_path = bench.work_dir.join(format!("{model_name}.jsonl"));
    let image_dir = bench.work_dir.join("images");
    std::fs::create_dir_all(&image_dir)?;
    let mut results = read_results(&results_path)?;
    let done: HashSet<(String, String)> = results
        .iter()
        .map(|(t, r)| (t.clone(), key_of(&r["idx"])))
        .collect();
    let instruction = if bench.direct {
        FIXED_COT_PROMPT_DIRECT
    } else {
        FIXED_COT_PROMPT
    };
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&results_path)
        .with_context(|| format!("opening {}", results_path.display()))?;
    for file in &bench.armbench {
        let track = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let opts = bench.format_options(&FormatOptions::default());
        let items: Vec<ArmBenchItem> = read_items(file)?
            .into_iter()
            .filter(|it| !done.contains(&(track.clone(), it.key())))
            .collect();
        eprintln!("armt eval: track {track}: {} item(s) to evaluate", items.len());
        for chunk in items.chunks(args.batch.max(1)) {
            let samples = chunk
                .iter()
                .map(|it| {
                    item_sample(it, file, &opts, Some(instruction)).map_err(|source| {
                        armt_data::DataError::Item {
                            path: file.to_path_buf(),
                            idx: it.key(),
                            source: Box::new(source),
                        }
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let judged = judge(&samples, &image_dir)?;
            for ((item, sample), j) in chunk.iter().zip(&samples).zip(judged) {
                let record = judge_record(item, sample, &j, &track, &bench.work_dir)?;
                serde_json::to_writer(&mut out, &record)?;
                out.write_all(b"\n")?;
                results.push((track.clone(), record));
            }
            out.flush()?;
        }
    }
    let scores = score_json(&results);
    let scores_path = bench.work_dir.join(format!("{model_name}_scores.json"));
    std::fs::write(&scores_path, serde_json::to_string_pretty(&scores)?)?;
    print_scores(&scores);
    eprintln!(
        "results: {}\nscores: {}",
        results_path.display(),
        scores_path.display()
    );
    Ok(())
}

fn key_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Earlier results (for resuming), each with its track.
fn read_results(path: &Path) -> Result<Vec<(String, Value)>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: Value =
                serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))?;
            let track = v["track"].as_str().unwrap_or("").to_string();
            if v.get("judge_result").is_none() || v.get("idx").is_none() {
                bail!(
                    "{}:{}: not a result row (no idx/judge_result)",
                    path.display(),
                    i + 1
                );
            }
            Ok((track, v))
        })
        .collect()
}

/// The item plus `judge_result` (tool_call_cnt, full_messages, model_resp, model_choice, gt,
/// score, flag_status) and its `track`.
fn judge_record(
    item: &ArmBenchItem,
    sample: &Sample,
    j: &Judged,
    track: &str,
    work_dir: &Path,
) -> Result<Value> {
    let judgment = item.judgment()?;
    let resp = j.trajectory.final_text.clone();
    let choice = extract_choice(&resp, judgment);
    let gt = item.gt_choice()?;
    let score = u8::from(choice.as_ref() == Some(&gt));
    let tool_calls = j
        .trajectory
        .turns
        .iter()
        .filter(|t| t.tool_call.is_some())
        .count();
    let mut record = serde_json::to_value(item)?;
    record["track"] = json!(track);
    record["judge_result"] = json!({
        "tool_call_cnt": tool_calls,
        "full_messages": trajectory_messages(sample, &j.trajectory, &j.system, Some(work_dir)),
        "model_resp": resp,
        "model_choice": choice.as_ref().map(choice_json).unwrap_or(Value::Null),
        "gt": item.gt,
        "score": score,
        "flag_status": if choice.is_some() { "ExtractSuccess" } else { "ExtractFailed" },
        "stop_reason": j.trajectory.stop_reason,
    });
    Ok(record)
}

fn choice_json(c: &Choice) -> Value {
    match c {
        Choice::Candidate(k) => json!(k),
        Choice::Truth(t) => json!(t),
    }
}

/// `{rm_tag: {…_score, …_count, …_average_score}, overall: {…}, tracks: {track: {…}}}` with the
/// original's key names.
pub fn score_json(results: &[(String, Value)]) -> Value {
    let mut by_tag: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let mut by_track: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let mut all = (0.0, 0usize);
    for (track, r) in results {
        let s = r["judge_result"]["score"].as_f64().unwrap_or(0.0);
        let tag = r["rm_tag"].as_str().unwrap_or("").to_string();
        for (map, key) in [(&mut by_tag, tag), (&mut by_track, track.clone())] {
            let e = map.entry(key).or_default();
            e.0 += s;
            e.1 += 1;
        }
        all.0 += s;
        all.1 += 1;
    }
    let block = |prefix: &str, (s, n): (f64, usize)| {
        json!({
            format!("{prefix}_score"): s,
            format!("{prefix}_count"): n,
            format!("{prefix}_average_score"): if n > 0 { s / n as f64 } else { 0.0 },
        })
    };
    let mut out = serde_json::Map::new();
    for (tag, prefix) in [
        ("single_rm", "single_rm"),
        ("pair_rm", "pair_rm"),
        ("2-way-pair_rm", "two_way_pair_rm"),
        ("4-way-pair_rm", "four_way_pair_rm"),
    ] {
        out.insert(
            tag.into(),
            block(prefix, by_tag.get(tag).copied().unwrap_or_default()),
        );
    }
    out.insert("overall".into(), block("overall", all));
    let tracks: serde_json::Map<String, Value> = by_track
        .into_iter()
        .map(|(t, v)| (t, block("track", v)))
        .collect();
    out.insert("tracks".into(), Value::Object(tracks));
    Value::Object(out)
}

fn print_scores(scores: &Value) {
    println!("{:<28} {:>6} {:>9}", "split", "n", "accuracy");
    let row = |name: &str, v: &Value, prefix: &str| {
        let n = v[format!("{prefix}_count")].as_u64().unwrap_or(0);
        if n > 0 {
            println!(
                "{name:<28} {n:>6} {:>9.4}",
                v[format!("{prefix}_average_score")].as_f64().unwrap_or(0.0)
            );
        }
    };
    if let Some(tracks) = scores["tracks"].as_object() {
        for (t, v) in tracks {
            row(&format!("track {t}"), v, "track");
        }
    }
    for (tag, prefix) in [
        ("single_rm", "single_rm"),
        ("pair_rm", "pair_rm"),
        ("2-way-pair_rm", "two_way_pair_rm"),
        ("4-way-pair_rm", "four_way_pair_rm"),
    ] {
        row(&format!("rm_tag {tag}"), &scores[tag], prefix);
    }
    row("overall", &scores["overall"], "overall");
}

/// The benchmark on a checkpoint in this process, or on a server with --api-base (greedy
/// unless --temperature).
pub fn run_in_process(args: &EvalArgs) -> Result<()> {
    use armt_rollout::{RolloutConfig, RolloutEnv, SamplingConfig};
    use armt_tools::ToolRegistry;

    let model_dir = args
        .model
        .clone()
        .context("--armbench needs --model DIR (with --api-base: the served model's name)")?;
    let cfg = match &args.config {
        Some(p) => armt_train::TrainConfig::load(Some(p), &[])?,
        None => armt_train::TrainConfig::default(),
    };
    let tools = match (&args.tools, args.bench.direct) {
        (_, true) => ToolRegistry::new(),
        (Some(t), false) => ToolRegistry::from_yaml_file(t)?,
        (None, false) => bail!("--armbench needs --tools T.yaml (or --direct for the no-tool baseline)"),
    };
    let rollout = RolloutConfig {
        // The items carry the original's instruction in their prompt.
        cot_prompt: String::new(),
        sampling: SamplingConfig {
            temperature: args.temperature,
            seed: 0,
            ..cfg.rollout.sampling.clone()
        },
        retokenize_turns: cfg.rollout.retokenize_turns || args.retokenize_turns,
        ..cfg.rollout.clone()
    };
    let system = crate::messages::system_text(&tools.schemas());
    let policy = crate::agent::Policy::open(
        &args.remote,
        &model_dir,
        &rollout.sampling,
        args.device.as_deref(),
        args.dtype.as_deref(),
    )?;
    let name = model_dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let mut judge = |samples: &[Sample], image_dir: &Path| -> Result<Vec<Judged>> {
        let env = RolloutEnv {
            processor: policy.processor(),
            tools: &tools,
            config: &rollout,
            image_dir: Some(image_dir.to_path_buf()),
        };
        Ok(policy
            .rollouts(&env, samples, 1, None)?
            .0
            .into_iter()
            .map(|r| Judged {
                trajectory: r.trajectory,
                system: system.clone(),
            })
            .collect())
    };
    run_bench(args, &name, &mut judge)?;
    if let Some(s) = policy.summary() {
        eprintln!("{s}");
    }
    Ok(())
}
