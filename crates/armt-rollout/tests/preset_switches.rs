//! The switches the paper-exact preset turns on (`rollout.end_on_malformed_call`,
//! `rollout.tools_see_resized_images`) and the prompt-length filter the trainer applies before
//! the first step, with a scripted policy and the real tools and template.

mod common;

use armt_data::StopReason;
use armt_rollout::{RolloutConfig, RolloutEnv, ScriptedGenerator};
use armt_tools::{ToolContext, ToolRegistry};
use common::{encode, processor, repo, zoom_sample, ANSWER, BAD_JSON};
use std::path::Path;
use std::sync::Arc;

const ZOOM_CALL: &str = "<think>Look closer.</think>\n<tool_call>\n{\"name\": \"image_zoom_in_tool\", \"arguments\": {\"image\": \"original_image\", \"bbox_2d\": [100, 150, 700, 800]}}\n</tool_call>";

fn zoom_tools() -> ToolRegistry {
    ToolRegistry::from_yaml_file(repo().join("configs/tools/zoom.yaml")).unwrap()
}

#[test]
fn a_malformed_call_ends_the_rollout_only_when_switched_on() {
    let processor = processor();
    let tools = zoom_tools();
    let samples = vec![zoom_sample("a", "rgb_97x61.png", "Which answer is better?")];
    for end in [false, true] {
        let config = RolloutConfig {
            max_turns: 3,
            max_turn_tokens: 64,
            end_on_malformed_call: end,
            ..RolloutConfig::default()
        };
        let env = RolloutEnv {
            processor: &processor,
            tools: &tools,
            config: &config,
            image_dir: None,
        };
        let mut g = ScriptedGenerator::new(vec![vec![
            encode(&processor, BAD_JSON),
            encode(&processor, ANSWER),
        ]]);
        let t = env.run(&mut g, &samples, 1, |_| {}).unwrap().remove(0).trajectory;
        assert!(
            t.turns[0].tool_error.as_deref().unwrap().contains("Error"),
            "{:?}",
            t.turns[0]
        );
        if end {
            // Stopped at the malformed turn: no tool turn was appended after it.
            assert_eq!(t.stop_reason, StopReason::MalformedToolCall);
            assert_eq!(t.turns.len(), 1);
            assert_eq!(g.appended[0].len(), 1, "only the prompt");
            assert_eq!(t.final_text, t.turns[0].assistant_text);
        } else {
            assert_eq!(t.stop_reason, StopReason::Answered);
            assert_eq!(t.turns.len(), 2);
        }
    }
}

/// PIL's `Image.open(path).convert("RGB").resize((w, h), BICUBIC)` bytes.
fn pil_resized(path: &Path, w: u32, h: u32) -> Vec<u8> {
    let out = std::process::Command::new(armt_testkit::python())
        .args([
            "-c",
            "import sys; from PIL import Image; im = Image.open(sys.argv[1]).convert('RGB').resize((int(sys.argv[2]), int(sys.argv[3])), Image.BICUBIC); sys.stdout.buffer.write(im.tobytes())",
        ])
        .arg(path)
        .arg(w.to_string())
        .arg(h.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn zoom_crops_the_resized_image_when_switched_on() {
    let processor = processor();
    let tools = zoom_tools();
    let image = "rgb_150x120.png";
    let samples = vec![zoom_sample("a", image, "Which answer is better?")];
    let original = image::open(&samples[0].images[0]).unwrap();
    let resized = processor.image_processor().resized(&original).unwrap();
    // The processor's resize is PIL's bicubic to smart_resize's size.
    assert_ne!(
        (resized.width(), resized.height()),
        (original.width(), original.height())
    );
    assert_eq!(
        resized.to_rgb8().into_raw(),
        pil_resized(&samples[0].images[0], resized.width(), resized.height())
    );
    // What the zoom tool returns for the call on each version of the image, preprocessed.
    let call = armt_tools::parse_tool_call(ZOOM_CALL).unwrap().unwrap();
    let crop_of = |img: image::DynamicImage| {
        let mut ctx = ToolContext::from_sample(&samples[0]);
        ctx.add_image("original_image", Arc::new(img));
        let out = tools.call(&call, &mut ctx);
        assert!(out.success, "{}", out.text);
        processor.image_processor().preprocess(&out.images[0]).unwrap()
    };
    let (crop_original, crop_resized) = (crop_of(original.clone()), crop_of(resized.clone()));
    assert_ne!(crop_original.grid_thw, crop_resized.grid_thw);
    let mut prompts = Vec::new();
    for switch in [false, true] {
        let config = RolloutConfig {
            max_turns: 3,
            max_turn_tokens: 64,
            tools_see_resized_images: switch,
            ..RolloutConfig::default()
        };
        let env = RolloutEnv {
            processor: &processor,
            tools: &tools,
            config: &config,
            image_dir: None,
        };
        let mut g = ScriptedGenerator::new(vec![vec![
            encode(&processor, ZOOM_CALL),
            encode(&processor, ANSWER),
        ]]);
        let t = env.run(&mut g, &samples, 1, |_| {}).unwrap().remove(0).trajectory;
        assert!(t.turns[0].tool_call.as_ref().unwrap().success);
        let got = &g.appended[0][1].images[0];
        let want = if switch { &crop_resized } else { &crop_original };
        assert_eq!(got.grid_thw, want.grid_thw, "switch {switch}");
        assert_eq!(got.pixel_values, want.pixel_values, "switch {switch}");
        prompts.push(g.appended[0][0].clone());
    }
    // The model's own input is the same either way (resizing a resized image changes nothing).
    assert_eq!(prompts[0].ids, prompts[1].ids);
    assert_eq!(
        prompts[0].images[0].pixel_values,
        prompts[1].images[0].pixel_values
    );
}

#[test]
fn prompt_lengths_match_the_rollout_and_overlong_prompts_are_named() {
    let processor = processor();
    let tools = zoom_tools();
    let samples = vec![
        zoom_sample("short", "rgb_97x61.png", "Which answer is better?"),
        zoom_sample("big-image", "rgb_150x120.png", "Which answer is better?"),
        zoom_sample("long-text", "grey_40x33.png", &"many words ".repeat(300)),
    ];
    let mut config = RolloutConfig {
        max_turn_tokens: 4,
        max_response_tokens: 4,
        ..RolloutConfig::default()
    };
    let base = config.clone();
    let env = RolloutEnv {
        processor: &processor,
        tools: &tools,
        config: &base,
        image_dir: None,
    };
    // The count without decoding pixels equals the prompt the rollout encodes.
    let mut g = ScriptedGenerator::new(vec![vec![encode(&processor, ANSWER)]; 3]);
    env.run(&mut g, &samples, 1, |_| {}).unwrap();
    let lens: Vec<usize> = samples.iter().map(|s| env.prompt_len(s).unwrap()).collect();
    for (k, len) in lens.iter().enumerate() {
        assert_eq!(*len, g.appended[k][0].ids.len(), "{}", samples[k].id);
    }
    assert!(lens[0] < lens[1] && lens[1] < lens[2], "{lens:?}");
    // max_context between the short prompts and the long one drops only the long one; the
    // prompt length itself does not fit either (a prompt must leave room to generate).
    let overlong = |config: RolloutConfig, n: usize| {
        let env = RolloutEnv {
            processor: &processor,
            tools: &tools,
            config: &config,
            image_dir: None,
        };
        env.overlong_prompts(&samples, n, None).unwrap()
    };
    config.max_context = lens[2];
    assert_eq!(overlong(config.clone(), 1), vec![2]);
    config.max_context = lens[1];
    assert_eq!(overlong(config.clone(), 1), vec![1, 2]);
    // One group of n rows over max_batch_tokens: also never admissible.
    config.max_context = 1 << 20;
    config.max_batch_tokens = lens[1] + 2 * (config.max_response_tokens + 1);
    assert_eq!(overlong(config.clone(), 2), vec![2]);
    // A prompt-length limit (verl's max_prompt_length): over it is dropped, at it is kept.
    config.max_batch_tokens = 1 << 20;
    let env = RolloutEnv {
        processor: &processor,
        tools: &tools,
        config: &config,
        image_dir: None,
    };
    assert_eq!(env.overlong_prompts(&samples, 1, Some(lens[1])).unwrap(), vec![2]);
    assert_eq!(
        env.overlong_prompts(&samples, 1, Some(lens[0])).unwrap(),
        vec![1, 2]
    );
}
