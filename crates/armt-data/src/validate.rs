//! The whole dataset checked before training starts, so a bad row costs seconds instead of the
//! steps since the last checkpoint: ids unique, prompts non-empty, each task kind with what its
//! tool needs (a zoom task an image, a document task pages, an instruction task a response),
//! candidate counts sane, and every image and page inside the data root, present, and decoding
//! within a size limit. It works on loaded [`Sample`]s, so every dataset format can call it.

use crate::error::{ConfineError, ImageFileError, ImageProblem, RowError};
use crate::{DataError, Judgment, Sample, TaskKind};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

/// The most candidates a pairwise judgment may compare.
pub const MAX_CANDIDATES: usize = 26;

/// How far image files are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageCheck {
    /// Exists and is inside the root (no reading).
    Exists,
    /// Also reads the header: a known format with dimensions within the limits.
    Header,
    /// Also decodes the pixels (within the limits).
    Decode,
}

/// Size limits for images; a larger one is refused with its dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    pub max_side: u32,
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        // Far above what Qwen2.5-VL's processor keeps (it resizes to ≤ 12.8 M pixels), far
        // below what would exhaust memory while decoding (≈ 400 MB as RGBA).
        Self {
            max_side: 32_768,
            max_pixels: 100_000_000,
        }
    }
}

/// What to check and against what.
#[derive(Debug, Clone)]
pub struct DatasetCheck<'a> {
    /// The dataset file (named in messages).
    pub origin: &'a Path,
    /// Images and pages must lie under this folder (the dataset file's folder); None: anywhere.
    pub root: Option<&'a Path>,
    /// Further folders the user named for the data (a format's image root, document root and
    /// image cache): paths under one of them are inside too.
    pub extra_roots: Vec<PathBuf>,
    pub images: ImageCheck,
    pub limits: ImageLimits,
}

impl<'a> DatasetCheck<'a> {
    /// Full checks of a dataset read from `origin`, confined to its folder.
    pub fn for_file(origin: &'a Path) -> Self {
        Self {
            origin,
            root: Some(origin.parent().unwrap_or(Path::new("."))),
            extra_roots: Vec::new(),
            images: ImageCheck::Decode,
            limits: ImageLimits::default(),
        }
    }
}

/// At most this many problems are listed in one error.
const MAX_LISTED: usize = 20;

/// Checks every sample; the error lists the problems found (the first [`MAX_LISTED`]), each
/// naming its sample by position and id, and the file.
pub fn validate_samples(samples: &[Sample], check: &DatasetCheck) -> Result<(), DataError> {
    let mut problems: Vec<String> = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    // Each image file once, with the first sample that uses it.
    let mut files: BTreeMap<&Path, String> = BTreeMap::new();
    for (i, s) in samples.iter().enumerate() {
        let who = format!("sample #{} (id `{}`)", i + 1, s.id);
        if let Some(first) = seen.insert(s.id.as_str(), i) {
            problems.push(format!(
                "{who}: duplicate id, first used by sample #{}",
                first + 1
            ));
        }
        for p in sample_problems(s) {
            problems.push(format!("{who}: {p}"));
        }
        let pages = s.document.iter().flat_map(|d| d.pages.iter().map(|p| &p.image));
        for path in s.images.iter().chain(pages) {
            files.entry(path.as_path()).or_insert_with(|| who.clone());
        }
    }
    let mut bad_files: Vec<String> = files
        .par_iter()
        .filter_map(|(path, who)| check_file(path, check).err().map(|e| format!("{who}: {e}")))
        .collect();
    bad_files.sort();
    problems.extend(bad_files);
    if problems.is_empty() {
        return Ok(());
    }
    let total = problems.len();
    problems.truncate(MAX_LISTED);
    let more = if total > MAX_LISTED {
        format!("\n  … and {} more", total - MAX_LISTED)
    } else {
        String::new()
    };
    Err(DataError::Invalid {
        path: check.origin.to_path_buf(),
        count: total,
        problems: format!("  {}{more}", problems.join("\n  ")),
    })
}

/// What is wrong with one sample on its own (no file access).
fn sample_problems(s: &Sample) -> Vec<String> {
    let mut out = Vec::new();
    if s.prompt.trim().is_empty() {
        out.push("empty `prompt`".into());
    }
    if let Judgment::Pair { candidates } = s.judgment {
        if !(2..=MAX_CANDIDATES).contains(&candidates) {
            out.push(format!(
                "judgment.candidates = {candidates}: must be in 2..={MAX_CANDIDATES}"
            ));
        }
    }
    match s.task {
        TaskKind::Zoom if s.images.is_empty() => {
            out.push("a zoom task needs at least one image in `images` (the zoom tool crops it)".into())
        }
        TaskKind::Instruction if s.response.as_deref().is_none_or(|r| r.trim().is_empty()) => {
            out.push("an instruction task needs a non-empty `response` (the validators check it)".into())
        }
        _ => {}
    }
    if let Some(doc) = &s.document {
        if doc.pages.is_empty() {
            out.push("`document` has no pages".into());
        }
    }
    out
}

/// `path` relative to `root` without leaving it (`..`, an absolute path elsewhere): the
/// remaining part, or an error.
pub fn confined<'p>(path: &'p Path, root: &Path) -> Result<&'p Path, ConfineError> {
    let rest = path.strip_prefix(root).map_err(|_| ConfineError::OutsideRoot)?;
    let mut depth = 0i32;
    for c in rest.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return Err(ConfineError::LeavesRoot);
                }
            }
            Component::RootDir | Component::Prefix(_) => return Err(ConfineError::Absolute),
        }
    }
    Ok(rest)
}

fn check_file(path: &Path, check: &DatasetCheck) -> Result<(), ImageFileError> {
    let in_extra_root = check.extra_roots.iter().any(|r| confined(path, r).is_ok());
    if let Some(root) = check.root.filter(|_| !in_extra_root) {
        confined(path, root).map_err(|source| ImageFileError::NotConfined {
            path: path.to_path_buf(),
            root: root.to_path_buf(),
            source,
        })?;
    }
    if !path.is_file() {
        return Err(ImageFileError::Missing {
            path: path.to_path_buf(),
        });
    }
    if check.images == ImageCheck::Exists {
        return Ok(());
    }
    check_image(path, &check.limits, check.images == ImageCheck::Decode).map_err(|source| {
        ImageFileError::Unreadable {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Reads the header (and decodes, when `decode`) of one image within `limits`.
pub fn check_image(path: &Path, limits: &ImageLimits, decode: bool) -> Result<(), ImageProblem> {
    let reader = || {
        image::ImageReader::open(path)
            .and_then(|r| r.with_guessed_format())
            .map_err(ImageProblem::Open)
    };
    let r = reader()?;
    if r.format().is_none() {
        return Err(ImageProblem::UnknownFormat);
    }
    let (w, h) = r.into_dimensions().map_err(ImageProblem::Header)?;
    let pixels = w as u64 * h as u64;
    if w > limits.max_side || h > limits.max_side || pixels > limits.max_pixels {
        return Err(ImageProblem::TooLarge {
            width: w,
            height: h,
            max_side: limits.max_side,
            max_pixels: limits.max_pixels,
        });
    }
    if decode {
        let mut r = reader()?;
        let mut l = image::Limits::default();
        l.max_image_width = Some(limits.max_side);
        l.max_image_height = Some(limits.max_side);
        l.max_alloc = Some(limits.max_pixels * 8);
        r.limits(l);
        r.decode().map_err(ImageProblem::Decode)?;
    }
    Ok(())
}

/// A file's text, refusing a UTF-8 byte-order mark by name (JSON and TOML parsers report it as
/// an unexpected character at line 1, column 1).
pub fn reject_bom(path: &Path, text: &str) -> Result<(), DataError> {
    if text.starts_with('\u{feff}') {
        return Err(DataError::Row {
            path: path.to_path_buf(),
            line: 1,
            source: Box::new(RowError::Bom),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Document, DocumentPage};
    use std::path::PathBuf;

    fn sample(id: &str, task: TaskKind, images: Vec<PathBuf>) -> Sample {
        Sample {
            id: id.into(),
            task,
            prompt: "Which is better?".into(),
            images,
            document: None,
            response: Some("r".into()),
            judgment: Judgment::Pair { candidates: 2 },
            ground_truth: "1".into(),
            source: None,
        }
    }

    #[test]
    fn every_problem_is_listed_with_its_sample() {
        let dir = std::env::temp_dir().join(format!("armt-validate-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("img")).unwrap();
        let good = dir.join("img/ok.png");
        image::RgbImage::new(4, 3).save(&good).unwrap();
        std::fs::write(dir.join("img/bad.png"), b"not a png").unwrap();
        let data = dir.join("train.jsonl");
        let mut huge = sample("d", TaskKind::Zoom, vec![good.clone()]);
        huge.judgment = Judgment::Pair {
            candidates: 1_000_000_000_000_000_000,
        };
        let mut doc = sample("e", TaskKind::Document, vec![]);
        doc.document = Some(Document {
            name: "x".into(),
            pages: vec![DocumentPage {
                image: dir.join("../../etc/passwd"),
                text: String::new(),
            }],
        });
        let samples = vec![
            sample("a", TaskKind::Zoom, vec![good.clone()]),
            sample("a", TaskKind::Zoom, vec![dir.join("img/missing.png")]),
            sample("b", TaskKind::Zoom, vec![]),
            sample("c", TaskKind::Zoom, vec![dir.join("img/bad.png")]),
            huge,
            doc,
        ];
        let err = validate_samples(&samples, &DatasetCheck::for_file(&data))
            .unwrap_err()
            .to_string();
        for want in [
            "train.jsonl",
            "sample #2 (id `a`): duplicate id, first used by sample #1",
            "missing.png does not exist",
            "sample #3 (id `b`): a zoom task needs at least one image",
            "bad.png: unreadable header",
            "candidates = 1000000000000000000: must be in 2..=26",
            "leaves the data root",
        ] {
            assert!(err.contains(want), "`{want}` not in:\n{err}");
        }
        assert!(validate_samples(&samples[..1], &DatasetCheck::for_file(&data)).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_huge_header_is_refused_by_its_dimensions() {
        let dir = std::env::temp_dir().join(format!("armt-validate-huge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("huge.png");
        std::fs::write(&p, huge_png_header(100_000, 100_000)).unwrap();
        let err = check_image(&p, &ImageLimits::default(), true).unwrap_err();
        assert!(
            matches!(err, ImageProblem::TooLarge { width: 100_000, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("100000×100000"), "{err}");
        // A missing file: the io error is the source.
        let err = check_image(&dir.join("absent.png"), &ImageLimits::default(), false).unwrap_err();
        let io = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(
            io.map(|e| e.kind()),
            Some(std::io::ErrorKind::NotFound),
            "{err:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A PNG signature, an IHDR chunk claiming `w`×`h`, and empty IDAT and IEND chunks.
    pub(crate) fn huge_png_header(w: u32, h: u32) -> Vec<u8> {
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend(w.to_be_bytes());
        ihdr.extend(h.to_be_bytes());
        ihdr.extend([8, 2, 0, 0, 0]);
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        out.extend(13u32.to_be_bytes());
        out.extend(&ihdr);
        out.extend(crc32(&ihdr).to_be_bytes());
        for chunk in [&b"IDAT"[..], &b"IEND"[..]] {
            out.extend(0u32.to_be_bytes());
            out.extend(chunk);
            out.extend(crc32(chunk).to_be_bytes());
        }
        out
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
}
