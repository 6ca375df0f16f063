//! The memory-bounded training paths against the plain ones, on a small random Qwen2.5-VL (f32,
//! CPU): activation checkpointing and chunked, recomputed log-probs give the same loss and the
//! same gradient for every parameter as full `[B, T, V]` logits with a full autograd graph;
//! padded rows through mask-free causal attention equal each row run alone.

use armt_grpo::{policy_loss, AggNorm, EntropyGrad, GrpoConfig, PolicyBatch};
use armt_model::{Qwen25Vl, Qwen25VlConfig};
use armt_processing::ProcessedImage;
use armt_train::{logprobs_rows_no_grad, policy_logprobs, token_logprobs, Example};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

const IMAGE: i64 = 290;
const VISION_START: i64 = 288;
const PAD: i64 = 0;

fn model(tied: bool) -> Qwen25Vl {
    let json = format!(
        r#"{{"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": {tied},
            "rope_scaling": {{"type": "mrope", "mrope_section": [2, 1, 1]}},
            "image_token_id": {IMAGE}, "video_token_id": 291, "vision_start_token_id": {VISION_START},
            "vision_config": {{"depth": 3, "hidden_size": 16, "intermediate_size": 24, "num_heads": 2,
              "out_hidden_size": 32, "window_size": 112, "fullatt_block_indexes": [1]}}}}"#
    );
    let cfg = Qwen25VlConfig::from_json_str(&json).unwrap();
    let mut m = Qwen25Vl::new(cfg, Device::Cpu, Kind::Float);
    m.init_random(0.2, 7);
    m
}

fn image(h: usize, w: usize, seed: i64) -> ProcessedImage {
    tch::manual_seed(seed);
    let dim = 3 * 2 * 14 * 14;
    ProcessedImage {
        pixel_values: std::sync::Arc::new(
            Vec::try_from(Tensor::randn([(h * w * dim) as i64], (Kind::Float, Device::Cpu))).unwrap(),
        ),
        grid_thw: [1, h, w],
        patch_dim: dim,
    }
}

/// A row: optional images (start, pads, end) then text; the last `response` tokens are the
/// response, every third one of them not trained (a tool's output).
fn example(images: Vec<ProcessedImage>, text: &[i64], response: usize) -> Example {
    let mut ids = Vec::new();
    for im in &images {
        ids.push(VISION_START);
        ids.extend(std::iter::repeat_n(IMAGE, im.grid_thw[1] * im.grid_thw[2] / 4));
        ids.push(VISION_START + 1);
    }
    ids.extend_from_slice(text);
    let prompt_len = ids.len() - response;
    Example {
        loss_mask: (0..response).map(|i| u8::from(i % 3 != 2)).collect(),
        ids,
        prompt_len,
        images,
    }
}

fn text(n: usize, offset: i64) -> Vec<i64> {
    (0..n as i64).map(|i| 1 + (i * 37 + offset * 11) % 280).collect()
}

fn grads(m: &Qwen25Vl) -> BTreeMap<String, Tensor> {
    m.var_store()
        .variables()
        .into_iter()
        .map(|(k, v)| {
            let g = v.grad();
            let g = if g.defined() { g.copy() } else { v.zeros_like() };
            (k, g)
        })
        .collect()
}

fn zero_grads(m: &Qwen25Vl) {
    for (_, v) in m.var_store().variables() {
        let mut g = v.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .norm()
        .double_value(&[]);
    d / b.to_kind(Kind::Double).norm().double_value(&[]).max(1e-30)
}

fn grpo() -> GrpoConfig {
    GrpoConfig {
        entropy_coeff: 0.01,
        kl_coef: 0.1,
        ..GrpoConfig::default()
    }
}

/// Old and reference log-probs near the current ones, and advantages of both signs.
fn batch_inputs(logp: &Tensor, mask: &Tensor) -> (Tensor, Tensor, Tensor) {
    tch::manual_seed(11);
    let lp = logp.detach();
    let old = (&lp + lp.randn_like() * 0.1) * mask;
    let reference = (&lp + lp.randn_like() * 0.2) * mask;
    let b = lp.size()[0];
    let adv = Tensor::from_slice(&[1.0f32, -0.5, 0.8, -1.2][..b as usize]);
    (old, reference, adv)
}

/// Loss and all gradients of the plain path: full logits, full graph.
fn plain(m: &Qwen25Vl, exs: &[&Example], norm: &AggNorm) -> (f64, BTreeMap<String, Tensor>, Tensor, Tensor) {
    zero_grads(m);
    let (logp, mask, ent) = token_logprobs(m, exs, PAD, 1 << 20, EntropyGrad::Grad).unwrap();
    let (old, reference, adv) = batch_inputs(&logp, &mask);
    let pb = PolicyBatch {
        log_probs: &logp,
        old_log_probs: &old,
        advantages: &adv,
        loss_mask: &mask,
        ref_log_probs: Some(&reference),
        entropy: ent.as_ref(),
    };
    let (loss, stats) = policy_loss(&pb, &grpo(), norm).unwrap();
    loss.backward();
    (stats.loss, grads(m), logp.detach() * &mask, mask)
}

/// The same through hidden states, chunked log-probs and (optionally) checkpointing.
fn bounded(
    m: &Qwen25Vl,
    exs: &[&Example],
    norm: &AggNorm,
    chunk: i64,
) -> (f64, BTreeMap<String, Tensor>, Tensor) {
    zero_grads(m);
    let lp = policy_logprobs(m, exs, PAD, chunk, EntropyGrad::Grad).unwrap();
    // The old/reference inputs are built from the plain path's values: same as there.
    let (old, reference, adv) = batch_inputs(&lp.logp, &lp.mask);
    let pb = PolicyBatch {
        log_probs: &lp.logp,
        old_log_probs: &old,
        advantages: &adv,
        loss_mask: &lp.mask,
        ref_log_probs: Some(&reference),
        entropy: lp.entropy.as_ref(),
    };
    let (loss, stats) = policy_loss(&pb, &grpo(), norm).unwrap();
    let values = lp.logp.detach();
    lp.backward(&loss);
    (stats.loss, grads(m), values)
}

/// Largest relative gradient error over the parameters, after checking that exactly the
/// parameters with a reference gradient got one and that all of `must_train` did.
fn max_grad_error(
    got: &BTreeMap<String, Tensor>,
    want: &BTreeMap<String, Tensor>,
    must_train: &dyn Fn(&str) -> bool,
    case: &str,
) -> f64 {
    let mut worst: f64 = 0.0;
    for (name, w) in want {
        let g = &got[name];
        if w.abs().max().double_value(&[]) == 0.0 {
            assert!(!must_train(name), "{case}: {name} has no gradient");
            assert!(
                g.abs().max().double_value(&[]) == 0.0,
                "{case}: {name} got a gradient"
            );
            continue;
        }
        worst = worst.max(rel(g, w));
    }
    worst
}

fn check(m: &mut Qwen25Vl, exs: &[&Example], what: &str) {
    let with_images = exs.iter().any(|e| !e.images.is_empty());
    let must_train = |name: &str| with_images || !name.starts_with("visual.");
    let tokens: usize = exs.iter().map(|e| e.num_trained()).sum();
    let norm = AggNorm {
        batch_num_tokens: Some(tokens as f64),
        global_batch_size: Some(exs.len() as f64),
        loss_scale_factor: None,
    };
    let (loss0, g0, logp0, mask) = plain(m, exs, &norm);
    for chunk in [3, 1 << 20] {
        m.set_grad_checkpointing(false);
        let (loss1, g1, logp1) = bounded(m, exs, &norm, chunk);
        m.set_grad_checkpointing(true);
        let (loss2, g2, logp2) = bounded(m, exs, &norm, chunk);
        // Chunked log-probs from hidden states vs full logits: the LM head's GEMMs run over
        // other shapes (other blocking), so f32 results differ in the last bits; through the
        // backward of the whole model that stays below 1e-5 relative.
        let case = format!("{what}, chunk {chunk}");
        assert!(
            rel(&logp1, &logp0) < 1e-6,
            "{case}: log-probs {:.2e}",
            rel(&logp1, &logp0)
        );
        assert!(
            ((loss1 - loss0) / loss0).abs() < 1e-6,
            "{case}: loss {loss1} vs {loss0}"
        );
        let e1 = max_grad_error(&g1, &g0, &must_train, &case);
        assert!(e1 < 1e-5, "{case}: gradients vs full logits {e1:.2e}");
        // Checkpointing vs none, same log-prob path: the recomputation repeats the same ops.
        let case = format!("{what}, chunk {chunk}, checkpointing");
        assert!(logp2.equal(&logp1), "{case}: log-probs differ");
        assert!(
            ((loss2 - loss1) / loss1).abs() <= 1e-6,
            "{case}: loss {loss2} vs {loss1}"
        );
        let e2 = max_grad_error(&g2, &g1, &must_train, &case);
        assert!(e2 <= 1e-6, "{case}: gradients vs no checkpointing {e2:.2e}");
        println!("{what}, chunk {chunk}: vs full logits {e1:.1e}, checkpointing vs not {e2:.1e}");
    }
    m.set_grad_checkpointing(false);
    // The no-grad old/reference pass: same values, in rows of each example's length.
    let rows = logprobs_rows_no_grad(m, exs, PAD, 4, 2).unwrap();
    for (b, (row, e)) in rows.iter().zip(exs).enumerate() {
        assert_eq!(row.len(), e.ids.len() - 1);
        let want = logp0.get(b as i64).narrow(0, 0, row.len() as i64);
        let got = Tensor::from_slice(row) * mask.get(b as i64).narrow(0, 0, row.len() as i64);
        assert!(rel(&got, &want) < 1e-6, "{what}: old log-probs of row {b}");
    }
}

#[test]
fn checkpointed_chunked_training_equals_the_plain_run_with_images_and_padding() {
    let mut m = model(false);
    // Row 0: a 12x8-patch image (windows of unequal size: the masked path) and a 4x4 one;
    // row 1: text only, shorter (padded); row 2: one 8x8 image (a single window).
    let e0 = example(vec![image(12, 8, 1), image(4, 4, 2)], &text(20, 0), 12);
    let e1 = example(vec![], &text(14, 1), 8);
    let e2 = example(vec![image(8, 8, 3)], &text(10, 2), 6);
    check(&mut m, &[&e0, &e1, &e2], "images + padded rows");
}

#[test]
fn checkpointed_chunked_training_equals_the_plain_run_text_only_tied() {
    let mut m = model(true);
    let e0 = example(vec![], &text(25, 3), 15);
    let e1 = example(vec![], &text(9, 4), 5);
    check(&mut m, &[&e0, &e1], "text only, tied head");
}

#[test]
fn padded_rows_without_a_mask_equal_each_row_alone() {
    let m = model(false);
    let e0 = example(vec![image(4, 8, 5)], &text(11, 5), 4);
    let e1 = example(vec![], &text(6, 6), 3);
    let (pv, grids) = armt_rollout::pixel_batch(e0.images.iter()).unwrap();
    let rows: Vec<&[i64]> = vec![&e0.ids, &e1.ids];
    let batch = tch::no_grad(|| m.forward_rows(&rows, Some(&pv), &grids, PAD)).unwrap();
    for (b, e) in [&e0, &e1].iter().enumerate() {
        let ids = Tensor::from_slice(&e.ids).view([1, -1]);
        let (pv, g) = match armt_rollout::pixel_batch(e.images.iter()) {
            Some((pv, g)) => (Some(pv), g),
            None => (None, vec![]),
        };
        let alone = tch::no_grad(|| m.forward(&ids, pv.as_ref(), &g))
            .unwrap()
            .squeeze_dim(0);
        let got = batch.get(b as i64).narrow(0, 0, e.ids.len() as i64);
        assert!(rel(&got, &alone) < 1e-5, "row {b}: {}", rel(&got, &alone));
    }
}
