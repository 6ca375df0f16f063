//! The port against HF transformers: logits of tiny random checkpoints (made by
//! scripts/reference/model.py) on the same input ids and pixels, for every case and chat.

use armt_model::Qwen25Vl;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn refs_dir() -> PathBuf {
    armt_testkit::refs_dir().join("model")
}

fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(refs_dir())
        .expect("reference dir missing: run scripts/test")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("model").is_dir())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 2,
        "expected several reference checkpoints in {:?}",
        refs_dir()
    );
    cases
}

fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    let diff = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .norm()
        .double_value(&[]);
    diff / b.to_kind(Kind::Double).norm().double_value(&[])
}

#[test]
fn logits_match_transformers_on_identical_inputs() {
    let mut failures = Vec::new();
    for case in cases() {
        let model = Qwen25Vl::load(&case.join("model"), Device::Cpu, Kind::Float)
            .unwrap_or_else(|e| panic!("loading {}: {e}", case.display()));
        let mut refs: Vec<PathBuf> = std::fs::read_dir(&case)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        refs.sort();
        assert!(!refs.is_empty(), "no reference chats in {}", case.display());
        for r in refs {
            let tensors: std::collections::HashMap<String, Tensor> =
                Tensor::read_safetensors(&r).unwrap().into_iter().collect();
            let ids = tensors["input_ids"].view([1, -1]);
            let grid: Vec<[i64; 3]> = match tensors.get("image_grid_thw") {
                Some(g) => Vec::<Vec<i64>>::try_from(g)
                    .unwrap()
                    .into_iter()
                    .map(|v| [v[0], v[1], v[2]])
                    .collect(),
                None => vec![],
            };
            let logits = tch::no_grad(|| model.forward(&ids, tensors.get("pixel_values"), &grid)).unwrap();
            let err = relative_error(&logits.squeeze_dim(0), &tensors["logits"]);
            println!(
                "{}/{}: logits relative error {err:.3e}",
                case.file_name().unwrap().to_string_lossy(),
                r.file_name().unwrap().to_string_lossy()
            );
            if err > 1e-4 {
                failures.push(format!("{}: relative error {err:.3e} > 1e-4", r.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn kv_cache_decoding_matches_the_full_forward() {
    // Prefill a prefix, then feed the rest token by token through the cache: the logits at
    // every step must equal the full forward's at that position.
    let case = &cases()[0];
    let model = Qwen25Vl::load(&case.join("model"), Device::Cpu, Kind::Float).unwrap();
    let r = std::fs::read_dir(case)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .unwrap();
    let tensors: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(&r).unwrap().into_iter().collect();
    let ids = tensors["input_ids"].view([1, -1]);
    let grid: Vec<[i64; 3]> = match tensors.get("image_grid_thw") {
        Some(g) => Vec::<Vec<i64>>::try_from(g)
            .unwrap()
            .into_iter()
            .map(|v| [v[0], v[1], v[2]])
            .collect(),
        None => vec![],
    };
    let _g = tch::no_grad_guard();
    let full = model.forward(&ids, tensors.get("pixel_values"), &grid).unwrap();
    let (positions, _) = model.positions(&ids, &grid).unwrap();
    let image_embeds = tensors
        .get("pixel_values")
        .map(|pv| model.encode_images(pv, &grid).unwrap());
    let embeds = model.embed(&ids, image_embeds.as_ref()).unwrap();
    let len = ids.size()[1];
    let split = len - 6;
    let mut cache = model.new_cache();
    let h = model.forward_cached(
        &embeds.narrow(1, 0, split),
        &positions.narrow(2, 0, split),
        None,
        &mut cache,
    );
    let mut worst = relative_error(&model.logits(&h), &full.narrow(1, 0, split));
    // Two tokens at once (as when a tool response is appended), then one at a time.
    let mut at = split;
    for step in [2, 1, 1, 1, 1] {
        let h = model.forward_cached(
            &embeds.narrow(1, at, step),
            &positions.narrow(2, at, step),
            None,
            &mut cache,
        );
        worst = worst.max(relative_error(&model.logits(&h), &full.narrow(1, at, step)));
        at += step;
    }
    assert_eq!(cache.len(), len);
    println!("kv-cache vs full forward: worst relative error {worst:.3e}");
    assert!(worst <= 1e-4, "kv-cache decoding differs: {worst:.3e}");
}
