//! ARMBench-VL items: answer extraction against the original's regular expressions run by
//! Python's `re` (the engine the original uses), and the prompts/samples built from data/.

use armt_data::formats::armbench::{extract_choice, item_sample, read_items, Choice, FIXED_COT_PROMPT};
use armt_data::{FormatOptions, Judgment, TaskKind};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The original's two extraction functions (eval_utils/utils.py), applied by Python's `re`.
const PY_EXTRACT: &str = r#"
import json, re, sys
def single(resp):
    m = re.search(r"<answer>(.*?)</answer>", resp, re.IGNORECASE | re.DOTALL)
    if m:
        m2 = re.search(r"\b(True|False)\b", m.group(1), re.IGNORECASE)
        if m2:
            return m2.group(1).capitalize()
    pattern = r"(?:Overall\s*Judgment\s*[:：\-]?\s*)?" r"(?:The\s*answer\s*is\s*)?"
    matches = re.findall(pattern, resp, re.IGNORECASE)
    return matches[-1].capitalize() if matches else None
def pair(resp):
    ms = list(re.finditer(r"Answer\s*(\d+)\s*is\s*(?:the\s*)?(?:slightly\s*)?(?:better|preferred)", resp, re.IGNORECASE))
    if ms:
        return int(ms[-1].group(1))
    ms = list(re.finditer(r"<answer>\s*(\d+)\s*</answer>", resp, re.IGNORECASE))
    return int(ms[-1].group(1)) if ms else None
texts = json.loads(sys.stdin.read())
print(json.dumps([[single(t), pair(t)] for t in texts]))
"#;

#[test]
fn extraction_matches_the_original() {
    let texts = [
        "<think>x</think><answer>Overall Judgment: True</answer>",
        "<answer>overall judgment: FALSE.</answer> later true",
        "<answer>It is not true that it fails. False</answer>",
        "<answer>Truely nothing</answer>",
        "no answer block, but True",
        "<answer>Overall Judgment: Answer 2 is better (X must be either 1 or 2). </answer>",
        "Answer 1 is the slightly better one. In the end answer 3 is preferred.",
        "<answer> 4 </answer> and <ANSWER>2</ANSWER>",
        "Answer1isbetter",
        "<answer>Answer 2 is correct</answer>",
        "Answer 12 is better",
        "",
    ];
    let out = {
        use std::io::Write;
        let mut child = Command::new(armt_testkit::python())
            .arg("-c")
            .arg(PY_EXTRACT)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(serde_json::to_string(&texts).unwrap().as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    assert!(out.status.success());
    let reference: Vec<(Option<String>, Option<usize>)> = serde_json::from_slice(&out.stdout).unwrap();
    for (t, (single, pair)) in texts.iter().zip(reference) {
        assert_eq!(
            extract_choice(t, Judgment::Single),
            single.map(Choice::Truth),
            "single: {t:?}"
        );
        assert_eq!(
            extract_choice(t, Judgment::Pair { candidates: 4 }),
            pair.map(Choice::Candidate),
            "pair: {t:?}"
        );
    }
}

#[test]
fn example_items_become_samples() {
    let data = repo().join("data");
    let opts = FormatOptions {
        image_root: Some(data.clone()),
        doc_root: Some(data.join("pages")),
        ..FormatOptions::default()
    };
    let fg = data.join("armbench/fine_grained_perception.jsonl");
    let items = read_items(&fg).unwrap();
    let s = item_sample(&items[0], &fg, &opts, Some(FIXED_COT_PROMPT)).unwrap();
    assert_eq!(
        (s.task, s.judgment, s.ground_truth.as_str()),
        (TaskKind::Zoom, Judgment::Pair { candidates: 2 }, "1")
    );
    assert!(s
        .prompt
        .starts_with("You will receive two responses (named as `resp_1` and `resp_2`)"));
    assert!(
        s.prompt
            .contains("<start_of_instruction>\nWhat colour is the small dot"),
        "<image> removed"
    );
    assert!(s.prompt.ends_with(FIXED_COT_PROMPT));
    let four = item_sample(&items[2], &fg, &opts, None).unwrap();
    assert_eq!(four.judgment, Judgment::Pair { candidates: 4 });
    assert!(four.prompt.contains("<start_of_resp_4>\nblack\n<end_of_resp_4>"));

    let doc = data.join("armbench/multimodal_long_document.jsonl");
    let d = item_sample(&read_items(&doc).unwrap()[0], &doc, &opts, Some(FIXED_COT_PROMPT)).unwrap();
    assert_eq!(d.task, TaskKind::Document);
    assert_eq!(d.document.as_ref().unwrap().pages.len(), 3);
    assert!(d.prompt.contains("The given document is named `report`."));
    assert!(!d.prompt.contains("The given image is"));

    let mmif = data.join("armbench/multimodal_instruction_following.jsonl");
    let m = item_sample(&read_items(&mmif).unwrap()[0], &mmif, &opts, None).unwrap();
    assert_eq!(m.task, TaskKind::Instruction);
    assert_eq!(m.response.as_deref(), Some("A grey image with a small red dot."));
    assert!(m.prompt.contains(
        "<start_of_constraint>\nThe response must have exactly two paragraphs.\n<end_of_constraint>"
    ));
}
