//! Readers for the formats ARM-Thinker's released data comes in, each producing armt's own
//! records ([`Sample`] for RL and evaluation, [`llamafactory::SftConversation`] for SFT) so that
//! everything downstream (validation, rollouts, rewards) is format-blind:
//! - [`verl_parquet`]: the verl RL parquet rows (`data_source`, `prompt`, `images`,
//!   `reward_model`, `extra_info`, `agent_name`);
//! - [`llamafactory`]: LLaMA-Factory SFT conversations (`messages`/`conversations`, `images`);
//! - [`armbench`]: ARMBench-VL benchmark items (`idx`, `rm_tag`, `question`, `preds`, `gt`, …).

pub mod armbench;
pub mod llamafactory;
pub mod verl_parquet;

use crate::{DataError, Document, DocumentError, DocumentPage, Sample, TaskKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How rows of the foreign formats become samples (`[data.formats]` in the training config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FormatOptions {
    /// Relative image paths in rows resolve here (default: the data file's folder).
    pub image_root: Option<PathBuf>,
    /// Document page images, `{doc_root}/{doc_id}_{page}.{jpg|jpeg|png|webp}` as the original's
    /// `RAG_IMAGE_ROOT`; a page's text, when the data has it, is `{doc_id}_{page}.txt` beside it
    /// (default: `image_root`).
    pub doc_root: Option<PathBuf>,
    /// Where images embedded as bytes are written, since samples refer to images by path
    /// (default: `armt-images/<file stem>` under the system temp dir).
    pub image_cache: Option<PathBuf>,
    /// `data_source` → task kind. A source takes the entry equal to it, else the longest key it
    /// contains (the original routes every source containing `mmif` alike).
    pub sources: BTreeMap<String, TaskKind>,
}

impl Default for FormatOptions {
    fn default() -> Self {
        // The original's data sources and the tool each is judged with (doc §3.1, §4.2).
        let sources = [
            ("deepeyes_crop", TaskKind::Zoom),
            ("val_deepeyes_crop", TaskKind::Zoom),
            ("llava_critic", TaskKind::Zoom),
            ("val_llava_critic", TaskKind::Zoom),
            ("mp_docvqa", TaskKind::Document),
            ("mmif", TaskKind::Instruction),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Self {
            image_root: None,
            doc_root: None,
            image_cache: None,
            sources,
        }
    }
}

impl FormatOptions {
    /// The task kind of a `data_source`, or None when no entry matches.
    pub fn task_of(&self, source: &str) -> Option<TaskKind> {
        if let Some(t) = self.sources.get(source) {
            return Some(*t);
        }
        self.sources
            .iter()
            .filter(|(k, _)| source.contains(k.as_str()))
            .max_by_key(|(k, _)| k.len())
            .map(|(_, t)| *t)
    }

    /// The folders this format reads images and pages from, or writes embedded images to, for
    /// `data_file`: inside the data as far as path confinement is concerned.
    pub fn data_roots(&self, data_file: &Path) -> Vec<PathBuf> {
        vec![
            self.image_root_for(data_file),
            self.doc_root_for(data_file),
            self.image_cache_for(data_file),
        ]
    }

    pub(crate) fn image_root_for(&self, data_file: &Path) -> PathBuf {
        self.image_root
            .clone()
            .unwrap_or_else(|| data_file.parent().unwrap_or(Path::new(".")).to_path_buf())
    }

    pub(crate) fn doc_root_for(&self, data_file: &Path) -> PathBuf {
        self.doc_root
            .clone()
            .unwrap_or_else(|| self.image_root_for(data_file))
    }

    pub(crate) fn image_cache_for(&self, data_file: &Path) -> PathBuf {
        self.image_cache.clone().unwrap_or_else(|| {
            let stem = data_file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            // The path's hash keeps two files with one stem apart.
            let full = std::fs::canonicalize(data_file).unwrap_or_else(|_| data_file.to_path_buf());
            std::env::temp_dir().join("armt-images").join(format!(
                "{stem}-{:016x}",
                fnv1a(full.to_string_lossy().as_bytes())
            ))
        })
    }
}

/// Reads a dataset in whichever format its file is: `.parquet` → verl RL rows; JSONL whose first
/// row has `rm_tag` and `preds` → ARMBench-VL items; other JSONL → armt's own samples.
pub fn read_dataset(path: &Path, opts: &FormatOptions) -> Result<Vec<Sample>, DataError> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
    {
        return verl_parquet::read_samples(path, opts);
    }
    if armbench::looks_like_armbench(path)? {
        return armbench::read_items(path)?
            .iter()
            .map(|it| armbench::item_to_sample(it, path, opts))
            .collect();
    }
    crate::read_samples(path)
}

/// The pages of document `doc_id` under `root`: files `{doc_id}_{n}.{jpg|jpeg|png|webp}`, in
/// page-number order, each with the text of `{doc_id}_{n}.txt` when that exists. A `.pdf`
/// suffix of the id is dropped, as the original's eval does.
pub fn load_document(root: &Path, doc_id: &str) -> Result<Document, DocumentError> {
    let name = doc_id.strip_suffix(".pdf").unwrap_or(doc_id);
    let entries = std::fs::read_dir(root).map_err(|source| DocumentError::Root {
        root: root.to_path_buf(),
        source,
    })?;
    let prefix = format!("{name}_");
    let mut pages: BTreeMap<u64, PathBuf> = BTreeMap::new();
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix(&prefix) else {
            continue;
        };
        let Some((num, ext)) = rest.rsplit_once('.') else {
            continue;
        };
        let Ok(n) = num.parse::<u64>() else { continue };
        let rank = ["jpg", "jpeg", "png", "webp"]
            .iter()
            .position(|e| ext.eq_ignore_ascii_case(e));
        if let Some(rank) = rank {
            // The original tries the extensions in this order; keep the first that exists.
            let keep = pages.get(&n).is_none_or(|old| {
                let old_ext = old
                    .extension()
                    .map(|e| e.to_string_lossy().to_lowercase())
                    .unwrap_or_default();
                ["jpg", "jpeg", "png", "webp"]
                    .iter()
                    .position(|e| *e == old_ext)
                    .unwrap_or(9)
                    > rank
            });
            if keep {
                pages.insert(n, entry.path());
            }
        }
    }
    if pages.is_empty() {
        return Err(DocumentError::NoPages {
            name: name.to_string(),
            root: root.to_path_buf(),
        });
    }
    Ok(Document {
        name: name.to_string(),
        pages: pages
            .into_values()
            .map(|image| {
                let text = std::fs::read_to_string(image.with_extension("txt")).unwrap_or_default();
                DocumentPage { image, text }
            })
            .collect(),
    })
}

/// Resolves a row's image path: absolute stays, relative goes under `root`.
pub(crate) fn resolve(root: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    }
}

/// The file extension an encoded image's magic bytes say it is.
pub fn image_extension(bytes: &[u8]) -> &'static str {
    match bytes {
        [0x89, b'P', b'N', b'G', ..] => "png",
        [0xFF, 0xD8, 0xFF, ..] => "jpg",
        [b'G', b'I', b'F', ..] => "gif",
        [b'B', b'M', ..] => "bmp",
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => "webp",
        _ => "img",
    }
}

/// Writes embedded image bytes to `dir/name.ext` (once: an existing file of the same size is
/// taken as already written) and returns the path.
pub(crate) fn write_image_bytes(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, std::io::Error> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.{}", image_extension(bytes)));
    let same = std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64);
    if !same {
        std::fs::write(&path, bytes)?;
    }
    Ok(path)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A file-safe form of an id (letters, digits, `-` and `_` kept; anything else `_`).
pub fn file_safe(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
