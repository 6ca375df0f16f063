//! The synthetic task set: zoom, document and instruction judgments, with their images.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use armt_data::{Document, DocumentPage, Judgment, Sample, TaskKind};
use image::{Rgb, RgbImage};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::font;

/// The short per-prompt requirement the synthetic prompts end with (a compressed
/// `FIXED_COT_PROMPT`, to keep prompts a few dozen tokens long).
pub const SHORT_COT_PROMPT: &str =
    "Reason in <think>...</think>, then either call one tool in <tool_call>...</tool_call> or give your judgment in <answer>...</answer>.";

/// The paper's per-turn requirement (`eval_utils/utils.py: FIXED_COT_PROMPT`), for callers
/// that want the full text (it is part of the default tokenizer corpus).
pub const FIXED_COT_PROMPT: &str = "**Important Requirement:**\nThe given image is `original_image`. You must output your reasoning inside `<think>...</think>`. After reasoning, either output the final answer within `<answer>...</answer>` or call a tool within `<tool_call>...</tool_call>`. You may call tools multiple times across turns to assist with judgment or verification, **but only one tool per turn**. If a tool call fails, you can retry or stop and give your final answer. Once no more tool calls are needed, provide your final answer or judgment within `<answer>...</answer>`.";

/// Knobs of the generator. `Default` is what `generate_tasks` uses.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    /// Side of the square zoom image (pixels). With a processor `max_pixels` of 112², a 448
    /// image is shown at a quarter of its resolution, while a zoomed corner (an eighth of the
    /// side, 56 px, upscaled ×2 by the zoom tool) is shown at twice it: the 32 px dot is 8 px in
    /// the original as the model sees it (under a tenth of one 28 px image token, among three
    /// other dots) and 64 px in the zoom, where whole image tokens are its colour.
    pub zoom_image_size: u32,
    /// Side of the coloured dot (pixels, in the original image).
    pub dot_size: u32,
    /// Smallest and largest number of document pages.
    pub min_pages: usize,
    pub max_pages: usize,
    /// Page image size (width, height).
    pub page_size: (u32, u32),
    /// Font scale of the page text (glyphs are 3×5 at scale 1).
    pub page_font_scale: u32,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            zoom_image_size: 448,
            dot_size: 32,
            min_pages: 3,
            max_pages: 4,
            page_size: (112, 112),
            page_font_scale: 2,
        }
    }
}

/// The four corners the zoom question names, in the order of [`QUADRANT_BBOXES`].
pub const QUADRANTS: [&str; 4] = ["top left", "top right", "bottom left", "bottom right"];
/// How many corner boxes span the image's side: each corner box is an eighth of it.
pub const CORNER_DIVISOR: u32 = 8;

/// The expert's `bbox_2d` (0..1000 relative coordinates) for each corner: an eighth of the side
/// ([`CORNER_DIVISOR`]), so the zoom shows the dot at 8× the scale the original is seen at (a
/// quadrant would give 2×, too little to hide the dots' colours in the original while showing
/// them plainly in the zoom: with a tiny vision tower trained from scratch, a dot that covers a
/// third of one zoomed image token stayed unreadable, one that covers whole tokens is not).
pub const QUADRANT_BBOXES: [[u32; 4]; 4] = {
    let c = 1000 / CORNER_DIVISOR;
    [
        [0, 0, c, c],
        [1000 - c, 0, 1000, c],
        [0, 1000 - c, c, 1000],
        [1000 - c, 1000 - c, 1000, 1000],
    ]
};

/// Dot colours: name and RGB.
pub const COLOURS: [(&str, [u8; 3]); 4] = [
    ("red", [220, 30, 30]),
    ("green", [30, 170, 40]),
    ("blue", [30, 60, 220]),
    ("yellow", [235, 200, 20]),
];

/// One kind of document fact: (subject = the retrieval query, statement with `{}` for the
/// value, question, answer with `{}`, value range).
pub type DocFact = (&'static str, &'static str, &'static str, &'static str, (u32, u32));

/// The values a document fact takes: four whole tens, so that each value is one token of the
/// tiny tokenizer (see [`value_words`]) and the judge's check ("is this candidate's value the
/// page's?") is an equality between two of four tokens, as with the four colours. With eight
/// values the tiny model read the page's value right every time after its cold start, yet still
/// compared it with the candidates at chance on a quarter of the tasks.
pub const DOC_VALUES: [u32; 4] = [20, 40, 60, 80];

/// Document names: single words, each one token of the tiny tokenizer (see [`value_words`]), so
/// that the judge copies the name into its tool call in one step instead of spelling out a
/// numbered file name digit by digit. Page image files keep the sample's index.
pub const DOC_NAMES: [&str; 8] = [
    "atlas", "diary", "guide", "journal", "ledger", "manual", "notebook", "report",
];

/// The words the judge must read off a tool's answer and compare with a candidate (colours, the
/// document values and the validators' verdicts) and the document names it copies into a call. The tiny tokenizer keeps each one a single
/// token (never merged with its neighbours), so copying it is one attention step.
pub fn value_words() -> Vec<String> {
    let mut v: Vec<String> = candidate_values().collect();
    v.extend(["True".to_string(), "False".to_string()]);
    v.extend(DOC_NAMES.iter().map(|n| n.to_string()));
    v
}

/// Each candidate's label with its value ("Answer 1: blue", "Answer 2: 40"), for every value a
/// zoom or document candidate starts with. The tiny tokenizer keeps each one a single token in
/// the prompt's list, so naming a candidate's value in the reasoning ("Answer 1 is blue vs red")
/// is one attention step: find the prompt's token of that slot and read the value off it.
/// With the label and the value as separate tokens, naming it is an induction (find the same
/// label in the prompt, copy the token after it), a two-layer circuit that forms suddenly and
/// late: by step 300-600 for seeds 1 and 3, not by step 1,200 for seed 2, which until then
/// copied the value it had just read in place of the candidate's.
pub fn candidate_phrases() -> Vec<String> {
    candidate_values()
        .flat_map(|v| (1..=2).map(move |k| format!("Answer {k}: {v}")))
        .collect()
}

/// The values a zoom or document candidate starts with: the colour names, then the page values.
fn candidate_values() -> impl Iterator<Item = String> {
    COLOURS
        .iter()
        .map(|c| c.0.to_string())
        .chain(DOC_VALUES.iter().map(|v| v.to_string()))
}

/// The document facts; each page of a document states a different one. The value ranges are
/// those of the first design; [`DOC_VALUES`] is what the generator draws from.
pub const DOC_FACTS: [DocFact; 12] = [
    (
        "tower",
        "The tower is {} meters tall.",
        "How tall is the tower?",
        "{} meters",
        (20, 99),
    ),
    (
        "bridge",
        "The bridge is {} meters long.",
        "How long is the bridge?",
        "{} meters",
        (20, 99),
    ),
    (
        "lake",
        "The lake is {} meters deep.",
        "How deep is the lake?",
        "{} meters",
        (5, 60),
    ),
    (
        "train",
        "The train has {} seats.",
        "How many seats does the train have?",
        "{} seats",
        (20, 90),
    ),
    (
        "bag",
        "The bag weighs {} kilograms.",
        "How heavy is the bag?",
        "{} kilograms",
        (2, 40),
    ),
    (
        "school",
        "The school has {} students.",
        "How many students does the school have?",
        "{} students",
        (100, 900),
    ),
    (
        "farm",
        "The farm has {} cows.",
        "How many cows does the farm have?",
        "{} cows",
        (3, 80),
    ),
    (
        "road",
        "The road is {} kilometers long.",
        "How long is the road?",
        "{} kilometers",
        (10, 99),
    ),
    (
        "museum",
        "The museum has {} rooms.",
        "How many rooms does the museum have?",
        "{} rooms",
        (20, 90),
    ),
    (
        "ship",
        "The ship carries {} sailors.",
        "How many sailors does the ship carry?",
        "{} sailors",
        (10, 90),
    ),
    (
        "garden",
        "The garden has {} trees.",
        "How many trees does the garden have?",
        "{} trees",
        (4, 60),
    ),
    (
        "library",
        "The library has {} books.",
        "How many books does the library have?",
        "{} books",
        (200, 999),
    ),
];

/// The instruction constraints and the validator each maps to.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// "Reply in at most N words." → `check_whether_response_word_count_in_range` [1, N].
    MaxWords(u32),
    /// "Do not use the word X." → `check_whether_whole_response_not_contain_certain_substring`.
    AvoidWord(String),
    /// "Start your reply with the word X." → `check_whether_whole_response_begin_with_certain_substring`.
    BeginWith(String),
    /// "End your reply with the word X." → `check_whether_whole_response_end_with_certain_substring`.
    EndWith(String),
    /// "Do not use any digits." → `check_whether_has_no_arabic_number_in_response`.
    NoDigits,
}

impl Constraint {
    /// The instruction sentence shown in the prompt.
    pub fn instruction(&self) -> String {
        match self {
            Constraint::MaxWords(n) => format!("Reply in at most {n} words."),
            Constraint::AvoidWord(w) => format!("Do not use the word {w}."),
            Constraint::BeginWith(w) => format!("Start your reply with the word {w}."),
            Constraint::EndWith(w) => format!("End your reply with the word {w}."),
            Constraint::NoDigits => "Do not use any digits.".to_string(),
        }
    }

    /// Parses [`Constraint::instruction`]'s output back.
    pub fn parse(s: &str) -> Option<Constraint> {
        let s = s.trim();
        if let Some(r) = s
            .strip_prefix("Reply in at most ")
            .and_then(|r| r.strip_suffix(" words."))
        {
            return r.parse().ok().map(Constraint::MaxWords);
        }
        if let Some(r) = s
            .strip_prefix("Do not use the word ")
            .and_then(|r| r.strip_suffix('.'))
        {
            return Some(Constraint::AvoidWord(r.to_string()));
        }
        if let Some(r) = s
            .strip_prefix("Start your reply with the word ")
            .and_then(|r| r.strip_suffix('.'))
        {
            return Some(Constraint::BeginWith(r.to_string()));
        }
        if let Some(r) = s
            .strip_prefix("End your reply with the word ")
            .and_then(|r| r.strip_suffix('.'))
        {
            return Some(Constraint::EndWith(r.to_string()));
        }
        (s == "Do not use any digits.").then_some(Constraint::NoDigits)
    }

    /// The validator (tool name) and its arguments in schema order, `response` first and
    /// always `text_0`.
    pub fn validator(&self) -> (&'static str, crate::expert::ToolArgs) {
        use serde_json::json;
        let r = ("response", json!("text_0"));
        match self {
            Constraint::MaxWords(n) => (
                "check_whether_response_word_count_in_range",
                vec![r, ("lower_bound", json!(1)), ("upper_bound", json!(n))],
            ),
            Constraint::AvoidWord(w) => (
                "check_whether_whole_response_not_contain_certain_substring",
                vec![r, ("substring", json!(w))],
            ),
            Constraint::BeginWith(w) => (
                "check_whether_whole_response_begin_with_certain_substring",
                vec![r, ("substring", json!(w))],
            ),
            Constraint::EndWith(w) => (
                "check_whether_whole_response_end_with_certain_substring",
                vec![r, ("substring", json!(w))],
            ),
            Constraint::NoDigits => ("check_whether_has_no_arabic_number_in_response", vec![r]),
        }
    }

    /// What the expert's reasoning says it checks.
    pub fn what(&self) -> &'static str {
        match self {
            Constraint::MaxWords(_) => "the word count",
            Constraint::AvoidWord(_) => "the forbidden word",
            Constraint::BeginWith(_) => "the first word",
            Constraint::EndWith(_) => "the last word",
            Constraint::NoDigits => "the digits",
        }
    }

    /// Whether `response` satisfies the constraint, with the validators' semantics
    /// (whitespace words; case-insensitive substrings; begin/end after lower-casing, trimming
    /// and removing leading/trailing dots; `\b\d+\b` for digits).
    pub fn holds(&self, response: &str) -> bool {
        let norm = |s: &str| {
            s.trim()
                .to_lowercase()
                .trim_matches(|c| c == '.' || c == '…')
                .trim()
                .to_string()
        };
        match self {
            Constraint::MaxWords(n) => {
                let k = response.split_whitespace().count() as u32;
                (1..=*n).contains(&k)
            }
            Constraint::AvoidWord(w) => !response.to_lowercase().contains(&w.to_lowercase()),
            Constraint::BeginWith(w) => norm(response).starts_with(&norm(w)),
            Constraint::EndWith(w) => norm(response).ends_with(&norm(w)),
            Constraint::NoDigits => !response.chars().any(|c| c.is_ascii_digit()),
        }
    }
}

/// Validators the synthetic instruction tasks use (register at least these tools).
pub const INSTRUCTION_VALIDATORS: [&str; 5] = [
    "check_whether_response_word_count_in_range",
    "check_whether_whole_response_not_contain_certain_substring",
    "check_whether_whole_response_begin_with_certain_substring",
    "check_whether_whole_response_end_with_certain_substring",
    "check_whether_has_no_arabic_number_in_response",
];

/// Every tool name the synthetic tasks' experts call.
pub fn tools_used() -> Vec<&'static str> {
    let mut v = vec![
        "image_zoom_in_tool",
        "doc_page_retrieval_by_query",
        "doc_page_retrieval_by_index",
    ];
    v.extend(INSTRUCTION_VALIDATORS);
    v
}

const SUBJECTS: [&str; 10] = [
    "The dog",
    "My cat",
    "A bird",
    "The boy",
    "Our team",
    "The girl",
    "A farmer",
    "The cook",
    "His friend",
    "The teacher",
];
const VERBS: [&str; 10] = [
    "sees", "likes", "finds", "paints", "carries", "holds", "wants", "draws", "cleans", "brings",
];
const OBJECTS: [&str; 10] = [
    "a red ball",
    "the old chair",
    "a small boat",
    "the green cup",
    "a long rope",
    "the blue kite",
    "a warm coat",
    "the big map",
    "a new lamp",
    "the wooden box",
];
const TAILS: [&str; 10] = [
    "near the river",
    "every morning",
    "after lunch",
    "at the park",
    "with great care",
    "in the garden",
    "before dinner",
    "on the hill",
    "all day long",
    "in the rain",
];
/// Words a "do not use" instruction forbids (none is a substring of another pool word).
const FORBIDDEN: [&str; 8] = [
    "happy", "quickly", "sun", "music", "yellow", "window", "garden", "friend",
];
/// Words a "start with" instruction asks for (none a prefix of another).
const STARTERS: [&str; 6] = ["Yes", "Today", "Sure", "Well", "Indeed", "Sadly"];
/// Words an "end with" instruction asks for.
const ENDERS: [&str; 6] = ["home", "again", "now", "there", "together", "slowly"];
const NUMBER_WORDS: [&str; 8] = ["two", "three", "four", "five", "six", "seven", "eight", "nine"];

fn sentence(rng: &mut ChaCha8Rng) -> String {
    let s = SUBJECTS.choose(rng).unwrap();
    let v = VERBS.choose(rng).unwrap();
    let o = OBJECTS.choose(rng).unwrap();
    if rng.gen_bool(0.5) {
        format!("{s} {v} {o} {}.", TAILS.choose(rng).unwrap())
    } else {
        format!("{s} {v} {o}.")
    }
}

/// A response of exactly `k` words (k ≥ 2).
fn words_response(rng: &mut ChaCha8Rng, k: usize) -> String {
    let mut words: Vec<String> = Vec::new();
    while words.len() < k {
        words.extend(sentence(rng).split_whitespace().map(str::to_string));
    }
    words.truncate(k);
    let mut s = words.join(" ");
    if !s.ends_with('.') {
        s.push('.');
    }
    s
}

/// Generates a (constraint, response) pair whose truth is `want`.
fn instruction_case(rng: &mut ChaCha8Rng, want: bool) -> (Constraint, String) {
    for _ in 0..1000 {
        let (c, resp) = match rng.gen_range(0..5) {
            0 => {
                let n = rng.gen_range(4..=8u32);
                let k = if want {
                    rng.gen_range(2..=n)
                } else {
                    rng.gen_range(n + 1..=n + 5)
                } as usize;
                (Constraint::MaxWords(n), words_response(rng, k))
            }
            1 => {
                let w = FORBIDDEN.choose(rng).unwrap().to_string();
                let base = sentence(rng);
                let resp = if want {
                    base
                } else {
                    let mut words: Vec<&str> = base.trim_end_matches('.').split(' ').collect();
                    let at = rng.gen_range(1..=words.len());
                    words.insert(at, &w);
                    format!("{}.", words.join(" "))
                };
                (Constraint::AvoidWord(w), resp)
            }
            2 => {
                let w = STARTERS.choose(rng).unwrap().to_string();
                let first = if want {
                    w.clone()
                } else {
                    STARTERS.choose(rng).unwrap().to_string()
                };
                let base = sentence(rng);
                let mut lower = base.clone();
                lower.replace_range(0..1, &base[0..1].to_lowercase());
                (Constraint::BeginWith(w), format!("{first}, {lower}"))
            }
            3 => {
                let w = ENDERS.choose(rng).unwrap().to_string();
                let last = if want {
                    w.clone()
                } else {
                    ENDERS.choose(rng).unwrap().to_string()
                };
                let base = sentence(rng);
                (
                    Constraint::EndWith(w),
                    format!("{} {last}.", base.trim_end_matches('.')),
                )
            }
            _ => {
                let n = rng.gen_range(2..=9usize);
                let num = if want {
                    NUMBER_WORDS[n - 2].to_string()
                } else {
                    n.to_string()
                };
                let noun = ["apples", "birds", "books", "cars", "stars"].choose(rng).unwrap();
                let s = SUBJECTS.choose(rng).unwrap();
                (
                    Constraint::NoDigits,
                    format!(
                        "{s} {} {num} {noun} {}.",
                        VERBS.choose(rng).unwrap(),
                        TAILS.choose(rng).unwrap()
                    ),
                )
            }
        };
        if c.holds(&resp) == want {
            return (c, resp);
        }
    }
    unreachable!("instruction generator failed to hit the wanted truth value")
}

fn per_sample_rng(seed: u64, i: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (i as u64).wrapping_add(1).wrapping_mul(0xBF58_476D_1CE4_E5B9),
    )
}

/// The ground truth of sample `i` ("answer 1 is right" / "the response follows"): consecutive
/// samples of a kind come in pairs with one truth each, which of the two is drawn from
/// `(seed, pair)`. So every kind is balanced (exactly, over an even count per kind) and no
/// constant verdict scores above chance, while the truth cannot be told from a sample's index.
fn balanced_truth(seed: u64, i: usize) -> bool {
    let (kind, j) = (i % 3, i / 3);
    let mut pair_rng = per_sample_rng(seed ^ 0x5eed_ba1a_4ce0_0000, kind + 3 * (j / 2));
    (j % 2 == 0) ^ pair_rng.gen_bool(0.5)
}

fn pair_prompt(head: &str, question: &str, a1: &str, a2: &str) -> String {
    format!("{head}Question: {question}\nAnswer 1: {a1}\nAnswer 2: {a2}\nWhich answer is better?\n{SHORT_COT_PROMPT}")
}

/// Zoom image: light noisy background, a few faint grey blobs, and one coloured dot near each
/// corner (four different colours), each inside its corner box.
fn zoom_image(rng: &mut ChaCha8Rng, cfg: &SynthConfig, colours: &[usize; 4]) -> (RgbImage, [[u32; 4]; 4]) {
    let s = cfg.zoom_image_size;
    let mut img = RgbImage::new(s, s);
    for p in img.pixels_mut() {
        let v = rng.gen_range(225..=250u8);
        *p = Rgb([v, v, v]);
    }
    for _ in 0..6 {
        let (w, h) = (rng.gen_range(s / 16..s / 5), rng.gen_range(s / 16..s / 5));
        let (x0, y0) = (rng.gen_range(0..s - w), rng.gen_range(0..s - h));
        let g = rng.gen_range(170..215u8);
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                img.put_pixel(x, y, Rgb([g, g, g]));
            }
        }
    }
    // Each dot lies inside its corner box (an eighth of the side), clear of the box's edges.
    let corner = s / CORNER_DIVISOR;
    let d = cfg.dot_size;
    let margin = (corner - d) / 4;
    let mut boxes = [[0u32; 4]; 4];
    for q in 0..4 {
        let (qx, qy) = ((q as u32 % 2) * (s - corner), (q as u32 / 2) * (s - corner));
        let x = qx + rng.gen_range(margin..=corner - margin - d);
        let y = qy + rng.gen_range(margin..=corner - margin - d);
        let c = COLOURS[colours[q]].1;
        for yy in y..y + d {
            for xx in x..x + d {
                img.put_pixel(xx, yy, Rgb(c));
            }
        }
        boxes[q] = [x, y, x + d, y + d];
    }
    (img, boxes)
}

fn page_image(cfg: &SynthConfig, page_no: usize, text: &str) -> RgbImage {
    let (w, h) = cfg.page_size;
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let sc = cfg.page_font_scale;
    let margin = 4;
    let cols = ((w - 2 * margin) / font::advance(sc)) as usize;
    font::draw_text(
        &mut img,
        margin,
        margin,
        &format!("PAGE {page_no}"),
        sc,
        Rgb([90, 90, 90]),
    );
    let mut y = margin + font::line_height(sc) * 2;
    for line in font::wrap(text, cols) {
        font::draw_text(&mut img, margin, y, &line, sc, Rgb([0, 0, 0]));
        y += font::line_height(sc);
    }
    img
}

fn fill(template: &str, v: u32) -> String {
    template.replace("{}", &v.to_string())
}

/// Writes the task set under `dir` with the default [`SynthConfig`].
pub fn generate_tasks(dir: &Path, n: usize, seed: u64) -> Result<Vec<Sample>> {
    generate_tasks_with(dir, n, seed, &SynthConfig::default())
}

/// Writes `n` samples (kinds cycling zoom, document, instruction) under `dir`: PNGs in
/// `dir/images/` and `dir/docs/`, rows in `dir/tasks.jsonl`. Returns the samples as
/// `armt_data::read_samples` reads them back (paths resolved against `dir`).
/// Sample `i` depends only on `(seed, i)`, so a larger `n` extends a smaller set.
pub fn generate_tasks_with(dir: &Path, n: usize, seed: u64, cfg: &SynthConfig) -> Result<Vec<Sample>> {
    if cfg.min_pages < 2 || cfg.max_pages < cfg.min_pages || cfg.max_pages > DOC_FACTS.len() {
        bail!("bad page range {}..={}", cfg.min_pages, cfg.max_pages);
    }
    // The corner box must be a crop the zoom tool accepts (28 px at least), and the dot must
    // fit inside it clear of its edges (at most two thirds of its side).
    let corner = cfg.zoom_image_size / CORNER_DIVISOR;
    if corner < 28 || cfg.dot_size == 0 || cfg.dot_size * 3 > corner * 2 {
        bail!(
            "bad zoom image size {} / dot size {}",
            cfg.zoom_image_size,
            cfg.dot_size
        );
    }
    std::fs::create_dir_all(dir.join("images")).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::create_dir_all(dir.join("docs"))?;
    let mut rows = Vec::with_capacity(n);
    for i in 0..n {
        let mut rng = per_sample_rng(seed, i);
        let first = balanced_truth(seed, i);
        let sample = match i % 3 {
            0 => zoom_sample(dir, i, &mut rng, cfg, first)?,
            1 => document_sample(dir, i, &mut rng, cfg, first)?,
            _ => instruction_sample(i, &mut rng, first),
        };
        rows.push(sample);
    }
    let path = dir.join("tasks.jsonl");
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
    );
    for s in &rows {
        serde_json::to_writer(&mut f, s)?;
        f.write_all(b"\n")?;
    }
    f.flush()?;
    drop(f);
    Ok(armt_data::read_samples(&path)?)
}

fn zoom_sample(
    dir: &Path,
    i: usize,
    rng: &mut ChaCha8Rng,
    cfg: &SynthConfig,
    gt_first: bool,
) -> Result<Sample> {
    let mut colours = [0usize, 1, 2, 3];
    colours.shuffle(rng);
    let (img, _) = zoom_image(rng, cfg, &colours);
    let rel = PathBuf::from(format!("images/zoom_{i:05}.png"));
    img.save(dir.join(&rel))
        .with_context(|| format!("writing {}", rel.display()))?;
    let q = rng.gen_range(0..4);
    let right = COLOURS[colours[q]].0;
    // Half of the wrong answers are a colour seen elsewhere in the image (hard negatives).
    let wrong = loop {
        let c = COLOURS[rng.gen_range(0..4)].0;
        if c != right {
            break c;
        }
    };
    let (a1, a2) = if gt_first { (right, wrong) } else { (wrong, right) };
    let prompt = pair_prompt(
        "The given image is `original_image`.\n",
        &format!("What colour is the dot in the {} corner?", QUADRANTS[q]),
        a1,
        a2,
    );
    Ok(Sample {
        id: format!("synth-zoom-{i:05}"),
        task: TaskKind::Zoom,
        prompt,
        images: vec![rel],
        document: None,
        response: None,
        judgment: Judgment::Pair { candidates: 2 },
        ground_truth: if gt_first { "1" } else { "2" }.into(),
        source: None,
    })
}

fn document_sample(
    dir: &Path,
    i: usize,
    rng: &mut ChaCha8Rng,
    cfg: &SynthConfig,
    gt_first: bool,
) -> Result<Sample> {
    let n_pages = rng.gen_range(cfg.min_pages..=cfg.max_pages);
    let mut facts: Vec<usize> = (0..DOC_FACTS.len()).collect();
    facts.shuffle(rng);
    facts.truncate(n_pages);
    let fact_page = rng.gen_range(0..n_pages);
    let name = DOC_NAMES.choose(rng).expect("non-empty").to_string();
    let file_stem = format!("doc_{i:05}");
    let mut pages = Vec::new();
    let mut right_value = 0;
    for (p, &f) in facts.iter().enumerate() {
        let statement = DOC_FACTS[f].1;
        let v = *DOC_VALUES.choose(rng).expect("non-empty");
        if p == fact_page {
            right_value = v;
        }
        let text = fill(statement, v);
        let rel = PathBuf::from(format!("docs/{file_stem}_{}.png", p + 1));
        page_image(cfg, p + 1, &text)
            .save(dir.join(&rel))
            .with_context(|| format!("writing {}", rel.display()))?;
        pages.push(DocumentPage { image: rel, text });
    }
    let (_, _, question, answer, _) = DOC_FACTS[facts[fact_page]];
    let wrong_value = loop {
        let v = *DOC_VALUES.choose(rng).expect("non-empty");
        if v != right_value {
            break v;
        }
    };
    let (right, wrong) = (fill(answer, right_value), fill(answer, wrong_value));
    let (a1, a2) = if gt_first {
        (&right, &wrong)
    } else {
        (&wrong, &right)
    };
    let prompt = pair_prompt(
        &format!("The given document is `{name}` with {n_pages} pages.\n"),
        question,
        a1,
        a2,
    );
    Ok(Sample {
        id: format!("synth-document-{i:05}"),
        task: TaskKind::Document,
        prompt,
        images: vec![],
        document: Some(Document { name, pages }),
        response: None,
        judgment: Judgment::Pair { candidates: 2 },
        ground_truth: if gt_first { "1" } else { "2" }.into(),
        source: None,
    })
}

fn instruction_sample(i: usize, rng: &mut ChaCha8Rng, want: bool) -> Sample {
    let (c, resp) = instruction_case(rng, want);
    let prompt = format!(
        "Instruction: {}\nResponse `text_0`: {resp}\nDoes `text_0` follow the instruction?\n{SHORT_COT_PROMPT}",
        c.instruction()
    );
    Sample {
        id: format!("synth-instruction-{i:05}"),
        task: TaskKind::Instruction,
        prompt,
        images: vec![],
        document: None,
        response: Some(resp),
        judgment: Judgment::Single,
        ground_truth: if want { "true" } else { "false" }.into(),
        source: None,
    }
}

/// What a synthetic sample asks, recovered from its prompt (the expert needs no side data).
#[derive(Debug, Clone, PartialEq)]
pub enum TaskSpec {
    Zoom {
        quadrant: usize,
        candidates: [String; 2],
    },
    Document {
        name: String,
        subject: String,
        question: String,
        candidates: [String; 2],
    },
    Instruction {
        constraint: Constraint,
        response: String,
    },
}

fn field<'a>(prompt: &'a str, key: &str) -> Option<&'a str> {
    prompt.lines().find_map(|l| l.strip_prefix(key)).map(str::trim)
}

/// Parses a synthetic sample's prompt; `None` for prompts this crate did not write.
pub fn task_spec(sample: &Sample) -> Option<TaskSpec> {
    let p = &sample.prompt;
    match sample.task {
        TaskKind::Zoom => {
            let q = field(p, "Question: ")?;
            let quadrant = QUADRANTS
                .iter()
                .position(|name| q.ends_with(&format!("the {name} corner?")))?;
            Some(TaskSpec::Zoom {
                quadrant,
                candidates: [field(p, "Answer 1: ")?.into(), field(p, "Answer 2: ")?.into()],
            })
        }
        TaskKind::Document => {
            let q = field(p, "Question: ")?;
            let subject = DOC_FACTS.iter().find(|f| f.2 == q)?.0;
            Some(TaskSpec::Document {
                name: sample.document.as_ref()?.name.clone(),
                subject: subject.to_string(),
                question: q.to_string(),
                candidates: [field(p, "Answer 1: ")?.into(), field(p, "Answer 2: ")?.into()],
            })
        }
        TaskKind::Instruction => Some(TaskSpec::Instruction {
            constraint: Constraint::parse(field(p, "Instruction: ")?)?,
            response: sample.response.clone()?,
        }),
    }
}
