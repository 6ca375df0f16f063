//! ARM-Thinker's RL rows (verl's `RLHFDataset` parquet) as [`Sample`]s.
//!
//! Columns (doc §4.2): `data_source` (picks the task kind and, through `reward.sources`, the
//! reward), `prompt` (chat messages whose text holds one `<image>` placeholder per image),
//! `images` (`{bytes, path}` structs as HF datasets write them, or plain path strings),
//! `reward_model.ground_truth` (`"1"`/`"2"`…, `True`/`False`, or mp_docvqa's `-1`/`-2` for
//! true/false), `extra_info` (`index`, `rm_tag`, `tools_kwargs`, and for documents `doc_id`)
//! and `agent_name`. Rows are read through parquet's record API, so nested columns may be
//! structs, maps, lists or JSON strings alike.

use super::{file_safe, load_document, resolve, write_image_bytes, FormatOptions};
use crate::{DataError, Judgment, ParquetRowError, RowError, Sample};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use std::path::{Path, PathBuf};

/// A parquet value with the distinctions the rows need (bytes kept apart from text).
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Cell>),
    /// Structs and maps: named fields in order.
    Map(Vec<(String, Cell)>),
}

impl Cell {
    fn from_field(f: &Field) -> Cell {
        match f {
            Field::Null => Cell::Null,
            Field::Bool(b) => Cell::Bool(*b),
            Field::Byte(v) => Cell::Int(*v as i64),
            Field::Short(v) => Cell::Int(*v as i64),
            Field::Int(v) => Cell::Int(*v as i64),
            Field::Long(v) => Cell::Int(*v),
            Field::UByte(v) => Cell::Int(*v as i64),
            Field::UShort(v) => Cell::Int(*v as i64),
            Field::UInt(v) => Cell::Int(*v as i64),
            Field::ULong(v) => Cell::Int(*v as i64),
            Field::Float16(v) => Cell::Float(f64::from(*v)),
            Field::Float(v) => Cell::Float(*v as f64),
            Field::Double(v) => Cell::Float(*v),
            Field::Str(s) => Cell::Str(s.clone()),
            Field::Bytes(b) => Cell::Bytes(b.data().to_vec()),
            Field::Group(row) => Cell::Map(
                row.get_column_iter()
                    .map(|(k, v)| (k.clone(), Cell::from_field(v)))
                    .collect(),
            ),
            Field::ListInternal(list) => Cell::List(list.elements().iter().map(Cell::from_field).collect()),
            Field::MapInternal(map) => Cell::Map(
                map.entries()
                    .iter()
                    .map(|(k, v)| {
                        let key = match Cell::from_field(k) {
                            Cell::Str(s) => s,
                            other => other.to_json().to_string(),
                        };
                        (key, Cell::from_field(v))
                    })
                    .collect(),
            ),
            // Decimals, dates and times never carry what a row needs; keep their text.
            other => Cell::Str(other.to_string()),
        }
    }

    /// A field of a struct/map (None for absent or null).
    pub fn get(&self, key: &str) -> Option<&Cell> {
        match self {
            Cell::Map(kv) => kv
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .filter(|v| **v != Cell::Null),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Cell::Str(s) => Some(s),
            _ => None,
        }
    }

    /// JSON text columns (some pipelines store nested columns as JSON strings) become cells.
    fn parse_json_string(self) -> Cell {
        match &self {
            Cell::Str(s) if s.trim_start().starts_with(['[', '{']) => {
                serde_json::from_str::<serde_json::Value>(s)
                    .map(Cell::from_json)
                    .unwrap_or(self)
            }
            _ => self,
        }
    }

    fn from_json(v: serde_json::Value) -> Cell {
        use serde_json::Value as V;
        match v {
            V::Null => Cell::Null,
            V::Bool(b) => Cell::Bool(b),
            V::Number(n) => n
                .as_i64()
                .map(Cell::Int)
                .unwrap_or(Cell::Float(n.as_f64().unwrap_or(f64::NAN))),
            V::String(s) => Cell::Str(s),
            V::Array(a) => Cell::List(a.into_iter().map(Cell::from_json).collect()),
            V::Object(o) => Cell::Map(o.into_iter().map(|(k, v)| (k, Cell::from_json(v))).collect()),
        }
    }

    /// JSON for messages (bytes as their length, which no row needs as JSON).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as V;
        match self {
            Cell::Null => V::Null,
            Cell::Bool(b) => V::Bool(*b),
            Cell::Int(i) => V::from(*i),
            Cell::Float(f) => V::from(*f),
            Cell::Str(s) => V::String(s.clone()),
            Cell::Bytes(b) => V::String(format!("<{} bytes>", b.len())),
            Cell::List(l) => V::Array(l.iter().map(Cell::to_json).collect()),
            Cell::Map(kv) => V::Object(kv.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
        }
    }
}

/// Reads every row of a parquet file as a cell map per row.
pub fn read_rows(path: &Path) -> Result<Vec<Cell>, DataError> {
    let perr = |e| DataError::Parquet {
        path: path.to_path_buf(),
        source: e,
    };
    let file = std::fs::File::open(path).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let reader = SerializedFileReader::new(file).map_err(perr)?;
    let iter = reader.get_row_iter(None).map_err(perr)?;
    let mut rows = Vec::new();
    for row in iter {
        let row = row.map_err(perr)?;
        rows.push(Cell::Map(
            row.get_column_iter()
                .map(|(k, v)| (k.clone(), Cell::from_field(v).parse_json_string()))
                .collect(),
        ));
    }
    Ok(rows)
}

/// Reads ARM-Thinker RL parquet rows as samples (see the module docs for the mapping).
pub fn read_samples(path: &Path, opts: &FormatOptions) -> Result<Vec<Sample>, DataError> {
    let rows = read_rows(path)?;
    let mut out = Vec::with_capacity(rows.len());
    let mut dropped_system = 0usize;
    for (i, row) in rows.iter().enumerate() {
        let err = |source: RowError| DataError::Row {
            path: path.to_path_buf(),
            line: i + 1,
            source: Box::new(source),
        };
        let (sample, had_system) = row_to_sample(row, i, path, opts).map_err(err)?;
        crate::validate(&sample).map_err(|e| err(e.into()))?;
        dropped_system += had_system as usize;
        out.push(sample);
    }
    if dropped_system > 0 {
        // Not an error: armt renders the system prompt from the tool schemas itself.
        eprintln!(
            "{}: {dropped_system} row(s) carry a system message; armt uses its own tool system prompt instead",
            path.display()
        );
    }
    Ok(out)
}

/// The judgment a row asks for: from `rm_tag` when given (`single_rm`, `pair_rm`,
/// `2-way-pair_rm`, `4-way-pair_rm`), else from the ground truth's type.
pub fn judgment_for(rm_tag: Option<&str>, gt: &str) -> Result<Judgment, ParquetRowError> {
    match rm_tag {
        Some("single_rm") => Ok(Judgment::Single),
        Some("pair_rm") => Ok(Judgment::Pair { candidates: 2 }),
        Some(tag) => {
            let n = tag
                .strip_suffix("-way-pair_rm")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&n| n >= 2)
                .ok_or_else(|| ParquetRowError::UnknownRmTag { rm_tag: tag.into() })?;
            Ok(Judgment::Pair { candidates: n })
        }
        None => match gt {
            "true" | "false" => Ok(Judgment::Single),
            // Without rm_tag the number of candidates is unknown: at least the ground truth's.
            _ => gt
                .parse::<usize>()
                .map(|k| Judgment::Pair { candidates: k.max(2) })
                .map_err(|_| ParquetRowError::GroundTruthNotJudgment {
                    ground_truth: gt.into(),
                }),
        },
    }
}

/// A ground truth in armt's form: `"1"`…, or `"true"`/`"false"` (mp_docvqa's -1 → true, -2 → false).
pub fn normalize_ground_truth(gt: &Cell) -> Result<String, ParquetRowError> {
    let text = match gt {
        Cell::Bool(b) => b.to_string(),
        Cell::Int(i) => i.to_string(),
        Cell::Float(f) if f.fract() == 0.0 => (*f as i64).to_string(),
        Cell::Str(s) => s.trim().to_lowercase(),
        other => {
            return Err(ParquetRowError::UnsupportedGroundTruth {
                ground_truth: other.to_json(),
            })
        }
    };
    Ok(match text.as_str() {
        "-1" => "true".into(),
        "-2" => "false".into(),
        _ => text,
    })
}

/// The prompt text (user turns, `<image>` placeholders removed) and the placeholder count.
fn prompt_text(prompt: &Cell) -> Result<(String, usize, bool), ParquetRowError> {
    let Cell::List(messages) = prompt else {
        return Err(ParquetRowError::PromptNotList);
    };
    let mut texts = Vec::new();
    let mut had_system = false;
    for (k, m) in messages.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Cell::as_str)
            .ok_or(ParquetRowError::PromptWithoutRole { index: k })?;
        let text = match m.get("content") {
            Some(Cell::Str(s)) => s.clone(),
            Some(Cell::List(parts)) => {
                // Typed parts: text parts in order, image parts become placeholders.
                let mut s = String::new();
                for p in parts {
                    match p.get("type").and_then(Cell::as_str) {
                        Some("text") => s.push_str(p.get("text").and_then(Cell::as_str).unwrap_or("")),
                        Some("image") | Some("image_url") => s.push_str("<image>"),
                        _ => {}
                    }
                }
                s
            }
            _ => return Err(ParquetRowError::PromptWithoutContent { index: k }),
        };
        match role {
            "system" => had_system = true,
            "user" => texts.push(text),
            other => {
                return Err(ParquetRowError::PromptRole {
                    index: k,
                    role: other.into(),
                })
            }
        }
    }
    if texts.is_empty() {
        return Err(ParquetRowError::PromptWithoutUser);
    }
    let joined = texts.join("\n\n");
    let placeholders = joined.matches("<image>").count();
    let text = joined
        .replace("<image>\n", "")
        .replace("<image>", "")
        .trim()
        .to_string();
    Ok((text, placeholders, had_system))
}

/// The row's images as paths: embedded bytes are written under the image cache.
fn row_images(
    row: &Cell,
    id: &str,
    path: &Path,
    opts: &FormatOptions,
) -> Result<Vec<PathBuf>, ParquetRowError> {
    let list = match row.get("images") {
        None => return Ok(Vec::new()),
        Some(Cell::List(l)) => l.clone(),
        Some(single) => vec![single.clone()],
    };
    let root = opts.image_root_for(path);
    let mut out = Vec::with_capacity(list.len());
    for (k, img) in list.iter().enumerate() {
        let bytes = match img {
            Cell::Bytes(b) => Some(b.as_slice()),
            _ => match img.get("bytes") {
                Some(Cell::Bytes(b)) => Some(b.as_slice()),
                _ => None,
            },
        };
        let p = match (
            bytes,
            img.as_str().or_else(|| img.get("path").and_then(Cell::as_str)),
        ) {
            (Some(b), _) if !b.is_empty() => {
                let dir = opts.image_cache_for(path);
                write_image_bytes(&dir, &format!("{}-{k}", file_safe(id)), b).map_err(|source| {
                    ParquetRowError::ImageCache {
                        index: k,
                        dir: dir.clone(),
                        source,
                    }
                })?
            }
            (_, Some(p)) if !p.is_empty() => resolve(&root, p),
            _ => return Err(ParquetRowError::ImageWithoutSource { index: k }),
        };
        if !p.is_file() {
            return Err(ParquetRowError::MissingImage {
                index: k,
                path: p,
                root,
            });
        }
        out.push(p);
    }
    Ok(out)
}

/// A string field of `extra_info` or of any tool's `create_kwargs` in `tools_kwargs`.
fn extra_string(extra: Option<&Cell>, keys: &[&str]) -> Option<String> {
    let extra = extra?;
    let direct = keys.iter().find_map(|k| extra.get(k).and_then(Cell::as_str));
    if let Some(s) = direct {
        return Some(s.to_string());
    }
    let Some(Cell::Map(tools)) = extra.get("tools_kwargs") else {
        return None;
    };
    tools.iter().find_map(|(_, kw)| {
        let ck = kw.get("create_kwargs").unwrap_or(kw);
        keys.iter()
            .find_map(|k| ck.get(k).and_then(Cell::as_str))
            .map(str::to_string)
    })
}

/// One row → one sample; also says whether the row had a system message.
fn row_to_sample(
    row: &Cell,
    i: usize,
    path: &Path,
    opts: &FormatOptions,
) -> Result<(Sample, bool), RowError> {
    let source = row
        .get("data_source")
        .and_then(Cell::as_str)
        .ok_or(ParquetRowError::Missing { field: "data_source" })?
        .to_string();
    let task = opts
        .task_of(&source)
        .ok_or_else(|| ParquetRowError::UnknownSource {
            data_source: source.clone(),
            known: opts.sources.keys().cloned().collect::<Vec<_>>().join(", "),
        })?;
    let extra = row.get("extra_info");
    let index = match extra.and_then(|e| e.get("index")) {
        Some(Cell::Int(n)) => n.to_string(),
        Some(Cell::Str(s)) => s.clone(),
        _ => i.to_string(),
    };
    let id = format!("{source}-{index}");
    let prompt = row
        .get("prompt")
        .ok_or(ParquetRowError::Missing { field: "prompt" })?;
    let (prompt, placeholders, had_system) = prompt_text(prompt)?;
    let images = row_images(row, &id, path, opts)?;
    if placeholders != 0 && placeholders != images.len() {
        return Err(ParquetRowError::PlaceholderMismatch {
            placeholders,
            images: images.len(),
        }
        .into());
    }
    let gt = row
        .get("reward_model")
        .and_then(|r| r.get("ground_truth"))
        .ok_or(ParquetRowError::Missing {
            field: "reward_model.ground_truth",
        })?;
    let ground_truth = normalize_ground_truth(gt)?;
    let rm_tag = extra.and_then(|e| e.get("rm_tag")).and_then(Cell::as_str);
    let judgment = judgment_for(rm_tag, &ground_truth)?;
    if let Some(agent) = row.get("agent_name").and_then(Cell::as_str) {
        if agent != "tool_agent" && agent != "single_turn_agent" {
            return Err(ParquetRowError::UnknownAgent { agent: agent.into() }.into());
        }
    }
    let document = match task {
        crate::TaskKind::Document => {
            let doc_id = extra_string(extra, &["doc_id", "filename"])
                .or_else(|| row.get("doc_id").and_then(Cell::as_str).map(str::to_string))
                .ok_or(ParquetRowError::NoDocId)?;
            let mut doc = load_document(&opts.doc_root_for(path), &doc_id)?;
            // Page text given in the row wins over text files.
            if let Some(Cell::List(texts)) = extra.and_then(|e| e.get("page_texts")) {
                for (page, t) in doc.pages.iter_mut().zip(texts) {
                    if let Some(s) = t.as_str() {
                        page.text = s.to_string();
                    }
                }
            }
            Some(doc)
        }
        _ => None,
    };
    let response = extra_string(extra, &["response", "text_0"]);
    Ok((
        Sample {
            id,
            task,
            prompt,
            images,
            document,
            response,
            judgment,
            ground_truth,
            source: Some(source),
        },
        had_system,
    ))
}
