//! Document page retrieval over the sample's own multi-page document: by query
//! (`doc_page_retrieval_by_query`, BM25 over page texts by default) and by 1-based page number
//! (`doc_page_retrieval_by_index`).
//!
//! The paper retrieves with CLIP embeddings from a Chroma store and reads page images from a
//! folder named by the `filename` argument. Here every page comes from the context's
//! [`Document`]; the `filename` argument must equal the document's name and only selects it,
//! so no argument can reach another file.

use std::collections::HashMap;
use std::sync::Arc;

use armt_data::Document;
use image::imageops::FilterType;
use image::{DynamicImage, Rgb, RgbImage};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ArgError, ContextError, ToolSpecError};
use crate::{InstanceId, Tool, ToolContext, ToolOutput};

/// Ranks a document's pages for a query. BM25 is the default; an embedding retriever (the
/// paper's CLIP) can implement this too.
pub trait PageScorer: Send + Sync {
    /// One score per page of `doc`, in page order; higher is more relevant, and pages scoring
    /// 0 or less are never returned.
    fn score(&self, query: &str, doc: &Document) -> Vec<f64>;
}

/// Okapi BM25 over each page's text, the document's pages being the corpus.
#[derive(Debug, Clone, Copy)]
pub struct Bm25Scorer {
    pub k1: f64,
    pub b: f64,
}

impl Default for Bm25Scorer {
    fn default() -> Self {
        Self { k1: 1.2, b: 0.75 }
    }
}

impl PageScorer for Bm25Scorer {
    fn score(&self, query: &str, doc: &Document) -> Vec<f64> {
        let pages: Vec<Vec<String>> = doc.pages.iter().map(|p| tokenize(&p.text)).collect();
        let n = pages.len() as f64;
        let avg_len = (pages.iter().map(Vec::len).sum::<usize>() as f64 / n.max(1.0)).max(1.0);
        let tfs: Vec<HashMap<&str, usize>> = pages
            .iter()
            .map(|toks| {
                let mut m = HashMap::new();
                for t in toks {
                    *m.entry(t.as_str()).or_insert(0) += 1;
                }
                m
            })
            .collect();
        let mut terms = tokenize(query);
        terms.sort();
        terms.dedup();
        let mut scores = vec![0.0; pages.len()];
        for term in &terms {
            let df = tfs.iter().filter(|m| m.contains_key(term.as_str())).count() as f64;
            if df == 0.0 {
                continue;
            }
            // Lucene's idf: always positive, so a term on every page still counts a little.
            let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
            for (i, m) in tfs.iter().enumerate() {
                if let Some(&tf) = m.get(term.as_str()) {
                    let tf = tf as f64;
                    let len = pages[i].len() as f64;
                    scores[i] +=
                        idf * tf * (self.k1 + 1.0) / (tf + self.k1 * (1.0 - self.b + self.b * len / avg_len));
                }
            }
        }
        scores
    }
}

/// Lowercased alphanumeric runs; CJK characters are one token each (they are not separated by
/// spaces, and single characters are the usual unit for BM25 on them).
fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars().flat_map(char::to_lowercase) {
        if is_cjk(c) {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            out.push(c.to_string());
        } else if c.is_alphanumeric() {
            cur.push(c);
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xAC00..=0xD7AF | 0xF900..=0xFAFF)
}

/// What the retrieval tools return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DocOutputMode {
    /// Page images (the paper's behaviour).
    #[default]
    Image,
    /// Page texts only.
    Text,
    /// Images and texts.
    Both,
}

/// `config:` of both retrieval tools in the YAML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocConfig {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Pages returned by a query (`RETRIEVE_K`).
    #[serde(default = "d_k")]
    pub retrieve_k: usize,
    /// Longest side of each page image (`RAG_IMAGE_MAX_SIDE`); pages are only downscaled.
    #[serde(default = "d_side")]
    pub max_side: u32,
    /// Most pixels of the stitched image (`MAX_CONCAT_PIXELS`).
    #[serde(default = "d_px")]
    pub max_concat_pixels: u64,
    /// White gap around and between stitched pages, in pixels.
    #[serde(default = "d_pad")]
    pub padding: u32,
    #[serde(default)]
    pub output: DocOutputMode,
    /// Characters of each page's text kept in text output (0 = all). Per page, so that the
    /// final head-and-tail truncation does not drop the middle pages entirely.
    #[serde(default = "d_text")]
    pub page_text_max_chars: usize,
    /// Only `bm25` is built in; other scorers are attached in code with `with_scorer`.
    #[serde(default = "d_scorer")]
    pub scorer: String,
    #[serde(default = "d_k1")]
    pub bm25_k1: f64,
    #[serde(default = "d_b")]
    pub bm25_b: f64,
}

fn d_k() -> usize {
    5
}
fn d_side() -> u32 {
    1120
}
fn d_px() -> u64 {
    80_000_000
}
fn d_pad() -> u32 {
    8
}
fn d_text() -> usize {
    1500
}
fn d_scorer() -> String {
    "bm25".into()
}
fn d_k1() -> f64 {
    1.2
}
fn d_b() -> f64 {
    0.75
}

impl Default for DocConfig {
    fn default() -> Self {
        serde_json::from_value(json!({})).expect("all fields have defaults")
    }
}

impl DocConfig {
    /// Checks values the types cannot.
    pub fn validate(&self) -> Result<(), ToolSpecError> {
        crate::registry::check_native(&self.kind)?;
        if self.scorer != "bm25" {
            return Err(ToolSpecError::UnknownScorer {
                scorer: self.scorer.clone(),
            });
        }
        if self.retrieve_k == 0 || self.max_side == 0 || self.max_concat_pixels == 0 {
            return Err(ToolSpecError::NotPositive);
        }
        Ok(())
    }
}

/// The `filename` argument and the context's document (an error text if either is missing).
fn document_for<'a>(args: &Value, ctx: &'a ToolContext) -> Result<(&'a Document, String), ArgError> {
    let filename = match args.get("filename") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        _ => return Err(ArgError::Missing { name: "filename" }),
    };
    let doc = ctx.document().ok_or(ArgError::NoDocument)?;
    Ok((doc, filename))
}

/// A page image with its longest side at most `max_side` (downscale only).
fn fitted_page(ctx: &ToolContext, index: usize, max_side: u32) -> Result<DynamicImage, ContextError> {
    let img = ctx.page_image(index)?;
    let long = img.width().max(img.height());
    if long <= max_side {
        return Ok((*img).clone());
    }
    let s = max_side as f64 / long as f64;
    let w = ((img.width() as f64 * s).round() as u32).max(1);
    let h = ((img.height() as f64 * s).round() as u32).max(1);
    Ok(img.resize_exact(w, h, FilterType::CatmullRom))
}

/// Pages side by side in one row on white, `pad` px around and between, vertically centred;
/// the whole downscaled if it exceeds `max_pixels`.
fn stitch(pages: &[DynamicImage], pad: u32, max_pixels: u64) -> DynamicImage {
    let w: u32 = pages.iter().map(|p| p.width()).sum::<u32>() + pad * (pages.len() as u32 + 1);
    let inner_h = pages.iter().map(|p| p.height()).max().unwrap_or(0);
    let h = inner_h + 2 * pad;
    let mut canvas = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let mut x = pad;
    for p in pages {
        let y = pad + (inner_h - p.height()) / 2;
        image::imageops::overlay(&mut canvas, &p.to_rgb8(), x as i64, y as i64);
        x += p.width() + pad;
    }
    let px = w as u64 * h as u64;
    let out = DynamicImage::ImageRgb8(canvas);
    if px <= max_pixels {
        return out;
    }
    let s = (max_pixels as f64 / px as f64).sqrt();
    let nw = ((w as f64 * s).floor() as u32).max(1);
    let nh = ((h as f64 * s).floor() as u32).max(1);
    out.resize_exact(nw, nh, FilterType::CatmullRom)
}

fn page_text(doc: &Document, index: usize, max_chars: usize) -> String {
    let t = doc.pages[index].text.trim();
    if max_chars == 0 {
        t.to_string()
    } else {
        crate::truncate_tool_text(t, max_chars)
    }
}

fn pages_repr(pages: &[usize]) -> String {
    let items: Vec<String> = pages.iter().map(|p| p.to_string()).collect();
    format!("[{}]", items.join(", "))
}

fn default_schema(name: &str, description: &str, second: (&str, Value)) -> Value {
    let mut props = serde_json::Map::new();
    props.insert(
        "filename".into(),
        json!({"type": "string", "description": "Document identifier used for retrieval."}),
    );
    props.insert(second.0.into(), second.1);
    json!({"type": "function", "function": {"name": name, "description": description,
        "parameters": {"type": "object", "properties": props, "required": ["filename", second.0]}}})
}

/// `doc_page_retrieval_by_query`: the top-k pages for a query.
pub struct DocPageSearchTool {
    schema: Value,
    name: String,
    config: DocConfig,
    scorer: Arc<dyn PageScorer>,
}

impl DocPageSearchTool {
    /// With the scorer `config.scorer` names (BM25).
    pub fn new(config: DocConfig, schema: Option<Value>) -> Self {
        let scorer = Arc::new(Bm25Scorer {
            k1: config.bm25_k1,
            b: config.bm25_b,
        });
        let schema = schema.unwrap_or_else(Self::default_schema);
        let name = crate::function_name(&schema, "doc_page_retrieval_by_query");
        Self {
            schema,
            name,
            config,
            scorer,
        }
    }

    /// Replaces the scorer (e.g. an embedding retriever).
    pub fn with_scorer(mut self, scorer: Arc<dyn PageScorer>) -> Self {
        self.scorer = scorer;
        self
    }

    pub fn default_schema() -> Value {
        default_schema(
            "doc_page_retrieval_by_query",
            "Search pages in a document by natural-language query and return one image that concatenates the top-k matched pages. Note that this tool may be inaccurate, so you should use it as a reference only.",
            ("query", json!({"type": "string", "description": "Natural-language search query to find relevant pages."})),
        )
    }

    /// Indices (0-based) of the best pages, best first, ties in page order.
    fn rank(&self, query: &str, doc: &Document) -> Vec<usize> {
        let scores = self.scorer.score(query, doc);
        let mut idx: Vec<usize> = (0..doc.pages.len())
            .filter(|&i| scores.get(i).is_some_and(|s| *s > 0.0))
            .collect();
        idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        idx.truncate(self.config.retrieve_k);
        idx
    }
}

impl Tool for DocPageSearchTool {
    fn name(&self) -> &str {
        &self.name
    }

    fn schema(&self) -> &Value {
        &self.schema
    }

    fn execute(&self, _instance: InstanceId, args: &Value, ctx: &ToolContext) -> ToolOutput {
        let (doc, filename) = match document_for(args, ctx) {
            Ok(v) => v,
            Err(e) => return ToolOutput::error(e.to_string()),
        };
        let query = match args.get("query") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            _ => return ToolOutput::error("Error: missing required parameter 'query'."),
        };
        let not_found = format!(
            "No relevant content found for '{query}' in document '{filename}'. Maybe you should check your provided filename in your tool calling."
        );
        if filename != doc.name {
            // What the paper's store answers for a name it does not hold; a failed call.
            return ToolOutput::error(not_found);
        }
        let ranked = self.rank(&query, doc);
        if ranked.is_empty() {
            // A valid call that found nothing: the paper's reward (0.0), but not a success.
            let mut o = ToolOutput::error(not_found);
            o.reward = 0.0;
            return o;
        }
        let pages: Vec<usize> = ranked.iter().map(|i| i + 1).collect();
        let hint = "If the retrieved pages don't seem relevant, you can try using a different or more specific query string to improve the results.";
        let mut o = match self.config.output {
            DocOutputMode::Text => ToolOutput::ok(format!(
                "Page texts for query '{query}' in '{filename}': pages {}. {hint}",
                pages_repr(&pages)
            )),
            DocOutputMode::Image | DocOutputMode::Both => {
                let imgs: Result<Vec<_>, _> = ranked
                    .iter()
                    .map(|&i| fitted_page(ctx, i, self.config.max_side))
                    .collect();
                let imgs = match imgs {
                    Ok(v) => v,
                    Err(e) => return ToolOutput::error(format!("Retrieval error: {e}")),
                };
                let img = stitch(&imgs, self.config.padding, self.config.max_concat_pixels);
                ToolOutput::ok(format!(
                    "Concatenated page images for query '{query}' in '{filename}': pages {}. {hint}",
                    pages_repr(&pages)
                ))
                .with_image(Arc::new(img))
            }
        };
        if self.config.output != DocOutputMode::Image {
            for &i in &ranked {
                o.text.push_str(&format!(
                    "\n\n[Page {}]\n{}",
                    i + 1,
                    page_text(doc, i, self.config.page_text_max_chars)
                ));
            }
        }
        o.metrics.insert("pages".into(), json!(pages));
        o
    }
}

/// `doc_page_retrieval_by_index`: one page by its 1-based number.
pub struct DocPageByIndexTool {
    schema: Value,
    name: String,
    config: DocConfig,
}

impl DocPageByIndexTool {
    pub fn new(config: DocConfig, schema: Option<Value>) -> Self {
        let schema = schema.unwrap_or_else(Self::default_schema);
        let name = crate::function_name(&schema, "doc_page_retrieval_by_index");
        Self { schema, name, config }
    }

    pub fn default_schema() -> Value {
        default_schema(
            "doc_page_retrieval_by_index",
            "Return a single page image by 1-based page index for a given document.",
            (
                "image_idx",
                json!({"type": "integer", "minimum": 1, "description": "1-based page index to fetch (e.g., 1 = first page image)."}),
            ),
        )
    }
}

/// An integer argument: a JSON integer, an integral float, or a string of one (models often
/// quote numbers).
fn as_integer(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl Tool for DocPageByIndexTool {
    fn name(&self) -> &str {
        &self.name
    }

    fn schema(&self) -> &Value {
        &self.schema
    }

    fn execute(&self, _instance: InstanceId, args: &Value, ctx: &ToolContext) -> ToolOutput {
        let (doc, filename) = match document_for(args, ctx) {
            Ok(v) => v,
            Err(e) => return ToolOutput::error(e.to_string()),
        };
        let Some(idx) = args.get("image_idx").and_then(as_integer) else {
            return ToolOutput::error("Error: 'image_idx' must be an integer (1-based).");
        };
        if idx < 1 {
            return ToolOutput::error("Error: 'image_idx' must be >= 1 (1-based index).");
        }
        if filename != doc.name || idx as usize > doc.pages.len() {
            // The paper leaves `{}` unformatted here; the values help the model correct itself.
            return ToolOutput::error(format!(
                "Error: Image not found for page {idx} in {filename}. Maybe you input the wrong filename or image index out of range. Please check your input and try again."
            ));
        }
        let i = idx as usize - 1;
        let mut o = match self.config.output {
            DocOutputMode::Text => ToolOutput::ok(format!(
                "Here is the text of page #{idx} for document '{filename}'."
            )),
            DocOutputMode::Image | DocOutputMode::Both => match fitted_page(ctx, i, self.config.max_side) {
                Ok(img) => ToolOutput::ok(format!("Here is page image #{idx} for document '{filename}'."))
                    .with_image(Arc::new(img)),
                Err(e) => return ToolOutput::error(format!("Retrieval error: {e}")),
            },
        };
        if self.config.output != DocOutputMode::Image {
            o.text.push_str(&format!(
                "\n\n[Page {idx}]\n{}",
                page_text(doc, i, self.config.page_text_max_chars)
            ));
        }
        o.metrics.insert("pages".into(), json!([idx]));
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use armt_data::DocumentPage;

    fn ctx() -> ToolContext {
        let texts = [
            "Annual report 2023. Revenue grew strongly.",
            "The revenue table: revenue by region, revenue by product.",
            "Board of directors and governance.",
            "Appendix: glossary of terms.",
        ];
        let doc = Document {
            name: "report.pdf".into(),
            pages: texts
                .iter()
                .map(|t| DocumentPage {
                    image: "/nonexistent".into(),
                    text: t.to_string(),
                })
                .collect(),
        };
        // Page i is (i+1)*10 px wide and 20 px high, coloured by index.
        let imgs = (0..4)
            .map(|i| {
                Arc::new(DynamicImage::ImageRgb8(RgbImage::from_pixel(
                    (i + 1) * 10,
                    20,
                    Rgb([i as u8 * 50, 0, 0]),
                )))
            })
            .collect();
        let mut c = ToolContext::new();
        c.set_document_with_images(doc, imgs);
        c
    }

    fn cfg(output: DocOutputMode) -> DocConfig {
        DocConfig {
            output,
            retrieve_k: 2,
            ..DocConfig::default()
        }
    }

    #[test]
    fn bm25_ranks_by_term_frequency() {
        let c = ctx();
        let s = Bm25Scorer::default().score("Revenue", c.document().unwrap());
        assert!(s[1] > s[0] && s[0] > 0.0 && s[2] == 0.0 && s[3] == 0.0, "{s:?}");
        assert_eq!(
            tokenize("Hello, World! 2023年报"),
            vec!["hello", "world", "2023", "年", "报"]
        );
    }

    #[test]
    fn query_returns_stitched_top_k() {
        let c = ctx();
        let t = DocPageSearchTool::new(cfg(DocOutputMode::Image), None);
        let o = t.execute(
            InstanceId::fresh(),
            &json!({"filename": "report.pdf", "query": "revenue governance"}),
            &c,
        );
        assert!(o.success);
        // "governance" is rarer (one page), so page 3 can outrank the revenue pages; all three match.
        let pages = o.metrics["pages"].as_array().unwrap().clone();
        assert_eq!(pages.len(), 2);
        assert_eq!(
            o.text,
            format!("Concatenated page images for query 'revenue governance' in 'report.pdf': pages [{}, {}]. If the retrieved pages don't seem relevant, you can try using a different or more specific query string to improve the results.", pages[0], pages[1])
        );
        let img = &o.images[0];
        let widths: u32 = pages.iter().map(|p| p.as_u64().unwrap() as u32 * 10).sum();
        assert_eq!((img.width(), img.height()), (widths + 8 * 3, 20 + 16));
        let rgb = img.to_rgb8();
        assert_eq!(rgb.get_pixel(0, 0), &Rgb([255, 255, 255]));
        let first = pages[0].as_u64().unwrap() as u8 - 1;
        assert_eq!(rgb.get_pixel(8, 8), &Rgb([first * 50, 0, 0]));
    }

    #[test]
    fn query_text_mode_and_limits() {
        let c = ctx();
        let t = DocPageSearchTool::new(cfg(DocOutputMode::Text), None);
        let o = t.execute(
            InstanceId::fresh(),
            &json!({"filename": "report.pdf", "query": "glossary"}),
            &c,
        );
        assert!(o.success && o.images.is_empty());
        assert_eq!(o.text, "Page texts for query 'glossary' in 'report.pdf': pages [4]. If the retrieved pages don't seem relevant, you can try using a different or more specific query string to improve the results.\n\n[Page 4]\nAppendix: glossary of terms.");
        // Size limits: longest side and total pixels.
        let mut conf = cfg(DocOutputMode::Both);
        conf.max_side = 10;
        conf.max_concat_pixels = 100;
        let t = DocPageSearchTool::new(conf, None);
        let o = t.execute(
            InstanceId::fresh(),
            &json!({"filename": "report.pdf", "query": "glossary"}),
            &c,
        );
        assert!(o.text.ends_with("[Page 4]\nAppendix: glossary of terms."));
        assert!(o.images[0].width() as u64 * o.images[0].height() as u64 <= 100);
    }

    #[test]
    fn query_errors() {
        let c = ctx();
        let t = DocPageSearchTool::new(cfg(DocOutputMode::Image), None);
        let run = |a: Value| t.execute(InstanceId::fresh(), &a, &c);
        let o = run(json!({"query": "x"}));
        assert_eq!(
            (o.text.as_str(), o.success, o.reward),
            ("Error: missing required parameter 'filename'.", false, -0.05)
        );
        assert_eq!(
            run(json!({"filename": "report.pdf"})).text,
            "Error: missing required parameter 'query'."
        );
        assert_eq!(
            run(json!({"filename": "report.pdf", "query": 3})).text,
            "Error: missing required parameter 'query'."
        );
        let o = run(json!({"filename": "../../etc/passwd", "query": "revenue"}));
        assert_eq!(o.text, "No relevant content found for 'revenue' in document '../../etc/passwd'. Maybe you should check your provided filename in your tool calling.");
        assert_eq!((o.success, o.reward), (false, -0.05));
        let o = run(json!({"filename": "report.pdf", "query": "zebra"}));
        assert_eq!(o.text, "No relevant content found for 'zebra' in document 'report.pdf'. Maybe you should check your provided filename in your tool calling.");
        assert_eq!((o.success, o.reward), (false, 0.0));
        let o = t.execute(
            InstanceId::fresh(),
            &json!({"filename": "a", "query": "b"}),
            &ToolContext::new(),
        );
        assert_eq!(
            o.text,
            "Error: there is no document in this task to retrieve pages from."
        );
        // A page image that cannot be loaded.
        let mut c2 = ToolContext::new();
        c2.set_document(Document {
            name: "d".into(),
            pages: vec![DocumentPage {
                image: "/nonexistent/p.png".into(),
                text: "cat".into(),
            }],
        });
        let o = t.execute(
            InstanceId::fresh(),
            &json!({"filename": "d", "query": "cat"}),
            &c2,
        );
        assert!(
            o.text.starts_with("Retrieval error: cannot load image p.png"),
            "{}",
            o.text
        );
    }

    #[test]
    fn by_index() {
        let c = ctx();
        let t = DocPageByIndexTool::new(cfg(DocOutputMode::Image), None);
        let run = |a: Value| t.execute(InstanceId::fresh(), &a, &c);
        let o = run(json!({"filename": "report.pdf", "image_idx": 2}));
        assert!(o.success);
        assert_eq!(o.text, "Here is page image #2 for document 'report.pdf'.");
        assert_eq!((o.images[0].width(), o.images[0].height()), (20, 20));
        assert_eq!(
            run(json!({"filename": "report.pdf", "image_idx": "3"})).text,
            "Here is page image #3 for document 'report.pdf'."
        );
        assert_eq!(
            run(json!({"filename": "report.pdf", "image_idx": 1.5})).text,
            "Error: 'image_idx' must be an integer (1-based)."
        );
        assert_eq!(
            run(json!({"filename": "report.pdf"})).text,
            "Error: 'image_idx' must be an integer (1-based)."
        );
        assert_eq!(
            run(json!({"filename": "report.pdf", "image_idx": 0})).text,
            "Error: 'image_idx' must be >= 1 (1-based index)."
        );
        let o = run(json!({"filename": "report.pdf", "image_idx": 5}));
        assert_eq!(o.text, "Error: Image not found for page 5 in report.pdf. Maybe you input the wrong filename or image index out of range. Please check your input and try again.");
        assert_eq!((o.success, o.reward), (false, -0.05));
        assert_eq!(run(json!({"filename": "/etc/hosts", "image_idx": 1})).text, "Error: Image not found for page 1 in /etc/hosts. Maybe you input the wrong filename or image index out of range. Please check your input and try again.");
        let t = DocPageByIndexTool::new(cfg(DocOutputMode::Text), None);
        let o = t.execute(
            InstanceId::fresh(),
            &json!({"filename": "report.pdf", "image_idx": 3}),
            &c,
        );
        assert_eq!(o.text, "Here is the text of page #3 for document 'report.pdf'.\n\n[Page 3]\nBoard of directors and governance.");
        assert!(o.images.is_empty());
    }

    #[test]
    fn config_validation() {
        assert!(DocConfig::default().validate().is_ok());
        let c = DocConfig {
            scorer: "clip".into(),
            ..DocConfig::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "config: unknown scorer `clip` (built in: bm25)"
        );
    }
}
