//! The rollout engine: multi-turn tool flows with a scripted policy (real tools, real template),
//! and the batched KV-cache sampler on a tiny Qwen2.5-VL checked against full forwards.

mod common;

use armt_data::{Sample, StopReason};
use armt_model::Qwen25Vl;
use armt_processing::{render_chat, Content, ContentPart, ImageSource, Message, Processor};
use armt_rollout::{
    CachePlan, Chunk, Generator, ModelGenerator, RolloutConfig, RolloutEnv, RowRng, Sampled, SamplingConfig,
    ScriptedGenerator, LAST_TURN_MESSAGE,
};
use armt_tools::ToolRegistry;
use common::{encode, repo, tiny_model_dir, ANSWER, BAD_JSON};
use std::collections::BTreeMap;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

fn zoom_sample(id: &str) -> Sample {
    common::zoom_sample(
        id,
        "rgb_97x61.png",
        "Which answer describes the picture better?\nAnswer 1: red.\nAnswer 2: blue.",
    )
}

const ZOOM_CALL: &str = "<think>Look closer.</think>\n<tool_call>\n{\"name\": \"image_zoom_in_tool\", \"arguments\": {\"image\": \"original_image\", \"bbox_2d\": [0, 0, 500, 500]}}\n</tool_call>";
const UNKNOWN: &str = "<think>Search.</think>\n<tool_call>\n{\"name\": \"web_search\", \"arguments\": {\"query\": \"x\"}}\n</tool_call>";

#[test]
fn scripted_multi_turn_flows_tools_errors_and_limits() {
    let processor = Processor::from_model_dir(&tiny_model_dir()).unwrap();
    let tools = ToolRegistry::from_yaml_file(repo().join("configs/tools/all.yaml")).unwrap();
    let config = RolloutConfig {
        max_turns: 3,
        max_turn_tokens: 64,
        ..RolloutConfig::default()
    };
    let env = RolloutEnv {
        processor: &processor,
        tools: &tools,
        config: &config,
        image_dir: None,
    };
    let samples = vec![zoom_sample("a"), zoom_sample("b")];
    let script = |turns: &[&str]| turns.iter().map(|t| encode(&processor, t)).collect::<Vec<_>>();
    let long_turn = "<think>".to_string() + &"word ".repeat(200);
    let mut generator = ScriptedGenerator::new(vec![
        // a/0: zoom (runs), malformed JSON (error text back), answer.
        script(&[ZOOM_CALL, BAD_JSON, ANSWER]),
        // a/1: keeps calling tools: two run, the third is refused with the last-turn message.
        script(&[ZOOM_CALL, ZOOM_CALL, ZOOM_CALL, ANSWER]),
        // b/0: unknown tool, then answers.
        script(&[UNKNOWN, ANSWER]),
        // b/1: never stops talking: the per-turn token budget ends it.
        script(&[&long_turn]),
    ]);
    let rollouts = env.run(&mut generator, &samples, 2, |_| {}).unwrap();
    assert_eq!(rollouts.len(), 4);

    let a0 = &rollouts[0].trajectory;
    assert_eq!(a0.stop_reason, StopReason::Answered);
    assert_eq!(a0.turns.len(), 3);
    let zoom = a0.turns[0].tool_call.as_ref().expect("the zoom ran");
    assert!(
        zoom.success
            && zoom
                .result_text
                .starts_with("This is the zoom-in image `observation_1`"),
        "{zoom:?}"
    );
    assert_eq!(zoom.result_images, vec!["observation_1".to_string()]);
    let err = a0.turns[1].tool_error.as_ref().expect("malformed call reported");
    assert!(err.contains("not valid JSON"), "{err}");
    assert_eq!(
        rollouts[0].images.len(),
        2,
        "original image + one zoom observation"
    );
    assert!(a0.final_text.contains("Answer 1 is better"));

    let a1 = &rollouts[1].trajectory;
    assert_eq!(a1.stop_reason, StopReason::MaxTurns);
    assert_eq!(
        a1.tool_calls().count(),
        2,
        "tool calls in the first max_turns - 1 turns run"
    );
    assert_eq!(a1.turns.len(), 4, "the refused call is followed by one more turn");
    assert_eq!(
        a1.tool_calls().last().unwrap().result_images,
        vec!["observation_2".to_string()]
    );
    let last_tool_text = processor.tokenizer().decode(
        &generator_appended_ids(&generator, 1)
            .iter()
            .map(|&i| i as u32)
            .collect::<Vec<_>>(),
        false,
    );
    assert!(last_tool_text.unwrap().contains(LAST_TURN_MESSAGE));

    let b0 = &rollouts[2].trajectory;
    assert_eq!(b0.stop_reason, StopReason::Answered);
    assert!(b0.turns[0]
        .tool_error
        .as_ref()
        .unwrap()
        .contains("Unknown tool 'web_search'"));

    let b1 = &rollouts[3].trajectory;
    assert_eq!(b1.stop_reason, StopReason::MaxTokens);
    assert_eq!(b1.response_len(), 64);

    // Masks: 1 exactly on what the policy wrote.
    for r in &rollouts {
        let t = &r.trajectory;
        assert_eq!(t.loss_mask.len(), t.response_len());
        assert_eq!(t.logprobs.len(), t.response_len());
        let written: usize = t
            .turns
            .iter()
            .map(|turn| encode(&processor, &turn.assistant_text).len())
            .sum();
        let ones = t.loss_mask.iter().filter(|&&m| m == 1).count();
        // Each turn's stop token (<|im_end|>) is written by the policy but not part of the text.
        let stops = t.turns.iter().filter(|_| true).count();
        assert!(
            ones >= written && ones <= written + stops,
            "mask ones {ones}, written {written}"
        );
    }
}

/// The ids of the last chunk appended to a row (the scripted generator keeps them).
fn generator_appended_ids(g: &ScriptedGenerator, row: usize) -> Vec<i64> {
    g.appended[row].last().unwrap().ids.clone()
}

#[test]
fn rendered_context_equals_the_chat_template_rendering() {
    // The token ids a rollout builds turn by turn equal the chat template's rendering of the same
    // conversation as messages, tokenized in one go.
    let processor = Processor::from_model_dir(&tiny_model_dir()).unwrap();
    let tools = ToolRegistry::from_yaml_file(repo().join("configs/tools/all.yaml")).unwrap();
    let config = RolloutConfig::default();
    let env = RolloutEnv {
        processor: &processor,
        tools: &tools,
        config: &config,
        image_dir: None,
    };
    let sample = zoom_sample("render");
    let mut generator = ScriptedGenerator::new(vec![vec![
        encode(&processor, ZOOM_CALL),
        encode(&processor, BAD_JSON),
        encode(&processor, ANSWER),
    ]]);
    let rollout = env
        .run(&mut generator, std::slice::from_ref(&sample), 1, |_| {})
        .unwrap()
        .remove(0);
    let t = &rollout.trajectory;

    let mut messages = env.prompt_messages(&sample);
    let zoom = t.turns[0].tool_call.as_ref().unwrap();
    let crop = image_of_observation(&rollout, 1);
    messages.push(Message::new(
        "assistant",
        Content::Text(t.turns[0].assistant_text.clone()),
    ));
    messages.push(Message::new(
        "tool",
        Content::Parts(vec![
            ContentPart::Image(ImageSource::Loaded(crop)),
            ContentPart::Text(zoom.result_text.clone()),
        ]),
    ));
    messages.push(Message::new(
        "assistant",
        Content::Text(t.turns[1].assistant_text.clone()),
    ));
    messages.push(Message::new(
        "tool",
        Content::Text(t.turns[1].tool_error.clone().unwrap()),
    ));
    messages.push(Message::new(
        "assistant",
        Content::Text(t.turns[2].assistant_text.clone()),
    ));
    let text = render_chat(&messages, Some(&tools.schemas()), false);
    // Expand each image's pad as the processor does, with the grids the rollout used.
    let mut expanded = String::new();
    let mut parts = text.split("<|image_pad|>");
    expanded.push_str(parts.next().unwrap());
    for (k, part) in parts.enumerate() {
        let g = rollout.images[k].grid_thw;
        expanded.push_str(&"<|image_pad|>".repeat(g[0] * g[1] * g[2] / 4));
        expanded.push_str(part);
    }
    let mut want = encode(&processor, &expanded);
    // The template closes the final turn with "\n" after <|im_end|>; generation stops at <|im_end|>.
    assert_eq!(want.pop(), Some(encode(&processor, "\n")[0]));
    assert_eq!(t.token_ids, want);
}

/// Re-creates observation k the way the zoom tool made it (the rollout keeps only pixels).
fn image_of_observation(rollout: &armt_rollout::Rollout, k: usize) -> Arc<image::DynamicImage> {
    let zoom = rollout.trajectory.tool_calls().nth(k - 1).unwrap();
    let tools = ToolRegistry::from_yaml_file(repo().join("configs/tools/zoom.yaml")).unwrap();
    let mut ctx = armt_tools::ToolContext::from_sample(&zoom_sample("x"));
    let call = armt_tools::ParsedToolCall {
        name: zoom.name.clone(),
        arguments: zoom.arguments.clone(),
    };
    tools.call(&call, &mut ctx).images.remove(0)
}

fn full_logprobs(model: &Qwen25Vl, ids: &[i64], images: &[armt_processing::ProcessedImage]) -> Tensor {
    let (pv, grid) = match armt_rollout::pixel_batch(images) {
        Some((pv, grid)) => (Some(pv), grid),
        None => (None, Vec::new()),
    };
    let logits = model
        .forward(&Tensor::from_slice(ids).view([1, -1]), pv.as_ref(), &grid)
        .unwrap();
    logits.squeeze_dim(0).log_softmax(-1, Kind::Float)
}

/// Prompts and tool turns for the generator-level tests: three prompts of different lengths
/// (one with an image) and two tool turns (one adding an image).
struct Pieces {
    prompts: Vec<Chunk>,
    tool_image: Chunk,
    tool_text: Chunk,
}

fn pieces(processor: &Processor) -> Pieces {
    let img = image::open(repo().join("tests/fixtures/chats/images/rgb_84x61.png")).unwrap();
    let processed = processor.image_processor().preprocess(&img).unwrap();
    let pads = processed.grid_thw.iter().product::<usize>() / 4;
    let with_image = |before: &str, after: &str| {
        let text = format!(
            "{before}<|vision_start|>{}<|vision_end|>{after}",
            "<|image_pad|>".repeat(pads)
        );
        Chunk {
            ids: encode(processor, &text),
            images: vec![processed.clone()],
            ..Default::default()
        }
    };
    let text = |t: &str| Chunk {
        ids: encode(processor, t),
        ..Default::default()
    };
    Pieces {
        prompts: vec![
            text("<|im_start|>user\nHello there, how are you?<|im_end|>\n<|im_start|>assistant\n"),
            with_image(
                "<|im_start|>user\n",
                "What is this?<|im_end|>\n<|im_start|>assistant\n",
            ),
            text("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        ],
        tool_image: with_image(
            "<|im_end|>\n<|im_start|>user\n<tool_response>\n",
            "zoomed\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
        ),
        tool_text: text("<|im_end|>\n<|im_start|>user\nok<|im_end|>\n<|im_start|>assistant\n"),
    }
}

/// What one row did: its prompt, then (sampled turn, appended chunk)… as a flat record.
#[derive(Debug, Clone, Default)]
struct RowLog {
    prompt: usize,
    turns: Vec<Sampled>,
    appended: Vec<Chunk>,
}

/// Drives a `ModelGenerator` through a fixed script: groups of `n` rows per prompt, two turns
/// per row with a tool turn in between (an image for even rows, text for odd ones), groups
/// admitted as blocks free up. Returns each row's log, keyed by row id.
fn drive(
    model: &Qwen25Vl,
    p: &Pieces,
    n: usize,
    blocks: usize,
    sync_every: usize,
    prefill_chunk: usize,
    seed: u64,
) -> (BTreeMap<usize, RowLog>, usize) {
    let sampling = SamplingConfig {
        temperature: 1.0,
        top_p: 0.95,
        top_k: 50,
        seed,
    };
    let mut g = ModelGenerator::new(model, sampling, 151643);
    let plan = CachePlan {
        groups: blocks,
        rows_per_group: n,
        prefix_tokens: p.prompts.iter().map(|c| c.ids.len()).max().unwrap(),
        suffix_tokens: 200,
        turn_tokens: 7,
        prefill_chunk,
        sync_every,
    };
    g.prepare(&plan).unwrap();
    let budgets = [5usize, 3, 7, 4, 6, 2];
    let mut logs: BTreeMap<usize, RowLog> = BTreeMap::new();
    let mut queue: Vec<usize> = (0..p.prompts.len()).rev().collect();
    let mut free: Vec<usize> = (0..blocks).rev().collect();
    let mut left = vec![0usize; blocks];
    let mut block_of = BTreeMap::new();
    let mut live = 0;
    loop {
        while let (Some(&k), Some(&b)) = (queue.last(), free.last()) {
            queue.pop();
            free.pop();
            let rows: Vec<(usize, RowRng)> = (0..n)
                .map(|j| (k * n + j, RowRng::new(seed, 1, k as u64, j as u64)))
                .collect();
            g.add_group(b, &p.prompts[k], &rows).unwrap();
            left[b] = n;
            block_of.insert(k, b);
            for (row, _) in rows {
                logs.insert(
                    row,
                    RowLog {
                        prompt: k,
                        ..RowLog::default()
                    },
                );
                g.begin_turn(row, budgets[row % budgets.len()]).unwrap();
                live += 1;
            }
        }
        if live == 0 {
            break;
        }
        let ended = g.step(&[]).unwrap();
        let mut appends = (Vec::new(), Vec::new());
        for (row, turn) in ended {
            let log = logs.get_mut(&row).unwrap();
            log.turns.push(turn);
            if log.turns.len() == 1 {
                let chunk = if row % 2 == 0 {
                    p.tool_image.clone()
                } else {
                    p.tool_text.clone()
                };
                log.appended.push(chunk.clone());
                appends.0.push(row);
                appends.1.push(chunk);
            } else {
                g.release(row);
                live -= 1;
                let b = block_of[&(row / n)];
                left[b] -= 1;
                if left[b] == 0 {
                    free.push(b);
                }
            }
        }
        g.append(&appends.0, &appends.1).unwrap();
        for &row in &appends.0 {
            g.begin_turn(row, budgets[(row + 3) % budgets.len()]).unwrap();
        }
    }
    (logs, g.allocated_kv_tokens())
}

#[test]
fn slot_cache_sampling_matches_full_forwards_and_ignores_batching() {
    // Groups of two rows share one prefilled prompt; rows get tool turns (with and without an
    // image) and a second turn; groups enter as earlier ones leave. Every recorded log-prob equals
    // the full forward's, and the sampled tokens are the same whatever the number of resident
    // groups, the sync interval and the prefill chunk.
    let dir = tiny_model_dir();
    let model = Qwen25Vl::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let processor = Processor::from_model_dir(&dir).unwrap();
    let p = pieces(&processor);
    let (logs, allocated) = drive(&model, &p, 2, 3, 4, 2048, 7);
    assert_eq!(logs.len(), 6);
    let max_prompt = p.prompts.iter().map(|c| c.ids.len()).max().unwrap();
    assert!(
        allocated <= 3 * (max_prompt + 2 * 200),
        "{allocated} positions allocated"
    );

    let _g = tch::no_grad_guard();
    let mut worst: f64 = 0.0;
    for log in logs.values() {
        let mut ids = p.prompts[log.prompt].ids.clone();
        let mut images = p.prompts[log.prompt].images.clone();
        let mut checks: Vec<(usize, i64, f32)> = Vec::new(); // (position predicting, token, recorded)
        for (k, turn) in log.turns.iter().enumerate() {
            assert!(!turn.ids.is_empty());
            for (j, (&t, &lp)) in turn.ids.iter().zip(&turn.logprobs).enumerate() {
                checks.push((ids.len() - 1 + j, t, lp));
            }
            ids.extend_from_slice(&turn.ids);
            if let Some(chunk) = log.appended.get(k) {
                ids.extend_from_slice(&chunk.ids);
                images.extend(chunk.images.iter().cloned());
            }
        }
        let logp = full_logprobs(&model, &ids, &images);
        for (pos, tok, recorded) in checks {
            let want = logp.double_value(&[pos as i64, tok]);
            worst = worst.max((want - recorded as f64).abs());
        }
    }
    println!("slot-cache sampling vs full forward: worst |Δ log-prob| = {worst:.2e}");
    assert!(worst < 1e-4, "log-probs differ by {worst}");

    let tokens = |l: &BTreeMap<usize, RowLog>| -> Vec<Vec<Vec<i64>>> {
        l.values()
            .map(|r| r.turns.iter().map(|t| t.ids.clone()).collect())
            .collect()
    };
    for (blocks, sync_every, chunk) in [(1, 1, 5), (2, 3, 16), (3, 8, 2048)] {
        let (other, _) = drive(&model, &p, 2, blocks, sync_every, chunk, 7);
        assert_eq!(
            tokens(&other),
            tokens(&logs),
            "blocks {blocks}, sync {sync_every}, chunk {chunk}"
        );
        for (a, b) in other.values().zip(logs.values()) {
            for (x, y) in a.turns.iter().zip(&b.turns) {
                for (u, v) in x.logprobs.iter().zip(&y.logprobs) {
                    assert!((u - v).abs() < 1e-4, "{u} vs {v}");
                }
            }
        }
    }
    let (other_seed, _) = drive(&model, &p, 2, 3, 4, 2048, 8);
    assert_ne!(
        tokens(&other_seed),
        tokens(&logs),
        "another seed draws other tokens"
    );
}

fn env_run(
    model: &Qwen25Vl,
    processor: &Processor,
    tools: &ToolRegistry,
    samples: &[Sample],
    config: &RolloutConfig,
    n: usize,
) -> (armt_rollout::RunOutcome, usize) {
    let env = RolloutEnv {
        processor,
        tools,
        config,
        image_dir: None,
    };
    let mut g = ModelGenerator::new(model, config.sampling.clone(), 151643);
    let groups: Vec<u64> = (0..samples.len() as u64).map(|k| 10 + k).collect();
    let out = env
        .run_keyed(&mut g, samples, n, 5, Some(&groups), |_| {})
        .unwrap();
    (out, g.allocated_kv_tokens())
}

#[test]
fn model_rollouts_do_not_depend_on_max_rows_or_max_batch_tokens() {
    // Ragged prompts (different lengths), groups of three, rows ending at different times, groups
    // queued and admitted as others finish: the same trajectories whatever the limits, and the KV
    // cache never holds more than max_batch_tokens positions.
    let dir = tiny_model_dir();
    let model = Qwen25Vl::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let processor = Processor::from_model_dir(&dir).unwrap();
    let tools = ToolRegistry::from_yaml_file(repo().join("configs/tools/zoom.yaml")).unwrap();
    let mut samples = vec![
        zoom_sample("r0"),
        zoom_sample("r1"),
        zoom_sample("r2"),
        zoom_sample("r3"),
    ];
    for (k, s) in samples.iter_mut().enumerate() {
        s.prompt.push_str(&" More detail.".repeat(k * 3));
    }
    let base = RolloutConfig {
        max_turns: 2,
        max_turn_tokens: 9,
        max_response_tokens: 14,
        sampling: SamplingConfig {
            seed: 11,
            top_p: 0.9,
            ..SamplingConfig::default()
        },
        ..RolloutConfig::default()
    };
    let (reference, _) = env_run(&model, &processor, &tools, &samples, &base, 3);
    assert!(reference.skipped.is_empty());
    assert_eq!(reference.rollouts.len(), 12);
    let prompt_max = reference
        .rollouts
        .iter()
        .map(|r| r.trajectory.prompt_len)
        .max()
        .unwrap();
    let per_group = prompt_max + 3 * 15;
    for (max_rows, max_batch_tokens, sync_every) in [
        (3, 1 << 20, 8),
        (6, 1 << 20, 1),
        (64, per_group, 3),
        (64, 2 * per_group + 5, 5),
    ] {
        let config = RolloutConfig {
            max_rows,
            max_batch_tokens,
            sync_every,
            prefill_chunk: 37,
            ..base.clone()
        };
        let (other, allocated) = env_run(&model, &processor, &tools, &samples, &config, 3);
        assert!(allocated <= max_batch_tokens, "{allocated} > {max_batch_tokens}");
        assert_eq!(other.rollouts.len(), 12);
        for (x, y) in other.rollouts.iter().zip(&reference.rollouts) {
            let (a, b) = (&x.trajectory, &y.trajectory);
            assert_eq!(
                a.token_ids, b.token_ids,
                "max_rows {max_rows}, max_batch_tokens {max_batch_tokens}"
            );
            assert_eq!(
                (a.sample_id.as_str(), a.group_index),
                (b.sample_id.as_str(), b.group_index)
            );
            for (u, v) in a.logprobs.iter().zip(&b.logprobs) {
                assert!((u - v).abs() < 1e-4);
            }
        }
    }
    // The rows of a group differ (their own streams), and lengths vary (some stop early).
    let first: Vec<&Vec<i64>> = reference.rollouts[..3]
        .iter()
        .map(|r| &r.trajectory.token_ids)
        .collect();
    assert!(first[0] != first[1] && first[1] != first[2]);

    // A prompt that can never fit is skipped (and counted); the others run.
    let mut long = zoom_sample("long");
    long.prompt.push_str(&" Far too much detail.".repeat(60));
    let mixed = vec![samples[0].clone(), long, samples[1].clone()];
    let config = RolloutConfig {
        max_batch_tokens: per_group + 40,
        ..base.clone()
    };
    let (out, allocated) = env_run(&model, &processor, &tools, &mixed, &config, 3);
    assert_eq!(out.skipped, vec![1]);
    assert_eq!(out.rollouts.len(), 6);
    assert!(out.rollouts.iter().all(|r| r.group != 1));
    assert!(allocated <= per_group + 40);
}

#[test]
fn scripted_rollouts_do_not_depend_on_max_rows() {
    let processor = Processor::from_model_dir(&tiny_model_dir()).unwrap();
    let tools = ToolRegistry::from_yaml_file(repo().join("configs/tools/all.yaml")).unwrap();
    let samples = vec![zoom_sample("a"), zoom_sample("b"), zoom_sample("c")];
    let script = |turns: &[&str]| turns.iter().map(|t| encode(&processor, t)).collect::<Vec<_>>();
    let scripts = || {
        vec![
            script(&[ZOOM_CALL, ANSWER]),
            script(&[ANSWER]),
            script(&[UNKNOWN, ZOOM_CALL, ANSWER]),
            script(&[BAD_JSON, ANSWER]),
            script(&[ZOOM_CALL, ZOOM_CALL, ANSWER]),
            script(&[ANSWER]),
        ]
    };
    let run = |max_rows: usize| {
        let config = RolloutConfig {
            max_turns: 3,
            max_rows,
            ..RolloutConfig::default()
        };
        let env = RolloutEnv {
            processor: &processor,
            tools: &tools,
            config: &config,
            image_dir: None,
        };
        let mut g = ScriptedGenerator::new(scripts());
        env.run(&mut g, &samples, 2, |_| {}).unwrap()
    };
    // Tool timings differ from run to run; everything else must not.
    let untimed = |mut t: armt_data::Trajectory| {
        for turn in &mut t.turns {
            if let Some(c) = turn.tool_call.as_mut() {
                c.duration_ms = 0.0;
            }
        }
        t
    };
    let a = run(2);
    let b = run(64);
    assert_eq!(a.len(), 6);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(untimed(x.trajectory.clone()), untimed(y.trajectory.clone()));
        assert_eq!(x.images.len(), y.images.len());
    }
    assert_eq!(a[4].images.len(), 3, "prompt image and two zooms");
}

#[test]
fn model_rollouts_are_reproducible_and_well_formed() {
    let dir = tiny_model_dir();
    let model = Qwen25Vl::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let processor = Processor::from_model_dir(&dir).unwrap();
    let tools = ToolRegistry::from_yaml_file(repo().join("configs/tools/zoom.yaml")).unwrap();
    let config = RolloutConfig {
        max_turns: 2,
        max_turn_tokens: 8,
        max_response_tokens: 12,
        sampling: SamplingConfig {
            seed: 3,
            ..SamplingConfig::default()
        },
        ..RolloutConfig::default()
    };
    let samples = vec![zoom_sample("m1"), zoom_sample("m2")];
    let run = || {
        env_run(&model, &processor, &tools, &samples, &config, 2)
            .0
            .rollouts
    };
    let (a, b) = (run(), run());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.trajectory, y.trajectory);
        let t = &x.trajectory;
        assert!(t.response_len() > 0 && t.response_len() <= 12);
        assert_eq!(t.loss_mask.len(), t.response_len());
        assert!(t.logprobs.iter().all(|l| l.is_finite() && *l <= 0.0));
    }
}
