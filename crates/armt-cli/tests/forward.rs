//! `armt forward` end to end against HF transformers (references from scripts/reference/*.py),
//! and its errors on bad input.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Kind, Tensor};

fn refs() -> PathBuf {
    armt_testkit::refs_dir().join("model")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `armt forward` on the CPU.
fn armt_forward(model: &Path, chat: &Path, out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_armt"))
        .args(["forward", "--model"])
        .arg(model)
        .arg("--chat")
        .arg(chat)
        .arg("--out")
        .arg(out)
        .args(["--device", "cpu"])
        .output()
        .expect("running armt")
}

fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

fn reference_cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(refs())
        .expect("reference dir missing: run scripts/test")
        .map(|e| e.unwrap().path())
        .filter(|c| c.join("model").is_dir())
        .collect();
    cases.sort();
    cases
}

#[test]
fn forward_matches_transformers_end_to_end() {
    let out_dir = scratch("forward-e2e");
    let mut checked = 0;
    let mut failures = Vec::new();
    for case in reference_cases() {
        let case_name = case.file_name().unwrap().to_string_lossy().to_string();
        let mut chats: Vec<PathBuf> = std::fs::read_dir(&case)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        chats.sort();
        for reference in chats {
            let stem = reference.file_stem().unwrap().to_string_lossy().to_string();
            let chat = repo().join("tests/fixtures/chats").join(format!("{stem}.json"));
            let out = out_dir.join(format!("{case_name}-{stem}.safetensors"));
            let model = case.join("model");
            let o = armt_forward(&model, &chat, &out);
            assert!(
                o.status.success(),
                "armt forward failed on {stem}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let (got, want) = (read(&out), read(&reference));
            assert_eq!(
                Vec::<i64>::try_from(&got["input_ids"]).unwrap(),
                Vec::<i64>::try_from(&want["input_ids"]).unwrap(),
                "{case_name}/{stem}: input_ids differ"
            );
            let mut pixel_diff = 0.0;
            if let Some(pv) = want.get("pixel_values") {
                assert_eq!(got["image_grid_thw"].size(), want["image_grid_thw"].size());
                assert!(
                    got["image_grid_thw"].equal(&want["image_grid_thw"]),
                    "{stem}: image_grid_thw differ"
                );
                pixel_diff = (&got["pixel_values"] - pv).abs().max().double_value(&[]);
                assert!(pixel_diff <= 0.02, "{stem}: pixel_values differ by {pixel_diff}");
            } else {
                assert!(
                    !got.contains_key("pixel_values"),
                    "{stem}: pixels for a text-only chat"
                );
            }
            let a = got["logits"].to_kind(Kind::Double);
            let b = want["logits"].to_kind(Kind::Double);
            let err = (&a - &b).norm().double_value(&[]) / b.norm().double_value(&[]);
            println!(
                "{case_name}/{stem}: {} ids identical, pixel max abs diff {pixel_diff:.2e}, logits relative error {err:.2e}",
                got["input_ids"].size()[0]
            );
            if err > 1e-4 {
                failures.push(format!("{case_name}/{stem}: logits relative error {err:.3e}"));
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 8,
        "only {checked} reference chats found under {:?}",
        refs()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn first_model() -> PathBuf {
    reference_cases()
        .into_iter()
        .next()
        .expect("no reference checkpoints: run scripts/test")
        .join("model")
}

fn forward_error(model: &Path, chat: &Path, scratch_name: &str) -> String {
    let out = scratch(scratch_name).join("out.safetensors");
    let o = armt_forward(model, chat, &out);
    assert!(!o.status.success(), "armt forward should have failed");
    assert!(!out.exists(), "a failed run must not leave an output file");
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn bad_chats_get_errors_naming_what_is_wrong() {
    let dir = scratch("bad-chats");
    let model = first_model();
    let missing = dir.join("missing.json");
    std::fs::write(
        &missing,
        r#"{"messages": [{"role": "user", "content": [{"type": "image", "image": "nope.png"}, {"type": "text", "text": "hi"}]}], "add_generation_prompt": true}"#,
    )
    .unwrap();
    let err = forward_error(&model, &missing, "bad-chats-out1");
    assert!(err.contains("nope.png") && err.contains("missing.json"), "{err}");

    let malformed = dir.join("malformed.json");
    std::fs::write(
        &malformed,
        r#"{"messages": [{"role": "user", "content": "ok"}, {"content": "no role"}]}"#,
    )
    .unwrap();
    let err = forward_error(&model, &malformed, "bad-chats-out2");
    assert!(
        err.contains("malformed.json") && err.contains("messages[1]"),
        "{err}"
    );
}

#[test]
fn bad_checkpoints_get_one_clear_error() {
    let dir = scratch("bad-ckpt");
    let model = first_model();
    let chat = repo().join("tests/fixtures/chats/c07_text_only_plain.json");
    let copy_meta = |to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for f in ["config.json", "tokenizer.json", "preprocessor_config.json"] {
            std::fs::copy(model.join(f), to.join(f)).unwrap();
        }
    };

    // No weights at all.
    let empty = dir.join("empty");
    copy_meta(&empty);
    let err = forward_error(&empty, &chat, "bad-ckpt-out1");
    assert!(
        err.contains("model.safetensors") && err.contains("empty"),
        "{err}"
    );

    // Weights that do not fit the config: one missing, one extra, one of the wrong shape.
    let broken = dir.join("broken");
    copy_meta(&broken);
    let mut tensors = Vec::new();
    for f in std::fs::read_dir(&model).unwrap().map(|e| e.unwrap().path()) {
        if f.extension().is_some_and(|x| x == "safetensors") {
            tensors.extend(Tensor::read_safetensors(&f).unwrap());
        }
    }
    let norm = tensors
        .iter()
        .position(|(n, _)| n.ends_with("model.norm.weight"))
        .unwrap();
    let _removed = tensors.remove(norm);
    let q = tensors
        .iter()
        .position(|(n, _)| n.ends_with("layers.0.self_attn.q_proj.bias"))
        .unwrap();
    tensors[q].1 = Tensor::zeros([3], (Kind::Float, tch::Device::Cpu));
    tensors.push((
        "model.extra_thing.weight".to_string(),
        Tensor::zeros([2, 2], (Kind::Float, tch::Device::Cpu)),
    ));
    Tensor::write_safetensors(&tensors, broken.join("model.safetensors")).unwrap();
    let err = forward_error(&broken, &chat, "bad-ckpt-out2");
    for needle in [
        "missing",
        "model.norm.weight",
        "unexpected",
        "model.extra_thing.weight [2, 2]",
        "wrong shape",
        "layers.0.self_attn.q_proj.bias: checkpoint [3]",
    ] {
        assert!(err.contains(needle), "error lacks `{needle}`:\n{err}");
    }
}
