//! The built-in default: with no model or data given, `armt train` generates a synthetic task
//! set (armt-synth: zoom-in details, facts on document pages, instruction checks, each posed as a
//! reward-model judgment), a tiny tokenizer and a tiny Qwen2.5-VL-architecture model, runs the
//! cold start on expert demonstrations (scripted turns run through the real tools), then GRPO.

use crate::batch::Example;
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

/// Training and held-out task counts, and the seed everything is generated from.
pub const TRAIN_TASKS: usize = 240;
pub const VAL_TASKS: usize = 48;
pub const SEED: u64 = 2025;
/// BPE vocabulary of the tiny tokenizer.
pub const TOKENIZER_VOCAB: usize = 4096;

pub struct Builtin {
    pub model_dir: PathBuf,
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
}

pub fn tools() -> Result<ToolRegistry, TrainError> {
    Ok(ToolRegistry::from_yaml_str(
        TINY_TOOLS_YAML,
        Path::new("configs/tools/tiny.yaml"),
    )?)
}

fn synth_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::State(format!("built-in default: {e}"))
}

/// Creates (once) the task set and the tiny model under `root`; later calls reuse them.
pub fn prepare(root: &Path) -> Result<Builtin, TrainError> {
    let data = root.join("data");
    let model_dir = root.join("tiny-model");
    let train_file = data.join("train").join("tasks.jsonl");
    let val_file = data.join("val").join("tasks.jsonl");
    if !model_dir.join("model.safetensors").exists() || !train_file.exists() || !val_file.exists() {
        eprintln!(
            "built-in default: generating {TRAIN_TASKS}+{VAL_TASKS} synthetic tasks and a tiny model in {}",
            root.display()
        );
        let train = armt_synth::generate_tasks(&data.join("train"), TRAIN_TASKS, SEED).map_err(synth_err)?;
        armt_synth::generate_tasks(&data.join("val"), VAL_TASKS, SEED + 1).map_err(synth_err)?;
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
            for style in [ExpertStyle::Direct, ExpertStyle::Retry] {
                for turn in armt_synth::expert_script(s, style, SEED) {
                    if let Some(Ok(call)) = armt_tools::parse_tool_call(&turn.text) {
                        corpus.push(tools.call(&call, &mut ctx).text);
                    }
                }
            }
        }
        let tokenizer =
            armt_synth::build_tiny_tokenizer_opts(&corpus, TOKENIZER_VOCAB, false).map_err(synth_err)?;
        armt_synth::tiny_model_files(&model_dir, &tokenizer).map_err(synth_err)?;
        let config = armt_model::Qwen25VlConfig::from_file(&model_dir.join("config.json"))?;
        let mut model = Qwen25Vl::new(config, Device::Cpu, Kind::Float);
        model.init_random(0.02, SEED as i64);
        // Written last: its presence marks the preparation complete.
        let tmp = model_dir.join("model.safetensors.partial");
        crate::checkpoint::write_safetensors(&tmp, &crate::checkpoint::model_tensors(&model))?;
        std::fs::rename(&tmp, model_dir.join("model.safetensors")).map_err(|e| TrainError::Io {
            path: model_dir.clone(),
            source: e,
        })?;
    }
    Ok(Builtin {
        model_dir,
        train: armt_data::read_samples(&train_file)?,
        val: armt_data::read_samples(&val_file)?,
    })
}

/// Expert demonstrations as training examples: each sample's scripted turns (a direct one and
/// one that first makes a wrong call) run through the real tools and template.
pub fn expert_examples(
    samples: &[Sample],
    processor: &Processor,
    tools: &ToolRegistry,
    rollout: &RolloutConfig,
) -> Result<Vec<Example>, TrainError> {
    let mut out = Vec::new();
    for style in [ExpertStyle::Direct, ExpertStyle::Retry] {
        let scripts: Vec<Vec<Vec<i64>>> = samples
            .iter()
            .map(|s| {
                armt_synth::expert_script(s, style, SEED)
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
