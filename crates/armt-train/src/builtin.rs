//! The built-in default: with no model or data given, `armt train` generates a synthetic task
//! set (armt-synth: zoom-in details, facts on document pages, instruction checks, each posed as a
//! reward-model judgment), a tiny tokenizer and a tiny Qwen2.5-VL-architecture model, runs the
//! cold start on expert demonstrations (scripted turns run through the real tools), then GRPO.

use crate::batch::Example;
use crate::config::BuiltinSection;
use crate::TrainError;
use armt_data::Sample;
use armt_model::Qwen25Vl;
use armt_processing::Processor;
use armt_rollout::{RolloutConfig, RolloutEnv, ScriptedGenerator};
use armt_synth::ExpertStyle;
use armt_tools::ToolRegistry;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

/// The tiny default's configs and tools, built into the binary so it runs from any directory.
pub const TINY_STAGE1_TOML: &str = include_str!("../../../configs/tiny-stage1.toml");
pub const TINY_STAGE2_TOML: &str = include_str!("../../../configs/tiny-stage2.toml");
pub const TINY_TOOLS_YAML: &str = include_str!("../../../configs/tools/tiny.yaml");

/// The base seed the task sets are generated from (each `train.seed` gives its own task set,
/// model initialisation and run). Task counts and cold-start traces: `[builtin]` in the config.
pub const SEED: u64 = 2025;
/// BPE vocabulary of the tiny tokenizer.
pub const TOKENIZER_VOCAB: usize = 4096;
/// Marks which `train.seed` (first line) and task counts (second line) the task set, tokenizer
/// and tiny model under the root belong to.
const SEED_FILE: &str = "seed.txt";

/// The synthetic task design's version: bumped when the generator draws other tasks for the
/// same seed, so that a root prepared by an older binary is made again instead of reused.
const TASK_DESIGN: u32 = 7;

fn marker_text(seed: u64, section: &BuiltinSection) -> String {
    format!(
        "{seed}\ntrain_tasks={} val_tasks={} design={TASK_DESIGN} layers={} heads={} kv_heads={}\n",
        section.train_tasks, section.val_tasks, section.layers, section.heads, section.kv_heads
    )
}

pub struct Builtin {
    pub model_dir: PathBuf,
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    /// The `train.seed` the task set and model were made for.
    pub seed: u64,
}

/// The tiny model's shape: `section`'s layers and heads (by default 4 layers, so that a copy of
/// a value out of a tool's answer and its comparison with a candidate fit in the depth, and 4
/// heads sharing 2 key/value heads; with 4 key/value heads, or 8 heads of 16, seed 2's copying
/// heads had not formed by step 800 either, at an SFT lr of 2e-3), and a rope base of 10⁴
/// instead of Qwen's 10⁶: with a head size of 32, 10⁶ leaves only two or three rotary
/// frequencies that tell neighbouring positions apart, and the look-back-one-token heads that
/// copying is built from then form late and at random.
pub fn model_spec(section: &BuiltinSection) -> armt_synth::TinyModelSpec {
    let base = armt_synth::TinyModelSpec::default();
    // Qwen's split of the rotary pairs between time, height and width (16/24/24 of 64).
    let half = base.hidden_size / section.heads.max(1) / 2;
    let (time, rest) = (half / 4, half - half / 4);
    let mrope_section = [time, rest / 2, rest - rest / 2];
    armt_synth::TinyModelSpec {
        num_hidden_layers: section.layers,
        num_attention_heads: section.heads,
        num_key_value_heads: section.kv_heads,
        mrope_section,
        rope_theta: 10_000.0,
        ..base
    }
}

/// The task-generation seed of `train.seed`: the training and held-out sets differ, and each
/// `train.seed` gives another pair.
fn task_seed(seed: u64) -> u64 {
    SEED.wrapping_add(seed.wrapping_mul(1_000_003))
}

/// One libtorch thread for the tiny model unless `OMP_NUM_THREADS` says otherwise: its matrices
/// (hidden size 128) gain nothing from intra-op parallelism, and OpenMP threads that spin at
/// barriers stall when the CPU is shared (measured on the 2-core machine under a load of ~20:
/// 14 s per SFT step with 2 threads, 2-3 s with 1).
pub fn limit_threads() {
    if std::env::var_os("OMP_NUM_THREADS").is_none() {
        tch::set_num_threads(1);
    }
}

pub fn tools() -> Result<ToolRegistry, TrainError> {
    Ok(ToolRegistry::from_yaml_str(
        TINY_TOOLS_YAML,
        Path::new("configs/tools/tiny.yaml"),
    )?)
}

/// The generator's error (an `anyhow` chain, kept whole) as a train error.
fn synth_err(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> TrainError {
    TrainError::Builtin { source: e.into() }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The seed the built-in default under `root` was prepared for, if it is complete.
pub fn prepared_seed(root: &Path) -> Option<u64> {
    let complete = root.join("tiny-model").join("model.safetensors").exists()
        && root.join("data/train/tasks.jsonl").exists()
        && root.join("data/val/tasks.jsonl").exists();
    if !complete {
        return None;
    }
    std::fs::read_to_string(root.join(SEED_FILE))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Creates the task set and the tiny model for `seed` and `section`'s task counts under `root`,
/// unless they are there already (then they are reused). Another seed's files, and the runs made
/// from them (sft, stage1, stage2), are removed first.
pub fn prepare(root: &Path, seed: u64, section: &BuiltinSection) -> Result<Builtin, TrainError> {
    let marker = std::fs::read_to_string(root.join(SEED_FILE)).ok();
    if prepared_seed(root).is_none() || marker.as_deref() != Some(marker_text(seed, section).as_str()) {
        for dir in ["data", "tiny-model", "sft-read", "sft", "stage1", "stage2"] {
            let p = root.join(dir);
            if p.exists() {
                std::fs::remove_dir_all(&p).map_err(io_err(&p))?;
            }
        }
        generate(root, seed, section)?;
    }
    open(root)
}

/// The built-in default already prepared under `root` (by `armt train --stage 1`).
pub fn open(root: &Path) -> Result<Builtin, TrainError> {
    let seed = prepared_seed(root).ok_or_else(|| TrainError::NoBuiltin {
        root: root.to_path_buf(),
    })?;
    Ok(Builtin {
        model_dir: root.join("tiny-model"),
        train: armt_data::read_samples(&root.join("data/train/tasks.jsonl"))?,
        val: armt_data::read_samples(&root.join("data/val/tasks.jsonl"))?,
        seed,
    })
}

fn generate(root: &Path, seed: u64, section: &BuiltinSection) -> Result<(), TrainError> {
    let data = root.join("data");
    let model_dir = root.join("tiny-model");
    eprintln!(
        "built-in default: generating {}+{} synthetic tasks (seed {seed}) and a tiny model in {}",
        section.train_tasks,
        section.val_tasks,
        root.display()
    );
    let base = task_seed(seed);
    let train =
        armt_synth::generate_tasks(&data.join("train"), section.train_tasks, base).map_err(synth_err)?;
    armt_synth::generate_tasks(&data.join("val"), section.val_tasks, base.wrapping_add(1))
        .map_err(synth_err)?;
    let tools = tools()?;
    let mut corpus = armt_synth::default_corpus(&train);
    // What the model will read: the real system prompt and the tools' real answers.
    // Every sequence starts with the system prompt: weighting it lets BPE learn merges for
    // it, which keeps sequences short (the cost of every step on a CPU).
    let system = armt_tools::system_prompt(&tools.schemas());
    corpus.extend(std::iter::repeat_n(system, 64));
    corpus.push(armt_rollout::LAST_TURN_MESSAGE.to_string());
    for s in &train {
        let mut ctx = armt_tools::ToolContext::from_sample(s);
        for style in [ExpertStyle::Direct, ExpertStyle::Retry, ExpertStyle::Guess] {
            for turn in armt_synth::expert_script(s, style, base) {
                corpus.push(turn.text.clone());
                if let Some(Ok(call)) = armt_tools::parse_tool_call(&turn.text) {
                    corpus.push(tools.call(&call, &mut ctx).text);
                }
            }
        }
    }
    let tokenizer = armt_synth::build_tiny_tokenizer_with_words(
        &corpus,
        TOKENIZER_VOCAB,
        false,
        &armt_synth::value_words(),
        &armt_synth::candidate_phrases(),
    )
    .map_err(synth_err)?;
    armt_synth::tiny_model_files_with(&model_dir, &tokenizer, &model_spec(section)).map_err(synth_err)?;
    let config = armt_model::Qwen25VlConfig::from_file(&model_dir.join("config.json"))?;
    let mut model = Qwen25Vl::new(config, Device::Cpu, Kind::Float);
    model.init_random(0.02, base as i64);
    // Written last (with the seed marker): their presence marks the preparation complete.
    let tmp = model_dir.join("model.safetensors.partial");
    crate::checkpoint::write_safetensors(&tmp, &crate::checkpoint::model_tensors(&model))?;
    let weights = model_dir.join("model.safetensors");
    std::fs::rename(&tmp, &weights).map_err(io_err(&weights))?;
    let marker = root.join(SEED_FILE);
    std::fs::write(&marker, marker_text(seed, section)).map_err(io_err(&marker))?;
    Ok(())
}

/// Expert demonstrations as training examples: each sample's scripted turns run through the
/// real tools and template, `section.direct_traces` copies of the expert's (the task's tool,
/// then the verdict read off its answer) and `section.guess_traces` that answer without a tool
/// (a random verdict, each its own draw). The cold-start model then mostly skips the tool and
/// judges at chance, while it has seen how to read the tool's answer: the RL stages have the
/// tool's value to discover. (The retry style, a wrong call first, is left out: its random
/// first call is noise a tiny model spends its steps on.)
pub fn expert_examples(
    samples: &[Sample],
    processor: &Processor,
    tools: &ToolRegistry,
    rollout: &RolloutConfig,
    section: &BuiltinSection,
) -> Result<Vec<Example>, TrainError> {
    let mut out = Vec::new();
    let styles = std::iter::repeat_n((ExpertStyle::Direct, 0u64), section.direct_traces)
        .chain((0..section.guess_traces as u64).map(|k| (ExpertStyle::Guess, k + 1)));
    for (style, variant) in styles {
        let scripts: Vec<Vec<Vec<i64>>> = samples
            .iter()
            .map(|s| {
                armt_synth::expert_script(s, style, SEED.wrapping_add(variant))
                    .into_iter()
                    .map(|turn| {
                        let text = format!("{}<|im_end|>", turn.text);
                        let text = if turn.tool_call.is_some() { turn.text } else { text };
                        let enc = processor
                            .tokenizer()
                            .encode(text.as_str(), false)
                            .expect("tokenizable expert text");
                        enc.get_ids().iter().map(|&i| i as i64).collect()
                    })
                    .collect()
            })
            .collect();
        let mut generator = ScriptedGenerator::new(scripts);
        let env = RolloutEnv {
            processor,
            tools,
            config: rollout,
            image_dir: None,
        };
        for r in env.run(&mut generator, samples, 1, |_| {})? {
            out.push(Example {
                ids: r.trajectory.token_ids,
                prompt_len: r.trajectory.prompt_len,
                loss_mask: r.trajectory.loss_mask,
                images: r.images,
            });
        }
    }
    Ok(out)
}
