//! A resume must continue the same run: the checkpoint's kind (SFT, GRPO stage 1 or 2) must be
//! the new run's, and settings that change what is trained (data, group size, batch sizes,
//! rewards, seed, learning rate …) must be unchanged unless `--allow-config-change` says the
//! change is meant. Settings that only change how long, where or how often (steps, save
//! cadence, device, memory chunking) may change freely.

use crate::checkpoint::read_state;
use crate::{TrainConfig, TrainError};
use std::collections::BTreeMap;
use std::path::Path;

/// The flag that lets a resume go on with meaning-changing differences.
pub const ALLOW_FLAG: &str = "--allow-config-change";

/// Keys (or key prefixes ending in `.`) that may differ on resume.
const HARMLESS: [&str; 19] = [
    "train.steps",
    "train.save_every",
    "train.keep_last",
    "train.run_dir",
    "train.logit_chunk",
    "train.logprob_micro_batch",
    "train.micro_batch",
    "train.val_every",
    // The optimizer state re-shards on resume (concatenate and split).
    "train.zero_stage",
    "model.device",
    "model.dtype",
    "model.grad_checkpointing",
    "data.val",
    "sft.steps",
    "dist.",
    "rollout.max_batch_tokens",
    "rollout.max_rows",
    "rollout.sync_every",
    "rollout.prefill_chunk",
];

/// Keys that matter to a cold-start (SFT) run; the others (rollout, rewards, GRPO) do not.
const SFT_KEYS: [&str; 6] = [
    "sft.",
    "optim.adamw.",
    "optim.grad_clip",
    "model.freeze_vision",
    "train.seed",
    "data.sft",
];

/// What a checkpoint of `phase` is, for messages.
fn kind_of(phase: &str) -> String {
    match phase {
        "sft" => "a cold-start (SFT) checkpoint".into(),
        p => format!("a GRPO {p} checkpoint"),
    }
}

/// Checks that `ckpt` may be resumed by a run of `phase` ("sft", "stage 1", "stage 2") with
/// config `new`; `allow_changes` lets meaning-changing differences through (they are still
/// printed).
pub fn check(ckpt: &Path, phase: &str, new: &TrainConfig, allow_changes: bool) -> Result<(), TrainError> {
    let state = read_state(ckpt)?;
    if state.phase != phase {
        return Err(TrainError::ResumeOtherRun {
            ckpt: ckpt.to_path_buf(),
            checkpoint_kind: kind_of(&state.phase),
            run_kind: kind_of(phase).replace(" checkpoint", " run"),
            phase: phase.to_string(),
        });
    }
    let old = TrainConfig::from_toml_str(
        &state.config,
        &format!("{}/trainer_state.json", ckpt.display()),
        &[],
    );
    // A checkpoint whose config no longer parses (older armt) cannot be compared: say so.
    let old = match old {
        Ok(c) => c,
        Err(e) if allow_changes => {
            eprintln!(
                "armt: cannot compare configs with {} ({e}); going on ({ALLOW_FLAG})",
                ckpt.display()
            );
            return Ok(());
        }
        Err(e) => {
            return Err(TrainError::ResumeConfigUnreadable {
                ckpt: ckpt.to_path_buf(),
                source: Box::new(e),
            })
        }
    };
    let changed = meaningful_changes(&old, new, phase == "sft");
    if changed.is_empty() {
        return Ok(());
    }
    if allow_changes {
        eprintln!(
            "armt: resuming {} with changed settings ({ALLOW_FLAG}): {}",
            ckpt.display(),
            changed.join("; ")
        );
        return Ok(());
    }
    Err(TrainError::ResumeChanged {
        ckpt: ckpt.to_path_buf(),
        changes: changed,
    })
}

/// `key: old → new` for every differing setting that matters to the run.
pub fn meaningful_changes(old: &TrainConfig, new: &TrainConfig, sft: bool) -> Vec<String> {
    let (a, b) = (flatten(old), flatten(new));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let matters = |k: &str| {
        let harmless = HARMLESS
            .iter()
            .any(|h| k == *h || (h.ends_with('.') && k.starts_with(h)));
        let relevant = !sft
            || SFT_KEYS
                .iter()
                .any(|p| k.starts_with(p) || k == p.trim_end_matches('.'));
        let grpo_irrelevant = !sft && k.starts_with("sft.");
        !harmless && relevant && !grpo_irrelevant
    };
    keys.into_iter()
        .filter(|k| matters(k) && a.get(*k) != b.get(*k))
        .map(|k| {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(unset)".into());
            format!("{k}: {} → {}", show(a.get(k)), show(b.get(k)))
        })
        .collect()
}

fn flatten(cfg: &TrainConfig) -> BTreeMap<String, String> {
    let value = toml::Value::try_from(cfg).unwrap_or(toml::Value::Table(Default::default()));
    let mut out = BTreeMap::new();
    walk("", &value, &mut out);
    out
}

fn walk(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(o: &[&str]) -> TrainConfig {
        TrainConfig::load(None, &o.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn meaning_changes_are_listed_and_harmless_ones_are_not() {
        let old = cfg(&["rollout.n=8"]);
        let new = cfg(&[
            "rollout.n=4",
            "train.steps=500",
            "train.save_every=3",
            "train.seed=7",
        ]);
        let c = meaningful_changes(&old, &new, false);
        assert_eq!(c, vec!["rollout.n: 8 → 4", "train.seed: 1 → 7"]);
        // An SFT run does not care about the rollout settings.
        assert_eq!(meaningful_changes(&old, &new, true), vec!["train.seed: 1 → 7"]);
        let new = cfg(&["data.train=other.jsonl"]);
        assert_eq!(
            meaningful_changes(&cfg(&[]), &new, false),
            vec!["data.train: (unset) → \"other.jsonl\""]
        );
    }
}
