//! Per-trajectory state the tools read: the paper's `response_store` (`imgs_map`, `texts_map`)
//! plus the sample's document.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use armt_data::{Document, Sample};
use image::DynamicImage;

use crate::error::ContextError;

/// An image known by key; files are decoded on first use (a trajectory that never zooms
/// never pays for decoding), at most once even when tools run on several threads.
struct ImageSlot {
    path: Option<PathBuf>,
    cell: OnceLock<Result<Arc<DynamicImage>, ContextError>>,
}

// By hand: the derived Debug would print every pixel.
impl std::fmt::Debug for ImageSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let loaded = self
            .cell
            .get()
            .map(|r| r.as_ref().map(|i| (i.width(), i.height())));
        f.debug_struct("ImageSlot")
            .field("path", &self.path)
            .field("loaded", &loaded)
            .finish()
    }
}

impl ImageSlot {
    fn from_image(img: Arc<DynamicImage>) -> Self {
        let cell = OnceLock::new();
        let _ = cell.set(Ok(img));
        Self { path: None, cell }
    }

    fn from_path(path: PathBuf) -> Self {
        Self {
            path: Some(path),
            cell: OnceLock::new(),
        }
    }

    fn get(&self) -> Result<Arc<DynamicImage>, ContextError> {
        self.cell
            .get_or_init(|| {
                let path = self.path.as_ref().expect("a slot without an image has a path");
                // The text goes to the model (and into trajectories): the file name only, never
                // the host's directories.
                let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
                image::open(path)
                    .map(Arc::new)
                    .map_err(|e| ContextError::ImageLoad {
                        name: name.into_owned(),
                        source: Arc::new(e),
                    })
            })
            .clone()
    }
}

/// Per-trajectory state: images by key (`original_image`, `original_image_1`, …,
/// `observation_1`, …, in insertion order), the sample's document (its pages' images loaded
/// lazily), and named texts (`text_0` = the candidate response instruction validators check).
///
/// Tools only read it (`&ToolContext`); [`crate::ToolRegistry::call`] registers the images a
/// tool returns as new observations (`&mut`).
#[derive(Debug, Default)]
pub struct ToolContext {
    images: Vec<(String, ImageSlot)>,
    observations: usize,
    texts: Vec<(String, String)>,
    document: Option<Document>,
    pages: Vec<ImageSlot>,
}

impl ToolContext {
    /// An empty context (no images, texts or document).
    pub fn new() -> Self {
        Self::default()
    }

    /// The context of one trajectory of `sample`: its images as `original_image`,
    /// `original_image_1`, … (the training agent loop's keys), its document, and its
    /// candidate response as `text_0`. Nothing is decoded yet.
    pub fn from_sample(sample: &Sample) -> Self {
        let mut ctx = Self::new();
        for (i, path) in sample.images.iter().enumerate() {
            ctx.add_image_path(original_key(i), path.clone());
        }
        if let Some(doc) = &sample.document {
            ctx.set_document(doc.clone());
        }
        if let Some(resp) = &sample.response {
            ctx.set_text("text_0", resp.clone());
        }
        ctx
    }

    /// Registers (or replaces) an in-memory image under `key`.
    pub fn add_image(&mut self, key: impl Into<String>, img: Arc<DynamicImage>) {
        self.put(key.into(), ImageSlot::from_image(img));
    }

    /// Registers (or replaces) an image file under `key`, decoded on first use.
    pub fn add_image_path(&mut self, key: impl Into<String>, path: PathBuf) {
        self.put(key.into(), ImageSlot::from_path(path));
    }

    fn put(&mut self, key: String, slot: ImageSlot) {
        match self.images.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = slot,
            None => self.images.push((key, slot)),
        }
    }

    /// The key the next observation will get. The paper numbers observations by
    /// `len(imgs_map)`, which skips numbers when a sample has several original images; a
    /// counter of observations keeps them `observation_1, observation_2, …` regardless.
    pub fn next_observation_key(&self) -> String {
        format!("observation_{}", self.observations + 1)
    }

    /// Registers a tool's image as the next observation and returns its key.
    pub fn register_observation(&mut self, img: Arc<DynamicImage>) -> String {
        let key = self.next_observation_key();
        self.observations += 1;
        self.add_image(key.clone(), img);
        key
    }

    /// How many observations have been registered.
    pub fn observation_count(&self) -> usize {
        self.observations
    }

    /// Image keys in insertion order (originals first, then observations).
    pub fn image_keys(&self) -> Vec<String> {
        self.images.iter().map(|(k, _)| k.clone()).collect()
    }

    /// The image under `key`: `None` if the key is unknown, `Some(Err)` if its file cannot be
    /// decoded.
    pub fn image(&self, key: &str) -> Option<Result<Arc<DynamicImage>, ContextError>> {
        self.images.iter().find(|(k, _)| k == key).map(|(_, s)| s.get())
    }

    /// Registers (or replaces) a named text (`text_0`, …).
    pub fn set_text(&mut self, key: impl Into<String>, text: impl Into<String>) {
        let (key, text) = (key.into(), text.into());
        match self.texts.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = text,
            None => self.texts.push((key, text)),
        }
    }

    /// The named text, if any.
    pub fn text(&self, key: &str) -> Option<&str> {
        self.texts.iter().find(|(k, _)| k == key).map(|(_, t)| t.as_str())
    }

    /// Text keys in insertion order.
    pub fn text_keys(&self) -> Vec<String> {
        self.texts.iter().map(|(k, _)| k.clone()).collect()
    }

    /// Sets the document page retrieval works on (its page images are decoded lazily).
    pub fn set_document(&mut self, doc: Document) {
        self.pages = doc
            .pages
            .iter()
            .map(|p| ImageSlot::from_path(p.image.clone()))
            .collect();
        self.document = Some(doc);
    }

    /// Sets the document with its page images already in memory (tests, in-memory data).
    pub fn set_document_with_images(&mut self, doc: Document, images: Vec<Arc<DynamicImage>>) {
        assert_eq!(doc.pages.len(), images.len(), "one image per page");
        self.pages = images.into_iter().map(ImageSlot::from_image).collect();
        self.document = Some(doc);
    }

    /// The sample's document, if it has one.
    pub fn document(&self) -> Option<&Document> {
        self.document.as_ref()
    }

    /// The image of page `index` (0-based) of the document; only the document's own pages are
    /// reachable, so no argument can make a tool read another file.
    pub fn page_image(&self, index: usize) -> Result<Arc<DynamicImage>, ContextError> {
        self.pages
            .get(index)
            .ok_or(ContextError::NoSuchPage { page: index + 1 })?
            .get()
    }
}

fn original_key(i: usize) -> String {
    if i == 0 {
        "original_image".to_string()
    } else {
        format!("original_image_{i}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use armt_data::{DocumentPage, Judgment, TaskKind};

    #[test]
    fn from_sample_keys_and_texts() {
        let s = Sample {
            id: "a".into(),
            task: TaskKind::Instruction,
            prompt: "p".into(),
            images: vec!["/nonexistent/a.png".into(), "/nonexistent/b.png".into()],
            document: Some(Document {
                name: "doc".into(),
                pages: vec![DocumentPage {
                    image: "/nonexistent/p1.png".into(),
                    text: "x".into(),
                }],
            }),
            response: Some("Hello.".into()),
            judgment: Judgment::Single,
            ground_truth: "true".into(),
            source: None,
        };
        let mut ctx = ToolContext::from_sample(&s);
        assert_eq!(ctx.image_keys(), vec!["original_image", "original_image_1"]);
        assert_eq!(ctx.text("text_0"), Some("Hello."));
        assert_eq!(ctx.document().unwrap().name, "doc");
        // Lazy: the missing file only fails when asked for.
        let err = ctx.image("original_image").unwrap().unwrap_err();
        // The decoder's error stays reachable as the source (an io error: no such file).
        let source = std::error::Error::source(&err).expect("the image error is kept");
        let image_err = source
            .downcast_ref::<Arc<image::ImageError>>()
            .expect("an image::ImageError");
        assert!(
            matches!(**image_err, image::ImageError::IoError(_)),
            "{image_err:?}"
        );
        let err = err.to_string();
        assert!(err.starts_with("cannot load image a.png:"), "{err}");
        assert!(
            !err.contains("/nonexistent"),
            "a host path reached the tool text: {err}"
        );
        assert!(ctx.image("observation_1").is_none());
        assert!(ctx.page_image(0).is_err());
        assert_eq!(
            ctx.page_image(1).unwrap_err().to_string(),
            "page 2 does not exist"
        );
        // Observations are numbered from 1 whatever the number of originals.
        assert_eq!(ctx.next_observation_key(), "observation_1");
        let k = ctx.register_observation(Arc::new(DynamicImage::new_rgb8(2, 2)));
        assert_eq!(k, "observation_1");
        assert_eq!(ctx.next_observation_key(), "observation_2");
        assert_eq!(ctx.image("observation_1").unwrap().unwrap().width(), 2);
        assert_eq!(ctx.image_keys().len(), 3);
    }
}
