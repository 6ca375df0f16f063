//! The records that pass between armt's parts: dataset samples (what a prompt is, what the
//! right judgment is) and trajectories (what the policy wrote, which tools ran, why it
//! stopped). Both are JSON lines; a malformed row is reported with its file and line.

mod error;
pub mod validate;

pub use error::{
    ArmBenchError, ConfineError, ContentError, ConversationError, DocumentError, ImageFileError,
    ImageProblem, ParquetRowError, RowError, SampleError,
};

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: malformed row: {source}")]
    Row {
        path: PathBuf,
        line: usize,
        #[source]
        source: Box<RowError>,
    },
    #[error("{path}: not a readable parquet file: {source}")]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    /// An ARMBench item (named by its `idx`) that does not make a sample.
    #[error("{path}: item idx {idx}: {source}")]
    Item {
        path: PathBuf,
        idx: String,
        #[source]
        source: Box<RowError>,
    },
    #[error("{path}: {count} problem(s) found before training:\n{problems}")]
    Invalid {
        path: PathBuf,
        count: usize,
        problems: String,
    },
}

pub mod formats;
pub use formats::{read_dataset, FormatOptions};

/// The paper's three task kinds, each answered best with its own tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// A detail of an image that needs zooming in (image_zoom_in_tool).
    Zoom,
    /// A fact on one page of a multi-page document (document page retrieval).
    Document,
    /// Whether a response follows an instruction (instruction validators).
    Instruction,
}

/// How the verdict is phrased: `Answer X is better` between N candidates, or `True`/`False`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Judgment {
    Pair { candidates: usize },
    Single,
}

/// One page of a sample's document: its image and (for text retrieval) its text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentPage {
    pub image: PathBuf,
    #[serde(default)]
    pub text: String,
}

/// The multi-page document a sample comes with (only its own pages are ever retrievable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    pub name: String,
    pub pages: Vec<DocumentPage>,
}

/// One dataset row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    pub id: String,
    pub task: TaskKind,
    /// The user's text: question, candidate answers and what to judge.
    pub prompt: String,
    /// Images shown with the prompt (paths relative to the dataset file, resolved on load).
    #[serde(default)]
    pub images: Vec<PathBuf>,
    #[serde(default)]
    pub document: Option<Document>,
    /// The candidate response instruction validators check (the paper's `text_0`).
    #[serde(default)]
    pub response: Option<String>,
    pub judgment: Judgment,
    /// The right verdict: "1", "2", … for pairs; "true"/"false" for single judgments.
    pub ground_truth: String,
    /// Where the row came from (ARM-Thinker's `data_source`, e.g. `deepeyes_crop`): selects the
    /// stage-2 reward through `reward.sources`. None: armt's own stage rewards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Reads a JSONL dataset; image and page paths become relative to the file's folder.
pub fn read_samples(path: &Path) -> Result<Vec<Sample>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    validate::reject_bom(path, &text)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row = |source: RowError| DataError::Row {
            path: path.to_path_buf(),
            line: i + 1,
            source: Box::new(source),
        };
        let mut s: Sample = serde_json::from_str(line).map_err(|e| row(e.into()))?;
        validate(&s).map_err(|e| row(e.into()))?;
        for img in s.images.iter_mut() {
            *img = base.join(&*img);
        }
        if let Some(doc) = s.document.as_mut() {
            for p in doc.pages.iter_mut() {
                p.image = base.join(&p.image);
            }
        }
        out.push(s);
    }
    Ok(out)
}

pub(crate) fn validate(s: &Sample) -> Result<(), SampleError> {
    if s.id.is_empty() {
        return Err(SampleError::EmptyId);
    }
    let gt = s.ground_truth.trim().to_lowercase();
    match s.judgment {
        Judgment::Pair { candidates } => {
            let ok = gt.parse::<usize>().is_ok_and(|k| k >= 1 && k <= candidates);
            if !ok {
                return Err(SampleError::NotACandidate {
                    ground_truth: s.ground_truth.clone(),
                    candidates,
                });
            }
        }
        Judgment::Single => {
            if gt != "true" && gt != "false" {
                return Err(SampleError::NotTrueOrFalse {
                    ground_truth: s.ground_truth.clone(),
                });
            }
        }
    }
    match s.task {
        TaskKind::Document if s.document.as_ref().is_none_or(|d| d.pages.is_empty()) => {
            Err(SampleError::DocumentWithoutPages)
        }
        TaskKind::Instruction if s.response.is_none() => Err(SampleError::InstructionWithoutResponse),
        _ => Ok(()),
    }
}

/// Why a trajectory ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model ended a turn without a tool call (its answer).
    Answered,
    /// The turn limit was reached (the model was told to answer in the last turn).
    MaxTurns,
    /// The response token budget ran out.
    MaxTokens,
    /// The context would exceed the model's limit.
    ContextFull,
    /// A turn had `<tool_call>` but no parsable call, and the rollout ended there
    /// (`rollout.end_on_malformed_call`); its reward is 0.
    MalformedToolCall,
}

/// One tool execution inside a trajectory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallRecord {
    pub name: String,
    pub arguments: serde_json::Value,
    /// The text the model saw as the tool's response (after truncation).
    pub result_text: String,
    /// Images returned, by key (`observation_1`, …) into `Trajectory::images`.
    #[serde(default)]
    pub result_images: Vec<String>,
    /// True when the tool did what was asked (not an error text).
    pub success: bool,
    /// Tool-level reward, as verl tools return it (ARM convention: -0.05 on failure).
    #[serde(default)]
    pub reward: f32,
    pub duration_ms: f64,
}

/// One assistant turn and, if it asked for one, the tool call it made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    pub assistant_text: String,
    #[serde(default)]
    pub tool_call: Option<ToolCallRecord>,
    /// Set when the model wrote `<tool_call>` that could not be parsed or run: the error text
    /// that went back to the model.
    #[serde(default)]
    pub tool_error: Option<String>,
}

/// One rollout: exact ids, what the policy wrote, and what happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    pub sample_id: String,
    /// Index within the sample's group of n rollouts.
    pub group_index: usize,
    pub task: TaskKind,
    /// Prompt and response ids, concatenated.
    pub token_ids: Vec<i64>,
    pub prompt_len: usize,
    /// Per response token: 1 if the policy sampled it, 0 for template and tool tokens.
    pub loss_mask: Vec<u8>,
    /// Per response token: log-prob under the sampling policy (0 where loss_mask is 0).
    pub logprobs: Vec<f32>,
    pub turns: Vec<Turn>,
    /// Image keys and files: `original_image`, then `observation_k` as tools return them.
    pub images: Vec<(String, PathBuf)>,
    /// The last assistant turn's text.
    pub final_text: String,
    pub stop_reason: StopReason,
    /// The reward it got, when written by the trainer (absent from plain rollouts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward: Option<f32>,
}

impl Trajectory {
    pub fn response_len(&self) -> usize {
        self.token_ids.len() - self.prompt_len
    }

    pub fn tool_calls(&self) -> impl Iterator<Item = &ToolCallRecord> {
        self.turns.iter().filter_map(|t| t.tool_call.as_ref())
    }
}

/// Reads a trajectory JSONL file.
pub fn read_trajectories(path: &Path) -> Result<Vec<Trajectory>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    validate::reject_bom(path, &text)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| DataError::Row {
                path: path.to_path_buf(),
                line: i + 1,
                source: Box::new(e.into()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join("armt-data-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_samples_and_resolves_paths() {
        let p = write(
            "ok.jsonl",
            r#"{"id": "a", "task": "zoom", "prompt": "Which answer?", "images": ["img/x.png"], "judgment": {"type": "pair", "candidates": 2}, "ground_truth": "2"}

{"id": "b", "task": "instruction", "prompt": "Does it follow?", "response": "Hello.", "judgment": {"type": "single"}, "ground_truth": "True"}
"#,
        );
        let s = read_samples(&p).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].images[0], p.parent().unwrap().join("img/x.png"));
        assert_eq!(s[1].judgment, Judgment::Single);
    }

    #[test]
    fn malformed_rows_name_file_and_line() {
        let p = write(
            "bad.jsonl",
            "{\"id\": \"a\", \"task\": \"zoom\", \"prompt\": \"q\", \"judgment\": {\"type\": \"pair\", \"candidates\": 2}, \"ground_truth\": \"1\"}\n{\"id\": \"b\", \"task\": \"zoom\", \"prompt\": \"q\", \"judgment\": {\"type\": \"pair\", \"candidates\": 2}, \"ground_truth\": \"3\"}\n",
        );
        let err = read_samples(&p).unwrap_err().to_string();
        assert!(
            err.contains("bad.jsonl:2") && err.contains("ground_truth"),
            "{err}"
        );
        let p = write("bad2.jsonl", "{\"id\": \"a\", \"task\": \"document\", \"prompt\": \"q\", \"judgment\": {\"type\": \"single\"}, \"ground_truth\": \"true\"}\n");
        let err = read_samples(&p).unwrap_err().to_string();
        assert!(err.contains("bad2.jsonl:1") && err.contains("document"), "{err}");
        let p = write("bad3.jsonl", "not json\n");
        let err = read_samples(&p).unwrap_err();
        assert!(err.to_string().contains("bad3.jsonl:1"));
        // The JSON parser's error is kept in the chain, below the row error.
        let row = std::error::Error::source(&err).expect("the row error");
        let json = std::error::Error::source(row).and_then(|s| s.downcast_ref::<serde_json::Error>());
        assert!(json.is_some_and(|j| j.line() == 1), "{err:?}");
    }
}
