//! LLaMA-Factory SFT rows → examples: the token ids equal the processor's encoding of the same
//! chat (which is checked against transformers' chat template and processor elsewhere), and the
//! loss covers exactly each assistant turn's content plus its `<|im_end|>`.

use armt_data::formats::llamafactory::read_conversations;
use armt_processing::{Chat, Processor};
use armt_train::sft_llamafactory::{conversation_messages, examples_from_conversations};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn processor() -> Processor {
    Processor::from_model_dir(&armt_testkit::refs_dir().join("model/tiny-hub/model")).unwrap()
}

const CALL: &str = "<think>Zoom in first.</think>\n<tool_call>\n{\"name\": \"image_zoom_in_tool\", \"arguments\": {\"image\": \"original_image\", \"bbox_2d\": [0, 0, 500, 500]}}\n</tool_call>";
const ANSWER: &str =
    "<think>The crop shows red.</think><answer>Overall Judgment: Answer 1 is better</answer>";

fn write_rows(dir: &Path) -> PathBuf {
    let img = repo().join("tests/fixtures/chats/images/rgb_97x61.png");
    let crop = repo().join("tests/fixtures/chats/images/rgb_56x56.png");
    let messages_row = serde_json::json!({
        "messages": [
            {"role": "user", "content": "<image>Which answer is better?\nAnswer 1: red.\nAnswer 2: blue."},
            {"role": "assistant", "content": CALL},
            {"role": "user", "content": "<tool_response>\n<image>This is the zoom-in image `observation_1`.\n</tool_response>"},
            {"role": "assistant", "content": ANSWER}
        ],
        "images": [img, crop],
        "tools": "[{\"type\": \"function\", \"function\": {\"name\": \"image_zoom_in_tool\", \"description\": \"Zoom in.\", \"parameters\": {\"type\": \"object\", \"properties\": {\"image\": {\"type\": \"string\"}}, \"required\": [\"image\"]}}}]"
    });
    let sharegpt_row = serde_json::json!({
        "conversations": [
            {"from": "system", "value": "You judge answers."},
            {"from": "human", "value": "Is 2+2=4? Response: yes."},
            {"from": "gpt", "value": "<think>Yes.</think><answer>Overall Judgment: True</answer>"}
        ]
    });
    let p = dir.join("sft.jsonl");
    std::fs::write(&p, format!("{messages_row}\n{sharegpt_row}\n")).unwrap();
    p
}

#[test]
fn renders_with_template_and_masks_assistant_turns() {
    let dir = std::env::temp_dir().join("armt-sft-lf-test");
    std::fs::create_dir_all(&dir).unwrap();
    let path = write_rows(&dir);
    let convs = read_conversations(&path, None).unwrap();
    assert_eq!(convs.len(), 2);
    let p = processor();
    let examples = examples_from_conversations(&convs, &p, None).unwrap();

    for (conv, ex) in convs.iter().zip(&examples) {
        // Same ids as the processor's (transformers-checked) encoding of the whole chat.
        let chat = Chat {
            messages: conversation_messages(conv).unwrap(),
            tools: conv.tools.clone(),
            add_generation_prompt: false,
        };
        let reference = p.encode_chat(&chat).unwrap();
        assert_eq!(ex.ids, reference.input_ids, "conversation {}", conv.id);
        assert_eq!(ex.images.len(), conv.images.len());
    }

    // The trained tokens, run by run, are exactly the assistant turns and their <|im_end|>.
    let trained_runs = |ex: &armt_train::Example| -> Vec<String> {
        let mut runs: Vec<Vec<u32>> = Vec::new();
        let mut prev = 0u8;
        for (k, &m) in ex.loss_mask.iter().enumerate() {
            if m == 1 {
                if prev == 0 {
                    runs.push(Vec::new());
                }
                runs.last_mut().unwrap().push(ex.ids[ex.prompt_len + k] as u32);
            }
            prev = m;
        }
        runs.iter()
            .map(|r| p.tokenizer().decode(r, false).unwrap())
            .collect()
    };
    assert_eq!(
        trained_runs(&examples[0]),
        vec![format!("{CALL}<|im_end|>"), format!("{ANSWER}<|im_end|>")]
    );
    assert_eq!(
        trained_runs(&examples[1]),
        vec!["<think>Yes.</think><answer>Overall Judgment: True</answer><|im_end|>".to_string()]
    );
    // The prompt ends with the template's assistant header, untrained.
    let head = p
        .tokenizer()
        .decode(
            &examples[1].ids[..examples[1].prompt_len]
                .iter()
                .map(|&i| i as u32)
                .collect::<Vec<_>>(),
            false,
        )
        .unwrap();
    assert!(
        head.starts_with("<|im_start|>system\nYou judge answers.<|im_end|>"),
        "{head}"
    );
    assert!(head.ends_with("<|im_start|>assistant\n"), "{head}");
}

#[test]
fn bad_rows_are_reported_with_their_line() {
    let dir = std::env::temp_dir().join("armt-sft-lf-bad");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("bad.jsonl");
    std::fs::write(
        &p,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"ok\"}]}\n{\"messages\": [{\"role\": \"user\", \"content\": \"<image>hi\"}, {\"role\": \"assistant\", \"content\": \"ok\"}]}\n",
    )
    .unwrap();
    let e = read_conversations(&p, None).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl:2") && e.contains("placeholder"), "{e}");
    std::fs::write(
        &p,
        "[{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}]",
    )
    .unwrap();
    let e = read_conversations(&p, None).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl:1") && e.contains("assistant"), "{e}");
}
