//! The rollout engine: multi-turn tool flows with a scripted policy (real tools, real template),
//! and the batched KV-cache sampler on a tiny Qwen2.5-VL checked against full forwards.

use armt_data::{Judgment, Sample, StopReason, TaskKind};
use armt_model::Qwen25Vl;
use armt_processing::{render_chat, Content, ContentPart, ImageSource, Message, Processor};
use armt_rollout::{
    Chunk, Generator, ModelGenerator, RolloutConfig, RolloutEnv, SamplingConfig, ScriptedGenerator,
    LAST_TURN_MESSAGE,
};
use armt_tools::ToolRegistry;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tiny_model_dir() -> PathBuf {
    armt_testkit::refs_dir().join("model/tiny-hub/model")
}

fn zoom_sample(id: &str) -> Sample {
    Sample {
        id: id.into(),
        task: TaskKind::Zoom,
        prompt: "Which answer describes the picture better?\nAnswer 1: red.\nAnswer 2: blue.".into(),
        images: vec![repo().join("tests/fixtures/chats/images/rgb_97x61.png")],
        document: None,
        response: None,
        judgment: Judgment::Pair { candidates: 2 },
        ground_truth: "1".into(),
        source: None,
    }
}

fn encode(p: &Processor, text: &str) -> Vec<i64> {
    p.tokenizer()
        .encode(text, false)
        .unwrap()
        .get_ids()
        .iter()
        .map(|&i| i as i64)
        .collect()
}

const ZOOM_CALL: &str = "<think>Look closer.</think>\n<tool_call>\n{\"name\": \"image_zoom_in_tool\", \"arguments\": {\"image\": \"original_image\", \"bbox_2d\": [0, 0, 500, 500]}}\n</tool_call>";
const BAD_JSON: &str = "<think>Again.</think>\n<tool_call>\n{\"name\": \"image_zoom_in_tool\", \"arguments\": {bad}\n</tool_call>";
const UNKNOWN: &str = "<think>Search.</think>\n<tool_call>\n{\"name\": \"web_search\", \"arguments\": {\"query\": \"x\"}}\n</tool_call>";
const ANSWER: &str = "<think>Done.</think><answer>Overall Judgment: Answer 1 is better</answer><|im_end|>";

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

#[test]
fn batched_kv_cache_sampling_matches_full_forwards() {
    // Three rows of different lengths (one with an image), two sampling rounds with a ragged,
    // image-bearing append in between: every recorded log-prob equals the full forward's.
    let dir = tiny_model_dir();
    let model = Qwen25Vl::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let processor = Processor::from_model_dir(&dir).unwrap();
    let img = image::open(repo().join("tests/fixtures/chats/images/rgb_84x61.png")).unwrap();
    let processed = processor.image_processor().preprocess(&img).unwrap();
    let pads = processed.grid_thw.iter().product::<usize>() / 4;
    let with_image = |before: &str, after: &str| {
        let text = format!(
            "{before}<|vision_start|>{}<|vision_end|>{after}",
            "<|image_pad|>".repeat(pads)
        );
        Chunk {
            ids: encode(&processor, &text),
            images: vec![processed.clone()],
        }
    };
    let prompts = vec![
        Chunk {
            ids: encode(
                &processor,
                "<|im_start|>user\nHello there, how are you?<|im_end|>\n<|im_start|>assistant\n",
            ),
            images: vec![],
        },
        with_image(
            "<|im_start|>user\n",
            "What is this?<|im_end|>\n<|im_start|>assistant\n",
        ),
        Chunk {
            ids: encode(
                &processor,
                "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
            ),
            images: vec![],
        },
    ];
    let sampling = SamplingConfig {
        temperature: 1.0,
        top_p: 1.0,
        top_k: 0,
        seed: 7,
    };
    let mut g = ModelGenerator::new(&model, 3, sampling.clone(), 151643);
    g.append(&[0, 1, 2], &prompts).unwrap();
    let first = g.generate(&[0, 1, 2], &[5, 3, 4], &[]).unwrap();
    let tool = with_image(
        "<|im_end|>\n<|im_start|>user\n<tool_response>\n",
        "zoomed\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
    );
    let short = Chunk {
        ids: encode(
            &processor,
            "<|im_end|>\n<|im_start|>user\nok<|im_end|>\n<|im_start|>assistant\n",
        ),
        images: vec![],
    };
    g.append(&[2, 0], &[tool.clone(), short.clone()]).unwrap();
    let second = g.generate(&[0, 2], &[4, 6], &[]).unwrap();

    let _g = tch::no_grad_guard();
    let mut worst: f64 = 0.0;
    for (row, (prompt, appended, second_turn)) in [
        (0usize, (&prompts[0], Some(&short), Some(&second[0]))),
        (1, (&prompts[1], None, None)),
        (2, (&prompts[2], Some(&tool), Some(&second[1]))),
    ] {
        let mut ids = prompt.ids.clone();
        let mut images = prompt.images.clone();
        let mut checks: Vec<(usize, i64, f32)> = Vec::new(); // (position predicting, token, recorded)
        for (k, (&t, &lp)) in first[row].ids.iter().zip(&first[row].logprobs).enumerate() {
            checks.push((ids.len() - 1 + k, t, lp));
        }
        ids.extend_from_slice(&first[row].ids);
        if let (Some(chunk), Some(turn)) = (appended, second_turn) {
            ids.extend_from_slice(&chunk.ids);
            images.extend(chunk.images.iter().cloned());
            for (k, (&t, &lp)) in turn.ids.iter().zip(&turn.logprobs).enumerate() {
                checks.push((ids.len() - 1 + k, t, lp));
            }
            ids.extend_from_slice(&turn.ids);
        }
        let logp = full_logprobs(&model, &ids, &images);
        for (pos, tok, recorded) in checks {
            let want = logp.double_value(&[pos as i64, tok]);
            worst = worst.max((want - recorded as f64).abs());
        }
    }
    println!("batched KV-cache sampling vs full forward: worst |Δ log-prob| = {worst:.2e}");
    assert!(worst < 1e-4, "log-probs differ by {worst}");

    // Same seed, same samples.
    let mut again = ModelGenerator::new(&model, 3, sampling, 151643);
    again.append(&[0, 1, 2], &prompts).unwrap();
    assert_eq!(again.generate(&[0, 1, 2], &[5, 3, 4], &[]).unwrap(), first);
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
        ..RolloutConfig::default()
    };
    let env = RolloutEnv {
        processor: &processor,
        tools: &tools,
        config: &config,
        image_dir: None,
    };
    let samples = vec![zoom_sample("m1"), zoom_sample("m2")];
    let run = || {
        let mut g = ModelGenerator::new(
            &model,
            samples.len() * 2,
            SamplingConfig {
                seed: 3,
                ..SamplingConfig::default()
            },
            151643,
        );
        env.run(&mut g, &samples, 2, |_| {}).unwrap()
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
