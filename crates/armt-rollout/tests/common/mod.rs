//! Shared by the rollout engine's integration tests: the tiny model and its processor, the
//! tokens of a text, a zoom sample on a fixture image, and scripted turns the tests replay.
// Each test file uses its own part of this.
#![allow(dead_code)]

use armt_data::{Judgment, Sample, TaskKind};
use armt_processing::Processor;
use std::path::{Path, PathBuf};

pub const BAD_JSON: &str =
    "<think>Again.</think>\n<tool_call>\n{\"name\": \"image_zoom_in_tool\", \"arguments\": {bad}\n</tool_call>";
pub const ANSWER: &str =
    "<think>Done.</think><answer>Overall Judgment: Answer 1 is better</answer><|im_end|>";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The tiny checkpoint transformers wrote for the tests.
pub fn tiny_model_dir() -> PathBuf {
    armt_testkit::refs_dir().join("model/tiny-hub/model")
}

pub fn processor() -> Processor {
    Processor::from_model_dir(&tiny_model_dir()).unwrap()
}

/// `text` as token ids (no special-token handling: the template's tokens are in the text).
pub fn encode(p: &Processor, text: &str) -> Vec<i64> {
    p.tokenizer()
        .encode(text, false)
        .unwrap()
        .get_ids()
        .iter()
        .map(|&i| i as i64)
        .collect()
}

/// A two-candidate zoom task on `tests/fixtures/chats/images/IMAGE`, answer 1 right.
pub fn zoom_sample(id: &str, image: &str, prompt: &str) -> Sample {
    Sample {
        id: id.into(),
        task: TaskKind::Zoom,
        prompt: prompt.into(),
        images: vec![repo().join("tests/fixtures/chats/images").join(image)],
        document: None,
        response: None,
        judgment: Judgment::Pair { candidates: 2 },
        ground_truth: "1".into(),
        source: None,
    }
}
