//! Qwen2-VL image preprocessing, matching transformers' PIL-backed `Qwen2VLImageProcessorPil`
//! (the "slow" processor): RGB conversion, `smart_resize`, PIL-exact bicubic resampling on
//! uint8, rescale, normalise, and patch flattening in the merge order the vision tower expects.

use std::path::Path;

use serde::Deserialize;

use crate::error::{ProcessingError, Result};

/// OPENAI_CLIP_MEAN / OPENAI_CLIP_STD, the class defaults of `Qwen2VLImageProcessor`, with the
/// digits as published there (f32 rounding of them is what numpy uses too).
#[allow(clippy::excessive_precision)]
const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
/// PIL's `Image.Resampling.BICUBIC`; the only resampling filter the Qwen2-VL processor uses.
const PIL_BICUBIC: u32 = 3;

/// Settings of `preprocessor_config.json`. Missing keys take `Qwen2VLImageProcessor`'s class
/// defaults (min 56², max 28²·1280, patch 14, temporal 2, merge 2, CLIP mean/std).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessorConfig {
    pub min_pixels: usize,
    pub max_pixels: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub do_resize: bool,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub do_convert_rgb: bool,
}

impl Default for ImageProcessorConfig {
    fn default() -> Self {
        Self {
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
            do_resize: true,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            do_convert_rgb: true,
        }
    }
}

/// `size` as configs write it: newer `{"shortest_edge", "longest_edge"}`, older `{"min_pixels", "max_pixels"}`.
#[derive(Deserialize, Default)]
struct RawSize {
    shortest_edge: Option<usize>,
    longest_edge: Option<usize>,
    min_pixels: Option<usize>,
    max_pixels: Option<usize>,
}

/// Mean/std may be a list of three or a single scalar broadcast to all channels.
#[derive(Deserialize)]
#[serde(untagged)]
enum PerChannel {
    One(f32),
    Three([f32; 3]),
}

impl PerChannel {
    fn get(self) -> [f32; 3] {
        match self {
            PerChannel::One(v) => [v; 3],
            PerChannel::Three(v) => v,
        }
    }
}

#[derive(Deserialize, Default)]
struct RawConfig {
    min_pixels: Option<usize>,
    max_pixels: Option<usize>,
    size: Option<RawSize>,
    patch_size: Option<usize>,
    temporal_patch_size: Option<usize>,
    merge_size: Option<usize>,
    image_mean: Option<PerChannel>,
    image_std: Option<PerChannel>,
    do_resize: Option<bool>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    do_convert_rgb: Option<bool>,
    resample: Option<u32>,
}

/// RGB as transformers' `convert_to_rgb` makes it (5.24): an image with an alpha channel is
/// composited onto an opaque white background (`PIL.Image.alpha_composite`), anything else is
/// converted as PIL's `convert("RGB")` does (grey replicated). Before 5.2x transformers dropped
/// alpha instead; a transparent pixel then kept its hidden colour.
pub fn convert_to_rgb(img: &image::DynamicImage) -> image::RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba8();
    let mut out = image::RgbImage::new(rgba.width(), rgba.height());
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let [r, g, b, a] = p.0;
        o.0 = [over_white(r, a), over_white(g, a), over_white(b, a)];
    }
    out
}

/// One channel of `alpha_composite(white, (c, a))` in PIL's fixed-point arithmetic
/// (libImaging/AlphaComposite.c, 7 precision bits, division by 255 as `((x >> 8) + x) >> 8`);
/// equal to PIL for all 65,536 (c, a) pairs.
fn over_white(c: u8, a: u8) -> u8 {
    const PRECISION_BITS: u32 = 7;
    if a == 0 {
        return 255;
    }
    let (c, a) = (c as u32, a as u32);
    let blend = 255 * (255 - a);
    let out_a255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / out_a255;
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    let tmp = c * coef1 + 255 * coef2 + (0x80 << PRECISION_BITS);
    ((((tmp >> 8) + tmp) >> 8) >> PRECISION_BITS) as u8
}

impl ImageProcessorConfig {
    /// Parses the JSON text of a `preprocessor_config.json`. `origin` names the source in errors.
    pub fn from_json_str(text: &str, origin: &Path) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|source| ProcessingError::Json {
            path: origin.to_path_buf(),
            source,
        })?;
        let d = Self::default();
        let size = raw.size.unwrap_or_default();
        // Same precedence as the transformers constructor: top-level min/max_pixels override `size`.
        let min_pixels = raw
            .min_pixels
            .or(size.shortest_edge)
            .or(size.min_pixels)
            .unwrap_or(d.min_pixels);
        let max_pixels = raw
            .max_pixels
            .or(size.longest_edge)
            .or(size.max_pixels)
            .unwrap_or(d.max_pixels);
        if let Some(r) = raw.resample {
            if r != PIL_BICUBIC {
                return Err(ProcessingError::Config {
                    path: origin.to_path_buf(),
                    reason: format!("resample={r} is not supported (only 3 = BICUBIC, what Qwen2-VL uses)"),
                });
            }
        }
        let cfg = Self {
            min_pixels,
            max_pixels,
            patch_size: raw.patch_size.unwrap_or(d.patch_size),
            temporal_patch_size: raw.temporal_patch_size.unwrap_or(d.temporal_patch_size),
            merge_size: raw.merge_size.unwrap_or(d.merge_size),
            image_mean: raw.image_mean.map(PerChannel::get).unwrap_or(d.image_mean),
            image_std: raw.image_std.map(PerChannel::get).unwrap_or(d.image_std),
            do_resize: raw.do_resize.unwrap_or(d.do_resize),
            do_rescale: raw.do_rescale.unwrap_or(d.do_rescale),
            rescale_factor: raw.rescale_factor.unwrap_or(d.rescale_factor),
            do_normalize: raw.do_normalize.unwrap_or(d.do_normalize),
            do_convert_rgb: raw.do_convert_rgb.unwrap_or(d.do_convert_rgb),
        };
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Reads and parses a `preprocessor_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ProcessingError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// `origin` names the config file in errors.
    fn validate(&self, origin: &Path) -> Result<()> {
        let bad = |reason: String| {
            Err(ProcessingError::Config {
                path: origin.to_path_buf(),
                reason,
            })
        };
        if self.patch_size == 0 || self.merge_size == 0 || self.temporal_patch_size == 0 {
            return bad(format!(
                "patch_size ({}), merge_size ({}) and temporal_patch_size ({}) must be positive",
                self.patch_size, self.merge_size, self.temporal_patch_size
            ));
        }
        if self.min_pixels > self.max_pixels {
            return bad(format!(
                "min_pixels ({}) > max_pixels ({})",
                self.min_pixels, self.max_pixels
            ));
        }
        if self.image_std.contains(&0.0) {
            return bad("image_std has a zero entry".into());
        }
        Ok(())
    }
}

/// Output of [`ImageProcessor::preprocess`] for one image.
#[derive(Debug, Clone)]
pub struct ProcessedImage {
    /// Row-major `[num_patches, patch_dim]`, rows in (block-row, block-col, merge-row, merge-col)
    /// order, columns in (channel, temporal, patch-row, patch-col) order. Shared: the n rollouts
    /// of a prompt (and the trainer's copies of them) hold one buffer, not n.
    pub pixel_values: std::sync::Arc<Vec<f32>>,
    /// `[t, h, w]` in patches; `t` is 1 for a still image.
    pub grid_thw: [usize; 3],
    /// `3 · temporal_patch_size · patch_size²` (1176 for Qwen2.5-VL).
    pub patch_dim: usize,
}

impl ProcessedImage {
    /// Number of rows of `pixel_values` (`t·h·w`).
    pub fn num_patches(&self) -> usize {
        self.grid_thw.iter().product()
    }
}

/// Target (height, width) for an image, as transformers 5.17 `smart_resize` computes it:
/// both multiples of `factor`, area within `[min_pixels, max_pixels]`, aspect ratio kept.
///
/// Rounding uses ties-to-even because Python's `round` does. Like transformers 5.17, tiny
/// images are not rejected (they are scaled up to `min_pixels`); a zero side, an aspect
/// ratio above 200, or a result that cannot satisfy the bounds is an error.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize)> {
    let err = |reason: String| ProcessingError::ImageSize {
        height,
        width,
        reason,
    };
    if height == 0 || width == 0 {
        return Err(err("an image side is zero".into()));
    }
    if factor == 0 {
        return Err(err("factor must be positive".into()));
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let ratio = h.max(w) / h.min(w);
    if ratio > 200.0 {
        return Err(err(format!(
            "absolute aspect ratio must be at most 200, got {ratio}"
        )));
    }
    let mut h_bar = (h / f).round_ties_even() as usize * factor;
    let mut w_bar = (w / f).round_ties_even() as usize * factor;
    if h_bar * w_bar > max_pixels {
        let beta = ((h * w) / max_pixels as f64).sqrt();
        h_bar = factor.max((h / beta / f).floor() as usize * factor);
        w_bar = factor.max((w / beta / f).floor() as usize * factor);
    } else if h_bar * w_bar < min_pixels {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() as usize * factor;
        w_bar = (w * beta / f).ceil() as usize * factor;
    }
    if h_bar == 0 || w_bar == 0 {
        return Err(err(format!("resized to {h_bar}x{w_bar}")));
    }
    Ok((h_bar, w_bar))
}

/// Qwen2-VL image processor (PIL-compatible).
#[derive(Debug, Clone)]
pub struct ImageProcessor {
    cfg: ImageProcessorConfig,
}

impl ImageProcessor {
    pub fn new(cfg: ImageProcessorConfig) -> Self {
        Self { cfg }
    }

    /// Loads `preprocessor_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        Ok(Self::new(ImageProcessorConfig::from_file(path)?))
    }

    pub fn config(&self) -> &ImageProcessorConfig {
        &self.cfg
    }

    /// The image as the model sees it, before normalisation: RGB, resized by `smart_resize`
    /// with PIL's bicubic (what `qwen_vl_utils.fetch_image` hands ARM-Thinker's zoom tool).
    /// Preprocessing the result gives the same patches as preprocessing `img`.
    pub fn resized(&self, img: &image::DynamicImage) -> Result<image::DynamicImage> {
        let c = &self.cfg;
        let rgb = convert_to_rgb(img);
        if !c.do_resize {
            return Ok(image::DynamicImage::ImageRgb8(rgb));
        }
        let (w0, h0) = (rgb.width() as usize, rgb.height() as usize);
        let (h, w) = smart_resize(h0, w0, c.patch_size * c.merge_size, c.min_pixels, c.max_pixels)?;
        let raw = pil_bicubic_resize_rgb(rgb.as_raw(), w0, h0, w, h);
        let out =
            image::RgbImage::from_raw(w as u32, h as u32, raw).ok_or_else(|| ProcessingError::ImageSize {
                height: h0,
                width: w0,
                reason: format!("resizing to {h}x{w} gave a buffer of the wrong size"),
            })?;
        Ok(image::DynamicImage::ImageRgb8(out))
    }

    /// Converts one image into flattened, normalised patches.
    pub fn preprocess(&self, img: &image::DynamicImage) -> Result<ProcessedImage> {
        let c = &self.cfg;
        let rgb = convert_to_rgb(img);
        let (w0, h0) = (rgb.width() as usize, rgb.height() as usize);
        let factor = c.patch_size * c.merge_size;
        let (rgb, h, w) = if c.do_resize {
            let (h, w) = smart_resize(h0, w0, factor, c.min_pixels, c.max_pixels)?;
            (pil_bicubic_resize_rgb(rgb.as_raw(), w0, h0, w, h), h, w)
        } else {
            if h0 % factor != 0 || w0 % factor != 0 {
                return Err(ProcessingError::ImageSize {
                    height: h0,
                    width: w0,
                    reason: format!("do_resize=false needs sides divisible by {factor}"),
                });
            }
            (rgb.into_raw(), h0, w0)
        };

        // Channel-first float planes. Rescale in f64 then cast, normalise in f32: the same
        // dtype sequence as transformers' numpy `rescale` / `normalize`.
        let mut planes = vec![0f32; 3 * h * w];
        for y in 0..h {
            for x in 0..w {
                for ch in 0..3 {
                    let u = rgb[(y * w + x) * 3 + ch];
                    let mut v = if c.do_rescale {
                        (u as f64 * c.rescale_factor) as f32
                    } else {
                        u as f32
                    };
                    if c.do_normalize {
                        v = (v - c.image_mean[ch]) / c.image_std[ch];
                    }
                    planes[(ch * h + y) * w + x] = v;
                }
            }
        }

        let (p, m, t) = (c.patch_size, c.merge_size, c.temporal_patch_size);
        let (gh, gw) = (h / p, w / p);
        let patch_dim = 3 * t * p * p;
        let mut out = Vec::with_capacity(gh * gw * patch_dim);
        // Row order (block-row, block-col, in-block row, in-block col): the order the vision
        // tower's rotary ids and the 2x2 patch merger assume. A still image is its own
        // temporal neighbour, so each patch is written `t` times.
        for bh in 0..gh / m {
            for bw in 0..gw / m {
                for mh in 0..m {
                    for mw in 0..m {
                        let py = (bh * m + mh) * p;
                        let px = (bw * m + mw) * p;
                        for ch in 0..3 {
                            for _ in 0..t {
                                for dy in 0..p {
                                    let row = (ch * h + py + dy) * w + px;
                                    out.extend_from_slice(&planes[row..row + p]);
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(ProcessedImage {
            pixel_values: std::sync::Arc::new(out),
            grid_thw: [1, gh, gw],
            patch_dim,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// PIL-compatible bicubic resampling (Pillow `Resample.c`, 8-bit path), re-derived:
// separable, horizontal pass first, Keys cubic with a = -0.5, kernel support widened by the
// downscale factor (antialiasing), weights normalised then quantised to 22-bit fixed point,
// rounding by adding half before an arithmetic shift, clamping to u8 after each pass.
// ---------------------------------------------------------------------------------------------

/// Fractional bits of the fixed-point weights for 8-bit images (32 - 8 - 2 in Pillow).
const PRECISION_BITS: u32 = 22;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// For each output pixel: first input index and the fixed-point weights of its window.
struct Coeffs {
    starts: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

fn precompute_coeffs(in_size: usize, out_size: usize) -> Coeffs {
    const SUPPORT: f64 = 2.0;
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ss = 1.0 / filterscale;
    let mut starts = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // Truncation toward zero, as the C `(int)` cast does.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let ws: Vec<f64> = (xmin..xmax)
            .map(|x| bicubic((x as f64 - center + 0.5) * ss))
            .collect();
        let total: f64 = ws.iter().sum();
        let fixed = ws
            .iter()
            .map(|&k| {
                let k = if total != 0.0 { k / total } else { k };
                let scaled = k * (1u64 << PRECISION_BITS) as f64;
                // Round half away from zero, then truncate, like Pillow's normalize_coeffs_8bpc.
                (if k < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
            })
            .collect();
        starts.push(xmin);
        weights.push(fixed);
    }
    Coeffs { starts, weights }
}

#[inline]
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes an interleaved RGB8 buffer of `w0`x`h0` to `w1`x`h1` as PIL's
/// `Image.resize((w1, h1), BICUBIC)` does. A pass whose size does not change is skipped,
/// as in Pillow.
pub(crate) fn pil_bicubic_resize_rgb(src: &[u8], w0: usize, h0: usize, w1: usize, h1: usize) -> Vec<u8> {
    let half: i64 = 1 << (PRECISION_BITS - 1);
    let mut cur = src.to_vec();
    let mut cw = w0;
    if w1 != w0 {
        let co = precompute_coeffs(w0, w1);
        let mut out = vec![0u8; w1 * h0 * 3];
        for y in 0..h0 {
            let row = &cur[y * w0 * 3..(y + 1) * w0 * 3];
            for x in 0..w1 {
                let s = co.starts[x];
                for ch in 0..3 {
                    let mut acc = half;
                    for (i, &k) in co.weights[x].iter().enumerate() {
                        acc += row[(s + i) * 3 + ch] as i64 * k as i64;
                    }
                    out[(y * w1 + x) * 3 + ch] = clip8(acc);
                }
            }
        }
        cur = out;
        cw = w1;
    }
    if h1 != h0 {
        let co = precompute_coeffs(h0, h1);
        let mut out = vec![0u8; cw * h1 * 3];
        for y in 0..h1 {
            let s = co.starts[y];
            for x in 0..cw {
                for ch in 0..3 {
                    let mut acc = half;
                    for (i, &k) in co.weights[y].iter().enumerate() {
                        acc += cur[((s + i) * cw + x) * 3 + ch] as i64 * k as i64;
                    }
                    out[(y * cw + x) * 3 + ch] = clip8(acc);
                }
            }
        }
        cur = out;
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_documented_examples() {
        let f = 28;
        let (mn, mx) = (3136, 12_845_056);
        assert_eq!(smart_resize(224, 224, f, mn, mx).unwrap(), (224, 224));
        // 640x480 (w x h) image: h=480 -> round(17.14)=17 -> 476; w=640 -> round(22.86)=23 -> 644.
        assert_eq!(smart_resize(480, 640, f, mn, mx).unwrap(), (476, 644));
        assert_eq!(smart_resize(1080, 1920, f, mn, mx).unwrap(), (1092, 1932));
        // 6000x4000 exceeds max_pixels: beta = sqrt(24e6/12845056) -> floor branch.
        assert_eq!(smart_resize(4000, 6000, f, mn, mx).unwrap(), (2912, 4368));
    }

    #[test]
    fn smart_resize_rounds_ties_to_even() {
        // 42/28 = 1.5 -> 2 (even), 70/28 = 2.5 -> 2 (even, not 3), 98/28 = 3.5 -> 4.
        assert_eq!(smart_resize(42, 70, 28, 0, 1 << 30).unwrap(), (56, 56));
        assert_eq!(smart_resize(98, 98, 28, 0, 1 << 30).unwrap(), (112, 112));
    }

    #[test]
    fn smart_resize_min_and_max_pixels() {
        // 20x20: round(20/28)=1 -> 28x28 = 784 < 3136 -> ceil branch:
        // beta = sqrt(3136/400) = 2.8, 20*2.8/28 = 2 -> 56x56.
        assert_eq!(smart_resize(20, 20, 28, 3136, 200_704).unwrap(), (56, 56));
        // 1000x1000 with max 200704 (=448^2): beta = sqrt(1e6/200704), 1000/beta/28 = 16 -> 448.
        assert_eq!(smart_resize(1000, 1000, 28, 3136, 200_704).unwrap(), (448, 448));
    }

    #[test]
    fn smart_resize_rejects_degenerate_images() {
        let e = smart_resize(1, 201, 28, 3136, 200_704).unwrap_err();
        assert!(e.to_string().contains("aspect ratio"), "{e}");
        let e = smart_resize(0, 50, 28, 3136, 200_704).unwrap_err();
        assert!(e.to_string().contains("zero"), "{e}");
        // Exactly 200 is still allowed (the check is strict `> 200`); the 1-pixel side is
        // scaled up, not rejected (transformers 5.17 has no minimum-side check).
        assert_eq!(smart_resize(1, 200, 28, 3136, 200_704).unwrap(), (28, 812));
    }

    #[test]
    fn bicubic_identity_and_constant() {
        // Same size: untouched. Constant image: stays constant under any resize
        // (the weights sum to one in fixed point up to rounding).
        let src: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(pil_bicubic_resize_rgb(&src, 5, 4, 5, 4), src);
        let flat = vec![200u8; 9 * 7 * 3];
        let out = pil_bicubic_resize_rgb(&flat, 9, 7, 4, 13);
        assert_eq!(out.len(), 4 * 13 * 3);
        assert!(out.iter().all(|&v| v == 200), "{out:?}");
    }

    #[test]
    fn config_accepts_size_dict_and_defaults() {
        let p = Path::new("pp.json");
        let c = ImageProcessorConfig::from_json_str(
            r#"{"size": {"shortest_edge": 100, "longest_edge": 5000}}"#,
            p,
        )
        .unwrap();
        assert_eq!(
            (c.min_pixels, c.max_pixels, c.patch_size, c.merge_size),
            (100, 5000, 14, 2)
        );
        assert_eq!(c.image_mean, CLIP_MEAN);
        let c = ImageProcessorConfig::from_json_str(
            r#"{"min_pixels": 7, "max_pixels": 9, "size": {"shortest_edge": 1, "longest_edge": 2}}"#,
            p,
        )
        .unwrap();
        assert_eq!((c.min_pixels, c.max_pixels), (7, 9));
        let e = ImageProcessorConfig::from_json_str(r#"{"min_pixels": 10, "max_pixels": 9}"#, p).unwrap_err();
        assert!(e.to_string().contains("pp.json"), "{e}");
    }

    #[test]
    fn patch_layout_follows_merge_order() {
        // 28x56 image (h x w) with no resize/normalise: grid 2x4, patch_size 14, merge 2.
        let cfg = ImageProcessorConfig {
            do_resize: false,
            do_rescale: false,
            do_normalize: false,
            ..Default::default()
        };
        let (h, w) = (28u32, 56u32);
        // Encode (y, x) into the red channel so each patch's origin is recoverable.
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(y / 14 * 4 + x / 14) as u8, 0, 0]));
        let out = ImageProcessor::new(cfg)
            .preprocess(&image::DynamicImage::ImageRgb8(img))
            .unwrap();
        assert_eq!(out.grid_thw, [1, 2, 4]);
        assert_eq!(out.patch_dim, 1176);
        let ids: Vec<f32> = (0..8).map(|r| out.pixel_values[r * 1176]).collect();
        // Block (0,0) = patches (0,0),(0,1),(1,0),(1,1) -> ids 0,1,4,5; then block (0,1) -> 2,3,6,7.
        assert_eq!(ids, vec![0., 1., 4., 5., 2., 3., 6., 7.]);
        // Temporal copy: second 14x14 slice of the red channel equals the first.
        assert_eq!(out.pixel_values[196], out.pixel_values[0]);
    }

    #[test]
    fn transparency_is_composited_onto_white_as_pil_does() {
        // (value, alpha) -> PIL 12.0's alpha_composite(white, RGBA) red channel.
        for (c, a, want) in [
            (0, 128, 127),
            (200, 1, 255),
            (17, 254, 18),
            (100, 77, 208),
            (9, 0, 255),
        ] {
            assert_eq!(over_white(c, a), want, "c={c} a={a}");
        }
        for c in 0..=255u8 {
            assert_eq!(over_white(c, 255), c, "opaque pixels keep their colour");
        }
        let mut img = image::RgbaImage::new(2, 1);
        img.put_pixel(0, 0, image::Rgba([10, 20, 30, 0]));
        img.put_pixel(1, 0, image::Rgba([10, 20, 30, 255]));
        let rgb = convert_to_rgb(&image::DynamicImage::ImageRgba8(img));
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 0).0, [10, 20, 30]);
        let grey = image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(1, 1, image::Luma([7])));
        assert_eq!(convert_to_rgb(&grey).get_pixel(0, 0).0, [7, 7, 7]);
    }
}
