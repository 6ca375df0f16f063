//! Parity with HF transformers (`Qwen2_5_VLProcessor` + PIL `Qwen2VLImageProcessorPil`) and with
//! the official Qwen2.5-VL / Qwen2.5 Hermes chat templates rendered by transformers' Jinja.
//! References come from `scripts/reference/processing.py` (see `scripts/test`).

use std::path::{Path, PathBuf};

use armt_processing::{Chat, Processor};
use safetensors::SafeTensors;

fn refs_dir() -> PathBuf {
    let dir = armt_testkit::refs_dir().join("processing");
    assert!(
        dir.join("manifest.json").is_file(),
        "{} has no manifest.json: run scripts/test: it generates the transformers references",
        dir.display()
    );
    dir
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/chats")
}

fn chat_names(refs: &Path) -> Vec<String> {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(refs.join("manifest.json")).unwrap()).unwrap();
    let names: Vec<String> = m["chats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(!names.is_empty(), "empty reference manifest");
    names
}

fn i64s(st: &SafeTensors, name: &str) -> (Vec<i64>, Vec<usize>) {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::I64, "{name}");
    let v = t
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (v, t.shape().to_vec())
}

fn f32s(st: &SafeTensors, name: &str) -> (Vec<f32>, Vec<usize>) {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (v, t.shape().to_vec())
}

#[test]
fn encode_chat_matches_transformers() {
    let refs = refs_dir();
    let processor = Processor::from_model_dir(&refs.join("model")).unwrap();
    let mut failures = Vec::new();
    for name in chat_names(&refs) {
        let chat = Chat::from_json_file(&fixtures_dir().join(format!("{name}.json"))).unwrap();
        let enc = processor.encode_chat(&chat).unwrap();
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(refs.join(format!("{name}.json"))).unwrap())
                .unwrap();
        let bytes = std::fs::read(refs.join(format!("{name}.safetensors"))).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();

        // Rendered text: our template file via transformers, and the official templates where they apply.
        if enc.text != meta["text"].as_str().unwrap() {
            failures.push(format!(
                "{name}: rendered text differs from configs/chat_template.jinja via transformers"
            ));
        }
        for key in ["official_qwen25vl_text", "official_qwen25_hermes_text"] {
            if let Some(t) = meta.get(key).and_then(|v| v.as_str()) {
                if enc.text != t {
                    failures.push(format!("{name}: rendered text differs from {key}"));
                }
            }
        }

        let (ids, _) = i64s(&st, "input_ids");
        let ids_ok = ids == enc.input_ids;
        if !ids_ok {
            let first = ids.iter().zip(&enc.input_ids).position(|(a, b)| a != b);
            failures.push(format!(
                "{name}: input_ids differ (len ref {} vs ours {}, first mismatch at {first:?})",
                ids.len(),
                enc.input_ids.len()
            ));
        }

        let (grid, _) = i64s(&st, "image_grid_thw");
        let ours_grid: Vec<i64> = enc.image_grid_thw.iter().flatten().copied().collect();
        if grid != ours_grid {
            failures.push(format!(
                "{name}: image_grid_thw ref {grid:?} vs ours {ours_grid:?}"
            ));
        }

        let (pix, shape) = f32s(&st, "pixel_values");
        let mut max_diff = 0f32;
        let mut n_diff = 0usize;
        if pix.len() != enc.pixel_values.len() || (!pix.is_empty() && shape[1] != enc.patch_dim) {
            failures.push(format!(
                "{name}: pixel_values shape ref {shape:?} vs ours [{}, {}]",
                enc.num_patches, enc.patch_dim
            ));
        } else {
            for (a, b) in pix.iter().zip(&enc.pixel_values) {
                let d = (a - b).abs();
                max_diff = max_diff.max(d);
                n_diff += (d > 1e-6) as usize;
            }
            if max_diff > 0.02 {
                failures.push(format!("{name}: pixel_values max abs diff {max_diff} > 0.02"));
            }
        }
        println!(
            "{name}: ids {} ({}), patches {}, grids {:?}, pixel max|diff| {max_diff:.3e} ({n_diff} of {} values > 1e-6)",
            if ids_ok { "identical" } else { "DIFFERENT" },
            enc.input_ids.len(),
            enc.num_patches,
            enc.image_grid_thw,
            pix.len()
        );
    }
    assert!(failures.is_empty(), "parity failures:\n{}", failures.join("\n"));
}

#[test]
fn smart_resize_matches_transformers() {
    let refs = refs_dir();
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(refs.join("smart_resize.json")).unwrap()).unwrap();
    assert!(cases.len() > 100, "too few smart_resize cases");
    let mut errors = 0;
    for c in &cases {
        let g = |k: &str| c[k].as_u64().unwrap() as usize;
        let ours = armt_processing::smart_resize(g("h"), g("w"), 28, g("min_pixels"), g("max_pixels")).ok();
        let want = c["result"]
            .as_array()
            .map(|r| (r[0].as_u64().unwrap() as usize, r[1].as_u64().unwrap() as usize));
        errors += want.is_none() as usize;
        assert_eq!(ours, want, "smart_resize case {c}");
    }
    println!(
        "{} smart_resize cases identical ({errors} rejected by both)",
        cases.len()
    );
}

/// Tool outputs arrive as in-memory images during rollouts; they must encode exactly like the
/// same image read from disk (checked against the transformers reference of the same chat).
#[test]
fn loaded_images_encode_like_files() {
    use armt_processing::{Content, ContentPart, ImageSource};
    let refs = refs_dir();
    let name = "c05_vl_tools_zoom";
    let processor = Processor::from_model_dir(&refs.join("model")).unwrap();
    let mut chat = Chat::from_json_file(&fixtures_dir().join(format!("{name}.json"))).unwrap();
    let mut swapped = 0;
    for m in &mut chat.messages {
        if let Content::Parts(parts) = &mut m.content {
            for p in parts {
                if let ContentPart::Image(src) = p {
                    if let ImageSource::Path(path) = src {
                        *src = ImageSource::Loaded(std::sync::Arc::new(image::open(&*path).unwrap()));
                        swapped += 1;
                    }
                }
            }
        }
    }
    assert_eq!(swapped, 2);
    let enc = processor.encode_chat(&chat).unwrap();
    let bytes = std::fs::read(refs.join(format!("{name}.safetensors"))).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(i64s(&st, "input_ids").0, enc.input_ids);
    assert_eq!(f32s(&st, "pixel_values").0, enc.pixel_values);
}
