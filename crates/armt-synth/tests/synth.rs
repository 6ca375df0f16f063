use std::path::{Path, PathBuf};

use armt_data::{Judgment, Sample, TaskKind};
use armt_synth::*;
use serde_json::Value;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("armt-synth-tests-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn generation_is_deterministic_and_readable() {
    let (a, b, c) = (tmp("det-a"), tmp("det-b"), tmp("det-c"));
    let sa = generate_tasks(&a, 30, 7).unwrap();
    let sb = generate_tasks(&b, 30, 7).unwrap();
    generate_tasks(&c, 30, 8).unwrap();
    assert_eq!(files(&a), files(&b));
    assert_ne!(
        std::fs::read(a.join("tasks.jsonl")).unwrap(),
        std::fs::read(c.join("tasks.jsonl")).unwrap()
    );
    // Read back independently; same rows as returned.
    let read = armt_data::read_samples(&a.join("tasks.jsonl")).unwrap();
    assert_eq!(read, sa);
    assert_eq!(sa.len(), 30);
    // Rows are identical apart from the folder the paths resolve against.
    let strip = |s: &[Sample], d: &Path| -> Vec<String> {
        s.iter()
            .map(|x| serde_json::to_string(x).unwrap().replace(d.to_str().unwrap(), ""))
            .collect()
    };
    assert_eq!(strip(&sa, &a), strip(&sb, &b));
    // A prefix is stable when n grows.
    let d = tmp("det-d");
    let sd = generate_tasks(&d, 33, 7).unwrap();
    assert_eq!(strip(&sd[..30], &d), strip(&sa, &a));
    for k in [TaskKind::Zoom, TaskKind::Document, TaskKind::Instruction] {
        assert_eq!(sa.iter().filter(|s| s.task == k).count(), 10);
    }
    for s in &sa {
        for p in s
            .images
            .iter()
            .chain(s.document.iter().flat_map(|d| d.pages.iter().map(|p| &p.image)))
        {
            assert!(p.is_file(), "{} missing", p.display());
            image::open(p).unwrap();
        }
    }
}

#[test]
fn labels_are_balanced() {
    let d = tmp("balance");
    let s = generate_tasks(&d, 300, 1).unwrap();
    let count = |k: TaskKind, gt: &str| s.iter().filter(|x| x.task == k && x.ground_truth == gt).count();
    for (k, a, b) in [
        (TaskKind::Zoom, "1", "2"),
        (TaskKind::Document, "1", "2"),
        (TaskKind::Instruction, "true", "false"),
    ] {
        // Exactly balanced: each consecutive pair of a kind holds one truth of each.
        let (na, nb) = (count(k, a), count(k, b));
        assert_eq!((na, nb), (50, 50), "{k:?}");
    }
    // All five constraint kinds occur.
    let mut kinds = std::collections::BTreeSet::new();
    for x in &s {
        if let Some(TaskSpec::Instruction { constraint, .. }) = task_spec(x) {
            kinds.insert(constraint.validator().0);
        }
    }
    assert_eq!(kinds.len(), 5);
}

fn final_verdict(text: &str) -> Option<String> {
    // The paper's strict format: ^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$ and no tool call.
    let t = text.trim();
    if t.contains("<tool_call>") || t.contains("</tool_call>") {
        return None;
    }
    let rest = t.strip_prefix("<think>")?;
    let (_, rest) = rest.split_once("</think>")?;
    let rest = rest.trim_start().strip_prefix("<answer>")?;
    let ans = rest.strip_suffix("</answer>")?;
    let ans = ans.trim().strip_prefix("Overall Judgment:")?.trim();
    if ans == "True" || ans == "False" {
        return Some(ans.to_lowercase());
    }
    let k = ans.strip_prefix("Answer ")?.strip_suffix(" is better")?;
    Some(k.to_string())
}

fn tool_call_of(text: &str) -> (String, Value) {
    assert!(text.starts_with("<think>"), "{text}");
    let (_, rest) = text
        .split_once("</think>\n<tool_call>\n")
        .expect("call after think");
    let body = rest
        .strip_suffix("\n</tool_call>")
        .expect("ends with </tool_call>");
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v.as_object().unwrap().len(), 2);
    assert!(body.starts_with("{\"name\": \""), "{body}");
    (v["name"].as_str().unwrap().to_string(), v["arguments"].clone())
}

#[test]
fn expert_answers_match_ground_truth_and_calls_are_well_formed() {
    let d = tmp("expert");
    let samples = generate_tasks(&d, 60, 3).unwrap();
    for s in &samples {
        for style in [ExpertStyle::Direct, ExpertStyle::Retry] {
            let turns = expert_script(s, style, 11);
            let n = if style == ExpertStyle::Direct { 2 } else { 3 };
            assert_eq!(turns.len(), n, "{}", s.id);
            for t in &turns[..n - 1] {
                let (name, args) = tool_call_of(&t.text);
                let (n2, a2) = t.tool_call.clone().unwrap();
                assert_eq!((name, args), (n2, a2));
                // Python json.dumps spacing.
                assert!(t.text.contains("{\"name\": \""), "{}", t.text);
            }
            let last = turns.last().unwrap();
            assert!(last.tool_call.is_none());
            assert_eq!(
                final_verdict(&last.text).as_deref(),
                Some(s.ground_truth.as_str()),
                "{}",
                last.text
            );
        }
        assert_eq!(
            expert_turns(s),
            expert_script(s, ExpertStyle::Direct, 0)
                .into_iter()
                .map(|t| t.text)
                .collect::<Vec<_>>()
        );
        match s.judgment {
            Judgment::Pair { candidates } => assert_eq!(candidates, 2),
            Judgment::Single => assert_eq!(s.task, TaskKind::Instruction),
        }
    }
}

#[test]
fn zoom_detail_lies_inside_expert_bbox() {
    let d = tmp("zoom");
    let samples = generate_tasks(&d, 90, 5).unwrap();
    for s in samples.iter().filter(|s| s.task == TaskKind::Zoom) {
        let img = image::open(&s.images[0]).unwrap().to_rgb8();
        let gt = s.ground_truth.parse::<usize>().unwrap();
        let line = s
            .prompt
            .lines()
            .find(|l| l.starts_with(&format!("Answer {gt}: ")))
            .unwrap();
        let colour = line.split_once(": ").unwrap().1;
        let rgb = COLOURS.iter().find(|c| c.0 == colour).unwrap().1;
        let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
        let mut n = 0;
        for (x, y, p) in img.enumerate_pixels() {
            if p.0 == rgb {
                n += 1;
                x0 = x0.min(x);
                y0 = y0.min(y);
                x1 = x1.max(x + 1);
                y1 = y1.max(y + 1);
            }
        }
        let dot = SynthConfig::default().dot_size;
        assert_eq!(n, dot * dot, "{}: one square dot of the right colour", s.id);
        let turns = expert_script(s, ExpertStyle::Direct, 0);
        let (name, args) = turns[0].tool_call.clone().unwrap();
        assert_eq!(name, "image_zoom_in_tool");
        assert_eq!(args["image"], "original_image");
        let b: Vec<f64> = args["bbox_2d"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let (w, h) = (img.width() as f64, img.height() as f64);
        let bx = [
            b[0] / 1000.0 * w,
            b[1] / 1000.0 * h,
            b[2] / 1000.0 * w,
            b[3] / 1000.0 * h,
        ];
        assert!(
            bx[0] <= x0 as f64 && bx[1] <= y0 as f64 && x1 as f64 <= bx[2] && y1 as f64 <= bx[3],
            "{}: dot {:?} not in {bx:?}",
            s.id,
            (x0, y0, x1, y1)
        );
        // The other quadrants' dots are outside the box (only the asked-about one is zoomed).
        for c in COLOURS.iter().filter(|c| c.0 != colour) {
            for (x, y, p) in img.enumerate_pixels() {
                if p.0 == c.1 {
                    let inside =
                        bx[0] <= x as f64 && (x as f64) < bx[2] && bx[1] <= y as f64 && (y as f64) < bx[3];
                    assert!(!inside, "{}: a {} dot is inside the box", s.id, c.0);
                }
            }
        }
        // The retry's first call zooms elsewhere.
        let retry = expert_script(s, ExpertStyle::Retry, 4);
        assert_ne!(retry[0].tool_call.as_ref().unwrap().1, args);
        assert_eq!(retry[1].tool_call.as_ref().unwrap().1, args);
    }
}

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

#[test]
fn document_fact_is_on_exactly_one_page_and_the_expert_finds_it() {
    let d = tmp("doc");
    let samples = generate_tasks(&d, 90, 9).unwrap();
    for s in samples.iter().filter(|s| s.task == TaskKind::Document) {
        let doc = s.document.as_ref().unwrap();
        assert!((3..=4).contains(&doc.pages.len()));
        let turns = expert_script(s, ExpertStyle::Direct, 0);
        let (name, args) = turns[0].tool_call.clone().unwrap();
        assert_eq!(name, "doc_page_retrieval_by_query");
        assert_eq!(args["filename"], doc.name.as_str());
        let query = words(args["query"].as_str().unwrap());
        // Pages sharing a query word: exactly one (so BM25 or any lexical retriever ranks it first).
        let hits: Vec<usize> = (0..doc.pages.len())
            .filter(|&i| words(&doc.pages[i].text).iter().any(|w| query.contains(w)))
            .collect();
        assert_eq!(hits.len(), 1, "{}: {:?}", s.id, doc.pages);
        let page = &doc.pages[hits[0]].text;
        // The right candidate's number is on that page; the wrong one's is not.
        let gt = s.ground_truth.parse::<usize>().unwrap();
        let num = |k: usize| -> String {
            let l = s
                .prompt
                .lines()
                .find(|l| l.starts_with(&format!("Answer {k}: ")))
                .unwrap();
            l.split_once(": ")
                .unwrap()
                .1
                .chars()
                .filter(|c| c.is_ascii_digit())
                .collect()
        };
        assert!(
            words(page).contains(&num(gt)),
            "{}: {page} lacks {}",
            s.id,
            num(gt)
        );
        assert!(!words(page).contains(&num(3 - gt)), "{}", s.id);
        // The question's subject occurs on no other page.
        let retry = expert_script(s, ExpertStyle::Retry, 2);
        let (n0, a0) = retry[0].tool_call.clone().unwrap();
        assert_eq!(n0, "doc_page_retrieval_by_index");
        let idx = a0["image_idx"].as_u64().unwrap() as usize;
        assert!(idx >= 1 && idx <= doc.pages.len() && idx - 1 != hits[0]);
        assert_eq!(retry[1].tool_call.as_ref().unwrap().1, args);
    }
}

/// An independent implementation of the five validators used.
fn independent_check(name: &str, args: &Value, text: &str) -> bool {
    let sub = || args["substring"].as_str().unwrap().to_lowercase();
    let clean = |s: &str| {
        let mut t = s.trim().to_lowercase();
        while t.starts_with('.') || t.ends_with('.') {
            t = t.trim_matches('.').trim().to_string();
        }
        t
    };
    match name {
        "check_whether_response_word_count_in_range" => {
            let n = text.split(' ').filter(|w| !w.trim().is_empty()).count() as u64;
            args["lower_bound"].as_u64().unwrap() <= n && n <= args["upper_bound"].as_u64().unwrap()
        }
        "check_whether_whole_response_not_contain_certain_substring" => {
            text.to_lowercase().find(&sub()).is_none()
        }
        "check_whether_whole_response_begin_with_certain_substring" => {
            clean(text).find(&clean(&sub())) == Some(0)
        }
        "check_whether_whole_response_end_with_certain_substring" => {
            let (t, w) = (clean(text), clean(&sub()));
            t.len() >= w.len() && t[t.len() - w.len()..] == w
        }
        "check_whether_has_no_arabic_number_in_response" => {
            !words(text).iter().any(|w| w.chars().all(|c| c.is_ascii_digit()))
        }
        other => panic!("unexpected validator {other}"),
    }
}

#[test]
fn instruction_ground_truth_agrees_with_independent_check() {
    let d = tmp("instr");
    let samples = generate_tasks(&d, 300, 13).unwrap();
    let mut n = 0;
    for s in samples.iter().filter(|s| s.task == TaskKind::Instruction) {
        let turns = expert_script(s, ExpertStyle::Direct, 0);
        let (name, args) = turns[0].tool_call.clone().unwrap();
        assert!(INSTRUCTION_VALIDATORS.contains(&name.as_str()));
        assert_eq!(args["response"], "text_0");
        let truth = independent_check(&name, &args, s.response.as_ref().unwrap());
        assert_eq!(
            truth.to_string(),
            s.ground_truth,
            "{}: {} / {:?}",
            s.id,
            s.prompt,
            s.response
        );
        assert!(s.prompt.contains(s.response.as_ref().unwrap()));
        n += 1;
    }
    assert_eq!(n, 100);
}

#[test]
fn tokenizer_round_trips_and_keeps_special_tokens_whole() {
    let d = tmp("tok");
    let samples = generate_tasks(&d, 60, 21).unwrap();
    let mut corpus = default_corpus(&samples);
    corpus.push("Ünïcödé text: 中文 日本語 emoji 🔍 — «quotes» ‘x’".into());
    let tok = build_tiny_tokenizer(&corpus).unwrap();
    let tok2 = build_tiny_tokenizer(&corpus).unwrap();
    assert_eq!(
        tok.to_string(false).unwrap(),
        tok2.to_string(false).unwrap(),
        "deterministic"
    );
    let vocab = tok.get_vocab_size(true);
    // The shorter expert texts of the single-token-value design leave fewer merges on 60 samples.
    assert!((800..=3000).contains(&vocab), "vocab {vocab}");
    let ids = special_token_ids(&tok).unwrap();
    // Added tokens come right after the BPE vocabulary, specials first (as in Qwen).
    assert_eq!(ids.endoftext as usize, tok.get_vocab_size(false));
    assert_eq!(ids.answer_end as usize, vocab - 1);
    assert!(tok.get_vocab_size(false) <= DEFAULT_VOCAB);

    let mut texts = corpus.clone();
    texts.push("never seen: Grüße, naïve café — 你好世界 🙂\t tabs\n\n  spaces  ".into());
    texts.push(format!(
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n<|im_start|>assistant\n{}<|im_end|>\n<|im_start|>user\n<tool_response>\nCheck result: True\n</tool_response><|im_end|>\n",
        samples[0].prompt,
        expert_turns(&samples[0]).join("")
    ));
    for t in &texts {
        let enc = tok.encode(t.as_str(), false).unwrap();
        assert_eq!(&tok.decode(enc.get_ids(), false).unwrap(), t);
    }
    for sp in SPECIAL_TOKENS.iter().chain(ADDED_TOKENS.iter()) {
        let id = tok.token_to_id(sp).unwrap();
        let enc = tok
            .encode(format!("ab{sp}cd {sp}\n{sp}").as_str(), false)
            .unwrap();
        assert_eq!(enc.get_ids().iter().filter(|&&i| i == id).count(), 3, "{sp}");
        let alone = tok.encode(*sp, false).unwrap();
        assert_eq!(alone.get_ids(), &[id], "{sp}");
    }
    // Qwen's convention: chat/vision tokens are special, the tag tokens are not.
    let text = "<|im_start|>assistant\n<think>x</think>\n<tool_call>\n{}\n</tool_call><|im_end|>";
    let enc = tok.encode(text, false).unwrap();
    assert_eq!(
        tok.decode(enc.get_ids(), true).unwrap(),
        "assistant\n<think>x</think>\n<tool_call>\n{}\n</tool_call>"
    );
}

#[test]
fn model_files_are_consistent() {
    let d = tmp("model");
    let samples = generate_tasks(&d.join("data"), 30, 2).unwrap();
    let tok = build_tiny_tokenizer(&default_corpus(&samples)).unwrap();
    let m = d.join("model");
    tiny_model_files(&m, &tok).unwrap();
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(m.join("config.json")).unwrap()).unwrap();
    let ids = special_token_ids(&tok).unwrap();
    let vocab = cfg["vocab_size"].as_u64().unwrap() as usize;
    assert_eq!(vocab % 64, 0);
    assert!(vocab >= tok.get_vocab_size(true) && vocab < tok.get_vocab_size(true) + 64);
    let hd = cfg["hidden_size"].as_u64().unwrap() / cfg["num_attention_heads"].as_u64().unwrap();
    let sec: u64 = cfg["rope_scaling"]["mrope_section"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(sec * 2, hd);
    assert_eq!(cfg["rope_scaling"]["type"], "mrope");
    assert_eq!(cfg["image_token_id"], ids.image_pad);
    assert_eq!(cfg["video_token_id"], ids.video_pad);
    assert_eq!(cfg["vision_start_token_id"], ids.vision_start);
    assert_eq!(cfg["eos_token_id"], ids.im_end);
    assert_eq!(cfg["bos_token_id"], ids.endoftext);
    assert_eq!(cfg["vision_config"]["out_hidden_size"], cfg["hidden_size"]);
    assert_eq!(cfg["vision_config"]["patch_size"], 14);
    let pp: Value =
        serde_json::from_str(&std::fs::read_to_string(m.join("preprocessor_config.json")).unwrap()).unwrap();
    assert!(pp["max_pixels"].as_u64().unwrap() <= 112 * 112);
    let back = tokenizers::Tokenizer::from_file(m.join("tokenizer.json")).unwrap();
    assert_eq!(back.to_string(false).unwrap(), tok.to_string(false).unwrap());
    assert!(m.join("generation_config.json").is_file() && m.join("tokenizer_config.json").is_file());
    // Writing twice gives the same bytes.
    let m2 = d.join("model2");
    tiny_model_files(&m2, &build_tiny_tokenizer(&default_corpus(&samples)).unwrap()).unwrap();
    assert_eq!(files(&m), files(&m2));
}

#[test]
fn guess_traces_answer_without_a_tool_with_both_verdicts() {
    let d = tmp("guess");
    let samples = generate_tasks(&d, 60, 4).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for s in &samples {
        let turns = expert_script(s, ExpertStyle::Guess, 5);
        assert_eq!(turns.len(), 1, "{}", s.id);
        assert!(turns[0].tool_call.is_none());
        let v = final_verdict(&turns[0].text).expect("strict format");
        seen.insert((format!("{:?}", s.task), v));
    }
    // Both verdicts of every kind occur: a guess carries no information about the truth.
    assert_eq!(seen.len(), 6, "{seen:?}");
}

#[test]
fn value_words_stay_single_tokens_wherever_they_stand() {
    let d = tmp("tok-values");
    let samples = generate_tasks(&d, 30, 2).unwrap();
    let words = value_words();
    let phrases = candidate_phrases();
    let tok =
        build_tiny_tokenizer_with_words(&default_corpus(&samples), 1024, false, &words, &phrases).unwrap();
    for text in [
        "<think>The tool shows red. Answer 1 is blue vs red, different. Answer 2 is red vs red, same, so Answer 2 is better.</think>",
        "{\"filename\": \"journal\", \"query\": \"tower\"}",
        "Answer 1: yellow\nAnswer 2: green\nWhich answer is better?",
        "Answer 1: 60 sailors\nAnswer 2: 40 sailors\nWhich answer is better?",
        "[Page 2]\nThe tower is 40 meters tall.",
        "Check result: False\nReason: x",
    ] {
        let enc = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text, "round trip");
        let toks = enc.get_tokens();
        // Outside the candidate phrases (one token each, checked below), every value word is a
        // token of its own.
        let outside = phrases.iter().fold(text.to_string(), |t, p| t.replace(p.as_str(), " "));
        for w in &words {
            let whole = outside
                .split(|c: char| !c.is_alphanumeric())
                .filter(|x| x == w)
                .count();
            let single = toks.iter().filter(|t| *t == w).count();
            assert_eq!(single, whole, "{w} in {text}: {toks:?}");
        }
        // Each candidate line's label and value are one token (the same id) in the prompt's
        // list and in the expert's comparison.
        for phrase in &phrases {
            let id = tok.token_to_id(phrase).expect("phrase is a token");
            let n = enc.get_ids().iter().filter(|&&i| i == id).count();
            assert_eq!(n, text.matches(phrase.as_str()).count(), "{phrase:?} in {text}: {toks:?}");
        }
    }
}

/// The expert compares each candidate with what the tool showed, in order, and stops at the one
/// that agrees: every "X vs V" line says "same" exactly when X = V, the last line is the ground
/// truth's, and the document names are single words (one token to copy into the tool call).
#[test]
fn expert_compares_candidates_one_by_one() {
    let d = tmp("compare");
    let samples = generate_tasks(&d, 60, 9).unwrap();
    let mut stopped_early = 0;
    for s in samples.iter().filter(|s| s.task != TaskKind::Instruction) {
        let turns = expert_script(s, ExpertStyle::Direct, 0);
        let text = &turns.last().unwrap().text;
        let think = text
            .split("<think>")
            .nth(1)
            .and_then(|t| t.split("</think>").next())
            .unwrap();
        let gt: usize = s.ground_truth.parse().unwrap();
        let lines: Vec<&str> = think.split(" Answer ").filter(|l| l.contains(" vs ")).collect();
        assert_eq!(lines.len(), gt, "{}: stops at the ground truth: {think}", s.id);
        for (k, line) in lines.iter().enumerate() {
            let (label, rest) = line.split_once(" is ").unwrap();
            assert_eq!(label, (k + 1).to_string(), "{}: {line}", s.id);
            let (x, rest) = rest.split_once(" vs ").unwrap();
            let (v, verdict) = rest.split_once(", ").unwrap();
            assert_eq!(verdict.starts_with("same"), x == v, "{}: {line}", s.id);
            assert_eq!(verdict.starts_with("same"), k + 1 == gt, "{}: {line}", s.id);
        }
        stopped_early += usize::from(gt == 1);
        if s.task == TaskKind::Document {
            let name = &s.document.as_ref().unwrap().name;
            assert!(DOC_NAMES.contains(&name.as_str()), "{}: {name}", s.id);
        }
    }
    assert!(stopped_early > 0, "some comparisons stop at the first answer");
}
