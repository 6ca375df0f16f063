//! `image_zoom_in_tool`: crop a region of an image (given in relative [0, 1000] coordinates)
//! and return it enlarged, as ARM-Thinker's `ImageZoomInTool` does.

use std::sync::Arc;

use image::imageops::FilterType;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ArgError;
use crate::parse::{py_repr, py_str_list};
use crate::{InstanceId, Tool, ToolContext, ToolOutput};

/// Smallest crop side Qwen2.5-VL can see (one 28 px merged patch); smaller boxes are enlarged.
pub const MIN_SIDE: f64 = 28.0;
/// Crops whose shorter side is under this are upscaled ×2 so small details get more patches.
pub const UPSCALE_BELOW: u32 = 224;
/// Longest/shortest side ratio allowed (Qwen2.5-VL's smart_resize rejects more than 200).
pub const MAX_ASPECT: f64 = 100.0;

/// `config:` of the zoom tool in the YAML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoomConfig {
    /// verl's tool type; only `native` exists here.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Most pixels the returned crop may have (after the ×2 upscale); bigger crops are
    /// downscaled, keeping their aspect. Default: Qwen2.5-VL's processor max_pixels.
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
}

fn default_max_pixels() -> u64 {
    12_845_056
}

impl Default for ZoomConfig {
    fn default() -> Self {
        Self {
            kind: None,
            max_pixels: default_max_pixels(),
        }
    }
}

/// The zoom-in tool.
pub struct ImageZoomInTool {
    schema: Value,
    name: String,
    config: ZoomConfig,
}

impl ImageZoomInTool {
    /// With `schema` from the YAML (or [`ImageZoomInTool::default_schema`]).
    pub fn new(config: ZoomConfig, schema: Option<Value>) -> Self {
        let schema = schema.unwrap_or_else(Self::default_schema);
        let name = crate::function_name(&schema, "image_zoom_in_tool");
        Self { schema, name, config }
    }

    /// The paper's schema, with the `items`/`minItems`/`maxItems` its pydantic model dropped.
    pub fn default_schema() -> Value {
        json!({"type": "function", "function": {
            "name": "image_zoom_in_tool",
            "description": "Zoom in on a region of an image using relative coordinates in [0, 1000]. For example, to zoom in on the center 50%, use [250, 250, 750, 750].",
            "parameters": {"type": "object", "properties": {
                "image": {"type": "string", "description": "The image to zoom in on (e.g., `original_image`, `observation_1`, `observation_2`, ...)."},
                "bbox_2d": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1000}, "minItems": 4, "maxItems": 4,
                    "description": "Bounding box [x1, y1, x2, y2] with values between 0 and 1000, where (x1, y1) = top-left, (x2, y2) = bottom-right."}
            }, "required": ["image", "bbox_2d"]}
        }})
    }

    fn run(&self, args: &Value, ctx: &ToolContext) -> ToolOutput {
        let (key, rel) = match validate_args(args) {
            Ok(v) => v,
            Err(e) => return ToolOutput::error(e.to_string()),
        };
        let img = match ctx.image(&key) {
            None => {
                return ToolOutput::error(format!(
                    "Error processing image zoom-in: Cannot resolve image key '{key}'. Current images you have are: {}. \
You can call this tool like this: <tool_call>\n{{\"name\": \"{}\", \"arguments\": {{\"image\": \"original_image\", \"bbox_2d\": [100, 100, 900, 900]}}}}\n</tool_call>",
                    py_str_list(&ctx.image_keys()),
                    self.name
                ))
            }
            Some(Err(e)) => return ToolOutput::error(format!("Error processing image zoom-in: {e}")),
            Some(Ok(img)) => img,
        };
        // Cropped from the image at full resolution (the paper crops Qwen's smart-resized copy);
        // the coordinates are relative, so the region is the same and the detail finer.
        let (w, h) = (img.width() as f64, img.height() as f64);
        // rel·W/1000 (not rel/1000·W): exact for integer coordinates, so box edges do not drift
        // by an ulp across a floor/ceil.
        let abs = [
            rel[0] * w / 1000.0,
            rel[1] * h / 1000.0,
            rel[2] * w / 1000.0,
            rel[3] * h / 1000.0,
        ];
        let Some([l, t, r, b]) = adjust_bbox(abs, img.width(), img.height()) else {
            return ToolOutput::error(format!(
                "Error: crop failed after adjustment, original bbox={}. The specified region is invalid or results in a crop smaller than 28x28 pixels. Please provide a larger valid region.",
                py_repr(&args["bbox_2d"])
            ));
        };
        let crop = img.crop_imm(l, t, r - l, b - t);
        let (tw, th) = target_size(crop.width(), crop.height(), self.config.max_pixels);
        let out = if (tw, th) == (crop.width(), crop.height()) {
            crop
        } else {
            // Bicubic, as the paper's PIL resize.
            crop.resize_exact(tw, th, FilterType::CatmullRom)
        };
        let obs = ctx.next_observation_key();
        let mut o = ToolOutput::ok(format!(
            "This is the zoom-in image `{obs}`(zoomed in on the image {key}) after your tool call.\n\
Continue your reasoning process within `<think>...</think>`. If needed, you can continue to call available tools within `<tool_call>...</tool_call>`. \
If your final response to the original question is confirmed, put your final answer or judgment within `<answer>...</answer>`."
        ))
        .with_image(Arc::new(out));
        o.metrics.insert("crop_box".into(), json!([l, t, r, b]));
        o.metrics.insert("output_size".into(), json!([tw, th]));
        o
    }
}

impl Tool for ImageZoomInTool {
    fn name(&self) -> &str {
        &self.name
    }

    fn schema(&self) -> &Value {
        &self.schema
    }

    fn execute(&self, _instance: InstanceId, arguments: &Value, ctx: &ToolContext) -> ToolOutput {
        self.run(arguments, ctx)
    }
}

/// The paper's argument checks, with its exact error texts, in its order.
fn validate_args(args: &Value) -> Result<(String, [f64; 4]), ArgError> {
    let key = match args.get("image") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        _ => return Err(ArgError::MissingImage),
    };
    let raw = args.get("bbox_2d").unwrap_or(&Value::Null);
    let repr = py_repr(raw);
    let items = match raw {
        Value::Array(a) if a.len() == 4 => a,
        _ => return Err(ArgError::BboxNotFourNumbers { repr }),
    };
    let mut bbox = [0.0; 4];
    for (i, v) in items.iter().enumerate() {
        bbox[i] = v
            .as_f64()
            .ok_or_else(|| ArgError::BboxNotNumeric { repr: repr.clone() })?;
    }
    for (i, v) in bbox.iter().enumerate() {
        if !(0.0..=1000.0).contains(v) {
            return Err(ArgError::BboxOutOfRange {
                index: i,
                value: py_repr(&items[i]),
                repr,
            });
        }
    }
    if !(bbox[0] < bbox[2] && bbox[1] < bbox[3]) {
        return Err(ArgError::BboxNotOrdered { repr });
    }
    Ok((key, bbox))
}

/// Clamps an absolute box to the image, rejects degenerate or too elongated boxes, enlarges
/// boxes under 28 px around their centre (shrinking if that outgrows the image, shifting to
/// stay inside), and rounds outwards. `None` when no valid ≥28×28 crop results.
fn adjust_bbox(b: [f64; 4], img_w: u32, img_h: u32) -> Option<[u32; 4]> {
    let (iw, ih) = (img_w as f64, img_h as f64);
    let (mut l, mut t) = (b[0].clamp(0.0, iw), b[1].clamp(0.0, ih));
    let (mut r, mut btm) = (b[2].clamp(0.0, iw), b[3].clamp(0.0, ih));
    let valid = |l: f64, t: f64, r: f64, b: f64| {
        let (w, h) = (r - l, b - t);
        w > 0.0 && h > 0.0 && w.max(h) / w.min(h) <= MAX_ASPECT
    };
    if !valid(l, t, r, btm) {
        return None;
    }
    let (w, h) = (r - l, btm - t);
    if w < MIN_SIDE || h < MIN_SIDE {
        let ratio = MIN_SIDE / w.min(h);
        let (mut nw, mut nh) = (w * ratio, h * ratio);
        // Keep the enlarged box no bigger than the image, proportionally.
        let shrink = (iw / nw).min(ih / nh).min(1.0);
        nw *= shrink;
        nh *= shrink;
        let (cx, cy) = ((l + r) / 2.0, (t + btm) / 2.0);
        (l, r) = shift_inside(cx - nw / 2.0, cx + nw / 2.0, iw);
        (t, btm) = shift_inside(cy - nh / 2.0, cy + nh / 2.0, ih);
    }
    let out = [
        l.floor().max(0.0) as u32,
        t.floor().max(0.0) as u32,
        (r.ceil() as u32).min(img_w),
        (btm.ceil() as u32).min(img_h),
    ];
    let ok = valid(out[0] as f64, out[1] as f64, out[2] as f64, out[3] as f64)
        && out[2] - out[0] >= MIN_SIDE as u32
        && out[3] - out[1] >= MIN_SIDE as u32;
    ok.then_some(out)
}

/// Moves the interval [lo, hi] inside [0, max] without changing its length (if it fits).
fn shift_inside(mut lo: f64, mut hi: f64, max: f64) -> (f64, f64) {
    if lo < 0.0 {
        hi -= lo;
        lo = 0.0;
    }
    if hi > max {
        lo -= hi - max;
        hi = max;
    }
    (lo.max(0.0), hi)
}

/// ×2 when the shorter side is under 224 px, then down to `max_pixels` if needed (one
/// resample from the crop, so no double blurring).
fn target_size(w: u32, h: u32, max_pixels: u64) -> (u32, u32) {
    let f = if w.min(h) < UPSCALE_BELOW { 2.0 } else { 1.0 };
    let (mut tw, mut th) = (w as f64 * f, h as f64 * f);
    let px = tw * th;
    if max_pixels > 0 && px > max_pixels as f64 {
        let s = (max_pixels as f64 / px).sqrt();
        tw = (tw * s).floor().max(1.0);
        th = (th * s).floor().max(1.0);
    }
    (tw as u32, th as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, Rgb, RgbImage};

    fn ctx_with(w: u32, h: u32) -> ToolContext {
        // A gradient so crops are distinguishable.
        let img = RgbImage::from_fn(w, h, |x, y| Rgb([(x % 256) as u8, (y % 256) as u8, 0]));
        let mut ctx = ToolContext::new();
        ctx.add_image("original_image", Arc::new(DynamicImage::ImageRgb8(img)));
        ctx
    }

    fn run(ctx: &ToolContext, args: Value) -> ToolOutput {
        let t = ImageZoomInTool::new(ZoomConfig::default(), None);
        t.execute(InstanceId::fresh(), &args, ctx)
    }

    const SUCCESS_TAIL: &str = "after your tool call.\nContinue your reasoning process within `<think>...</think>`. If needed, you can continue to call available tools within `<tool_call>...</tool_call>`. If your final response to the original question is confirmed, put your final answer or judgment within `<answer>...</answer>`.";

    #[test]
    fn zooms_relative_box() {
        let ctx = ctx_with(1000, 500);
        let o = run(
            &ctx,
            json!({"image": "original_image", "bbox_2d": [250, 250, 750, 750]}),
        );
        assert!(o.success);
        assert_eq!(o.reward, 0.0);
        assert_eq!(o.text, format!("This is the zoom-in image `observation_1`(zoomed in on the image original_image) {SUCCESS_TAIL}"));
        assert_eq!(o.metrics["crop_box"], json!([250, 125, 750, 375]));
        // 500×250 → min side ≥ 224, no upscale.
        assert_eq!((o.images[0].width(), o.images[0].height()), (500, 250));
        assert_eq!(o.images[0].to_rgb8().get_pixel(0, 0), &Rgb([250, 125, 0]));
    }

    #[test]
    fn small_crops_upscaled_and_tiny_boxes_enlarged() {
        let ctx = ctx_with(1000, 1000);
        // 100×100 px crop → ×2.
        let o = run(
            &ctx,
            json!({"image": "original_image", "bbox_2d": [100, 100, 200, 200]}),
        );
        assert_eq!((o.images[0].width(), o.images[0].height()), (200, 200));
        // 10×10 px box at the corner → enlarged to 28×28, shifted inside, then ×2.
        let o = run(
            &ctx,
            json!({"image": "original_image", "bbox_2d": [0, 0, 10, 10.0]}),
        );
        assert!(o.success, "{}", o.text);
        assert_eq!(o.metrics["crop_box"], json!([0, 0, 28, 28]));
        assert_eq!((o.images[0].width(), o.images[0].height()), (56, 56));
        // 10×40 box in the middle: scaled by 2.8 around its centre.
        let o = run(
            &ctx,
            json!({"image": "original_image", "bbox_2d": [495, 480, 505, 520]}),
        );
        assert_eq!(o.metrics["crop_box"], json!([486, 444, 514, 556]));
    }

    #[test]
    fn max_pixels_respected() {
        let ctx = ctx_with(1000, 1000);
        let t = ImageZoomInTool::new(
            ZoomConfig {
                kind: None,
                max_pixels: 10_000,
            },
            None,
        );
        let o = t.execute(
            InstanceId::fresh(),
            &json!({"image": "original_image", "bbox_2d": [0, 0, 1000, 1000]}),
            &ctx,
        );
        assert!(o.success);
        assert_eq!((o.images[0].width(), o.images[0].height()), (100, 100));
    }

    #[test]
    fn bad_arguments_exact_texts() {
        let ctx = ctx_with(100, 100);
        let cases = [
            (
                json!({"bbox_2d": [1, 2, 3, 4]}),
                "Error: image parameter is missing.",
            ),
            (
                json!({"image": "original_image"}),
                "Error: bbox_2d must be a list of 4 numbers, got None.",
            ),
            (
                json!({"image": "original_image", "bbox_2d": [1, 2, 3]}),
                "Error: bbox_2d must be a list of 4 numbers, got [1, 2, 3].",
            ),
            (
                json!({"image": "original_image", "bbox_2d": "1,2,3,4"}),
                "Error: bbox_2d must be a list of 4 numbers, got '1,2,3,4'.",
            ),
            (
                json!({"image": "original_image", "bbox_2d": [1, "a", 3, 4]}),
                "Error: bbox_2d contains non-numeric values: [1, 'a', 3, 4].",
            ),
            (
                json!({"image": "original_image", "bbox_2d": [1, 2, 1300, 4.5]}),
                "Error: bbox_2d[2]=1300 out of range [0,1000], full bbox=[1, 2, 1300, 4.5].",
            ),
            (
                json!({"image": "original_image", "bbox_2d": [-1.5, 2, 3, 4]}),
                "Error: bbox_2d[0]=-1.5 out of range [0,1000], full bbox=[-1.5, 2, 3, 4].",
            ),
            (
                json!({"image": "original_image", "bbox_2d": [5, 2, 3, 4]}),
                "Error: bbox_2d must satisfy x1<x2 and y1<y2, got [5, 2, 3, 4].",
            ),
            (
                json!({"image": "original_image", "bbox_2d": [1, 4, 3, 4]}),
                "Error: bbox_2d must satisfy x1<x2 and y1<y2, got [1, 4, 3, 4].",
            ),
        ];
        for (args, want) in cases {
            let o = run(&ctx, args);
            assert!(!o.success);
            assert_eq!(o.reward, -0.05);
            assert_eq!(o.text, want);
            assert_eq!(o.metrics["success"], json!(false));
            assert!(o.images.is_empty());
        }
    }

    #[test]
    fn unknown_image_and_failed_crops() {
        let ctx = ctx_with(100, 100);
        let o = run(
            &ctx,
            json!({"image": "observation_3", "bbox_2d": [0, 0, 500, 500]}),
        );
        assert_eq!(
            o.text,
            "Error processing image zoom-in: Cannot resolve image key 'observation_3'. Current images you have are: ['original_image']. You can call this tool like this: <tool_call>\n{\"name\": \"image_zoom_in_tool\", \"arguments\": {\"image\": \"original_image\", \"bbox_2d\": [100, 100, 900, 900]}}\n</tool_call>"
        );
        assert!(!o.success);
        // Aspect ratio 1000/1 > 100 → rejected.
        let o = run(
            &ctx,
            json!({"image": "original_image", "bbox_2d": [0, 0, 1000, 1]}),
        );
        assert_eq!(o.text, "Error: crop failed after adjustment, original bbox=[0, 0, 1000, 1]. The specified region is invalid or results in a crop smaller than 28x28 pixels. Please provide a larger valid region.");
        // An image smaller than 28 px cannot give a 28×28 crop.
        let ctx = ctx_with(20, 200);
        let o = run(
            &ctx,
            json!({"image": "original_image", "bbox_2d": [0, 0, 1000, 500]}),
        );
        assert!(
            o.text
                .starts_with("Error: crop failed after adjustment, original bbox=[0, 0, 1000, 500]."),
            "{}",
            o.text
        );
        // A file that fails to decode.
        let mut ctx = ToolContext::new();
        ctx.add_image_path("original_image", "/nonexistent/x.png".into());
        let o = run(
            &ctx,
            json!({"image": "original_image", "bbox_2d": [0, 0, 500, 500]}),
        );
        assert!(
            o.text
                .starts_with("Error processing image zoom-in: cannot load image x.png"),
            "{}",
            o.text
        );
    }

    #[test]
    fn adjust_bbox_edges() {
        assert_eq!(
            adjust_bbox([0.0, 0.0, 100.0, 100.0], 100, 100),
            Some([0, 0, 100, 100])
        );
        assert_eq!(
            adjust_bbox([10.2, 10.7, 50.5, 50.1], 100, 100),
            Some([10, 10, 51, 51])
        );
        // A 1×1 box in a 28×28 image fills it.
        assert_eq!(
            adjust_bbox([27.0, 27.0, 28.0, 28.0], 28, 28),
            Some([0, 0, 28, 28])
        );
        assert_eq!(adjust_bbox([5.0, 5.0, 5.0, 6.0], 100, 100), None);
    }
}
