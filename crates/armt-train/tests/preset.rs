//! The paper-exact preset: both configs load, stage 2 routes rewards as the original, and its
//! tools present schemas and validator outputs as the original's do.

use armt_tools::{ParsedToolCall, ToolContext, ToolRegistry};
use armt_train::TrainConfig;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn preset_configs_load() {
    for st in [1u8, 2] {
        let cfg = TrainConfig::load(
            Some(&repo().join(format!("configs/arm-thinker-7b-stage{st}.toml"))),
            &[],
        )
        .unwrap();
        assert_eq!(cfg.stage, st);
        assert_eq!((cfg.train.prompts_per_step, cfg.train.mini_batches), (512, 2));
        assert_eq!(cfg.rollout.n, 16);
        assert_eq!(cfg.optim.lr, 2e-6);
        assert_eq!(cfg.rollout.cot_prompt, "");
        assert!(cfg.rollout.end_on_malformed_call && cfg.rollout.tools_see_resized_images);
        assert_eq!(cfg.data.max_prompt_tokens, 65000);
    }
    // armt's own configs keep armt's behaviour.
    let own = TrainConfig::load(Some(&repo().join("configs/qwen2.5-vl-7b-stage2.toml")), &[]).unwrap();
    assert!(!own.rollout.end_on_malformed_call && !own.rollout.tools_see_resized_images);
    assert_eq!(own.data.max_prompt_tokens, 0);
    let s2 = TrainConfig::load(Some(&repo().join("configs/arm-thinker-7b-stage2.toml")), &[]).unwrap();
    assert_eq!(s2.reward.sources["llava_critic"], "llava_critic_v2");
    assert_eq!(s2.reward.sources["deepeyes_crop"], "v8");
}

#[test]
fn preset_tools_render_as_the_original() {
    let rl = ToolRegistry::from_yaml_file(repo().join("configs/tools/arm-thinker-rl.yaml")).unwrap();
    assert_eq!(rl.names(), vec!["image_zoom_in_tool"]);
    let mut line = String::new();
    armt_processing::write_py_json(&mut line, &rl.schemas()[0]);
    // What `json.dumps(tool_schema.model_dump(exclude_unset=True, exclude_none=True))` gives for
    // the original's zoom tool: properties carry only type and description.
    assert_eq!(
        line,
        "{\"type\": \"function\", \"function\": {\"name\": \"image_zoom_in_tool\", \"description\": \"Zoom in on a region of an image using relative coordinates in [0, 1000]. For example, to zoom in on the center 50%, use [250, 250, 750, 750].\", \"parameters\": {\"type\": \"object\", \"properties\": {\"image\": {\"type\": \"string\", \"description\": \"The image to zoom in on (e.g., `original_image`, `observation_1`, `observation_2`, ...).\"}, \"bbox_2d\": {\"type\": \"array\", \"description\": \"Bounding box [x1, y1, x2, y2] with values between 0 and 1000, where (x1, y1) = top-left, (x2, y2) = bottom-right.\"}}, \"required\": [\"image\", \"bbox_2d\"]}}}"
    );

    let eval = ToolRegistry::from_yaml_file(repo().join("configs/tools/arm-thinker-eval.yaml")).unwrap();
    assert_eq!(eval.len(), 22);
    let mut ctx = ToolContext::new();
    ctx.set_text("text_0", "One paragraph.\n\nTwo paragraphs.");
    let call = ParsedToolCall {
        name: "check_whether_response_paragraph_number_in_range".into(),
        arguments: serde_json::json!({"response": "text_0", "lower_bound": 1, "upper_bound": 2}),
    };
    assert_eq!(eval.call(&call, &mut ctx).text, "Check result: True");
    let own = ToolRegistry::from_yaml_file(repo().join("configs/tools/all.yaml")).unwrap();
    assert!(own
        .call(&call, &mut ctx)
        .text
        .starts_with("Check result: True\nReason: "));
}
