//! A resume must continue the same run: the checkpoint's kind (SFT, GRPO stage 1 or 2) must be
//! the new run's, and settings that change what is trained (data, group size, batch sizes,
//! rewards, seed, learning rate …) must be unchanged unless `--allow-config-change` says the
//! change is meant. Settings that only change how long, where or how often (steps, save
//! cadence, device, memory chunking) may change freely. The training data's contents must be
//! unchanged too, not only its path (see [`crate::data_fingerprint`]).

use crate::checkpoint::read_state;
use crate::data_fingerprint::DataFingerprint;
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
/// config `new` on training data `data`; `allow_changes` lets meaning-changing differences
/// through (they are still printed). Changed data counts as such a difference: the loader
/// resumes at a position that would now name other rows.
pub fn check(
    ckpt: &Path,
    phase: &str,
    new: &TrainConfig,
    data: &DataFingerprint,
    allow_changes: bool,
) -> Result<(), TrainError> {
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
    let mut changed = meaningful_changes(&old, new, phase == "sft");
    if let Some(saved) = state.data.as_ref().filter(|saved| *saved != data) {
        changed.push(format!("training data: {saved} → {data}"));
    }
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

    /// A checkpoint directory holding only `trainer_state.json`.
    fn checkpoint_with(
        name: &str,
        config: &TrainConfig,
        data: Option<DataFingerprint>,
    ) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("armt-resume-check-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let state = crate::checkpoint::TrainerState {
            step: 2,
            optimizer_steps: 2,
            data_epoch: 0,
            data_index: 4,
            phase: "stage 1".into(),
            config: config.to_toml(),
            data,
        };
        std::fs::write(
            dir.join("trainer_state.json"),
            serde_json::to_string(&state).unwrap(),
        )
        .unwrap();
        dir
    }

    #[test]
    fn edited_training_data_is_a_change_and_old_checkpoints_without_a_record_pass() {
        let config = cfg(&[]);
        let fp = |rows, sha: &str| DataFingerprint {
            rows,
            sha256: sha.repeat(64 / sha.len()),
        };
        let ckpt = checkpoint_with("data", &config, Some(fp(4, "ab")));
        check(&ckpt, "stage 1", &config, &fp(4, "ab"), false).unwrap();
        let err = check(&ckpt, "stage 1", &config, &fp(5, "cd"), false).unwrap_err();
        assert!(
            matches!(&err, TrainError::ResumeChanged { changes, .. }
                if changes == &["training data: 4 rows, sha256 abababababab → 5 rows, sha256 cdcdcdcdcdcd"]),
            "{err}"
        );
        assert!(err.to_string().contains(ALLOW_FLAG), "{err}");
        check(&ckpt, "stage 1", &config, &fp(5, "cd"), true).unwrap();
        let old = checkpoint_with("no-data", &config, None);
        check(&old, "stage 1", &config, &fp(5, "cd"), false).unwrap();
        let _ = std::fs::remove_dir_all(&ckpt);
        let _ = std::fs::remove_dir_all(&old);
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
