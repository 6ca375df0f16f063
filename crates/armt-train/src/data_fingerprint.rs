//! What a resume checks about the training data beyond its path. The data loader resumes at a
//! position in a permutation of the rows; if the file behind `data.train` was edited in the
//! meantime, the same position names other rows and the run silently trains on something else.
//! So each checkpoint records the row count and a SHA-256 over the rows, and a resume compares.
//!
//! Image files are named, not read: moving the data folder keeps the fingerprint (paths are
//! resolved to absolute ones on load), and hashing every image would cost a second full read
//! of the data set at start-up. An SFT example is hashed by its tokens, loss mask and image
//! grids, which also catches a changed tokenizer or chat template.

use crate::batch::Example;
use armt_data::Sample;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Row count and content hash of a training set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFingerprint {
    pub rows: usize,
    /// Hex SHA-256 over the rows in order, each prefixed by its length.
    pub sha256: String,
}

impl std::fmt::Display for DataFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rows, sha256 {}",
            self.rows,
            &self.sha256[..12.min(self.sha256.len())]
        )
    }
}

/// Hashes length-prefixed records.
struct RowHasher {
    hasher: Sha256,
    rows: usize,
}

impl RowHasher {
    fn new() -> Self {
        Self {
            hasher: Sha256::new(),
            rows: 0,
        }
    }

    fn row(&mut self, bytes: &[u8]) {
        self.hasher.update((bytes.len() as u64).to_le_bytes());
        self.hasher.update(bytes);
        self.rows += 1;
    }

    fn finish(self) -> DataFingerprint {
        let digest = self.hasher.finalize();
        DataFingerprint {
            rows: self.rows,
            sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

fn file_name(p: &Path) -> PathBuf {
    p.file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| p.to_path_buf())
}

impl DataFingerprint {
    /// Of dataset rows (GRPO): every field, with image paths reduced to their file names.
    pub fn of_samples(samples: &[Sample]) -> Self {
        let mut h = RowHasher::new();
        for s in samples {
            let mut row = s.clone();
            row.images = row.images.iter().map(|p| file_name(p)).collect();
            if let Some(doc) = &mut row.document {
                for page in &mut doc.pages {
                    page.image = file_name(&page.image);
                }
            }
            // A Sample always serialises (plain strings, paths and enums).
            h.row(&serde_json::to_vec(&row).unwrap_or_default());
        }
        h.finish()
    }

    /// Of cold-start examples: token ids, where the response starts, the loss mask and the
    /// image grids.
    pub fn of_examples(examples: &[Example]) -> Self {
        let mut h = RowHasher::new();
        for e in examples {
            let mut row = Vec::with_capacity(8 * (e.ids.len() + 2) + e.loss_mask.len());
            row.extend((e.prompt_len as u64).to_le_bytes());
            row.extend((e.ids.len() as u64).to_le_bytes());
            row.extend(e.ids.iter().flat_map(|t| t.to_le_bytes()));
            row.extend(&e.loss_mask);
            for img in &e.images {
                row.extend(img.grid_thw.iter().flat_map(|d| (*d as u64).to_le_bytes()));
            }
            h.row(&row);
        }
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use armt_data::{Judgment, TaskKind};

    fn sample(id: &str, truth: &str, image: &str) -> Sample {
        Sample {
            id: id.into(),
            task: TaskKind::Zoom,
            prompt: "Which answer is right?".into(),
            images: vec![PathBuf::from(image)],
            document: None,
            response: None,
            judgment: Judgment::Pair { candidates: 2 },
            ground_truth: truth.into(),
            source: None,
        }
    }

    /// SHA-256 of the empty input, from FIPS 180-2's published test vectors.
    const SHA256_EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn no_rows_hash_to_the_empty_digest() {
        let fp = DataFingerprint::of_samples(&[]);
        assert_eq!((fp.rows, fp.sha256.as_str()), (0, SHA256_EMPTY));
    }

    #[test]
    fn edits_and_reordering_change_it_and_moving_the_folder_does_not() {
        let rows = vec![
            sample("a", "1", "/data/x/a.png"),
            sample("b", "2", "/data/x/b.png"),
        ];
        let base = DataFingerprint::of_samples(&rows);
        assert_eq!(base.rows, 2);
        let moved = vec![
            sample("a", "1", "/elsewhere/a.png"),
            sample("b", "2", "/elsewhere/b.png"),
        ];
        assert_eq!(DataFingerprint::of_samples(&moved), base);
        let edited = vec![
            sample("a", "1", "/data/x/a.png"),
            sample("b", "1", "/data/x/b.png"),
        ];
        assert_ne!(DataFingerprint::of_samples(&edited), base);
        let reordered = vec![rows[1].clone(), rows[0].clone()];
        assert_ne!(DataFingerprint::of_samples(&reordered), base);
        assert_ne!(DataFingerprint::of_samples(&rows[..1]), base);
        assert!(base.to_string().starts_with("2 rows, sha256 "), "{base}");
    }

    #[test]
    fn examples_differ_by_tokens_and_mask() {
        let ex = |ids: Vec<i64>, mask: Vec<u8>| Example {
            ids,
            prompt_len: 2,
            loss_mask: mask,
            images: vec![],
        };
        let base = DataFingerprint::of_examples(&[ex(vec![1, 2, 3, 4], vec![1, 1])]);
        assert_eq!(
            base,
            DataFingerprint::of_examples(&[ex(vec![1, 2, 3, 4], vec![1, 1])])
        );
        assert_ne!(
            base,
            DataFingerprint::of_examples(&[ex(vec![1, 2, 3, 5], vec![1, 1])])
        );
        assert_ne!(
            base,
            DataFingerprint::of_examples(&[ex(vec![1, 2, 3, 4], vec![0, 1])])
        );
    }
}
