//! `armt view traj.jsonl --out traj.html`: one self-contained HTML page to read rollouts the
//! way ARM-Thinker's notebook shows them: what the model thought, which tool it called with
//! which arguments, what came back (text and images), and how it ended. Images are inlined as
//! data URLs and the CSS is inline, so the page can be copied off a training machine and opened
//! anywhere without the run directory.

use anyhow::Context;
use armt_data::{StopReason, ToolCallRecord, Trajectory, Turn};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct ViewArgs {
    /// trajectory JSONL written by `armt rollout`
    pub trajectories: PathBuf,
    /// HTML file to write
    #[arg(long)]
    pub out: PathBuf,
    /// Show at most this many trajectories (the first ones in the file): every image is
    /// inlined, so thousands of rollouts would make a page no browser opens comfortably.
    #[arg(long, default_value_t = 200)]
    pub limit: usize,
}

pub fn run(args: ViewArgs) -> anyhow::Result<()> {
    let trajs = armt_data::read_trajectories(&args.trajectories)?;
    let shown = &trajs[..trajs.len().min(args.limit)];
    let source = format!(
        "{} of {} trajectories from {}",
        shown.len(),
        trajs.len(),
        args.trajectories.display()
    );
    let html = render_page(shown, &source);
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&args.out, html).with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!("wrote {} ({source})", args.out.display());
    Ok(())
}

/// A self-contained page (inline CSS, images as data URLs, no external URLs) for `trajs`.
// `run` goes through `render_page` to name the source file in the header, so inside the
// binary this is only used by tests; it stays the in-memory entry point for other callers.
#[cfg_attr(not(test), allow(dead_code))]
pub fn render_html(trajs: &[Trajectory]) -> String {
    render_page(trajs, &format!("{} trajectories", trajs.len()))
}

const CSS: &str = r#"
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; background: #f3f4f6; color: #111827; }
header { background: #1f2937; color: #f9fafb; padding: 16px 24px; position: sticky; top: 0; z-index: 1; }
header h1 { margin: 0 0 6px 0; font-size: 20px; }
header .stats span { display: inline-block; margin-right: 18px; font-size: 14px; }
header .src { font-size: 12px; color: #9ca3af; }
main { padding: 16px 24px; max-width: 1200px; }
.card { background: #fff; border: 1px solid #d1d5db; border-radius: 8px; margin-bottom: 20px; padding: 14px 18px; }
.card h2 { font-size: 16px; margin: 0 0 8px 0; font-family: ui-monospace, monospace; }
.meta span { display: inline-block; margin: 0 8px 4px 0; padding: 2px 8px; border-radius: 10px; background: #e5e7eb; font-size: 13px; }
.meta .good { background: #d1fae5; color: #065f46; }
.meta .bad { background: #fee2e2; color: #991b1b; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; margin: 8px 0; }
figure { margin: 0; border: 1px solid #e5e7eb; padding: 4px; background: #fafafa; }
figure img { max-width: 380px; max-height: 380px; display: block; }
figcaption { font-size: 12px; color: #4b5563; font-family: ui-monospace, monospace; }
.missing { width: 220px; min-height: 80px; padding: 8px; background: repeating-linear-gradient(45deg, #fef3c7, #fef3c7 10px, #fde68a 10px, #fde68a 20px); color: #78350f; font-size: 12px; word-break: break-all; }
.turn { border-left: 4px solid #6366f1; margin: 12px 0; padding: 4px 0 4px 12px; }
.turn > h3 { font-size: 13px; margin: 0 0 6px 0; color: #4338ca; }
.text { white-space: pre-wrap; word-wrap: break-word; font-family: ui-monospace, monospace; font-size: 13px; background: #f9fafb; padding: 8px; border-radius: 4px; }
.blk { display: block; border-radius: 4px; padding: 4px 6px; margin: 4px 0; }
.blk .tag { font-weight: bold; opacity: 0.7; }
.think { background: #f3f4f6; color: #4b5563; font-style: italic; border: 1px dashed #9ca3af; }
.tool_call { background: #ede9fe; color: #4c1d95; border: 1px solid #a78bfa; }
.answer { background: #dcfce7; color: #14532d; border: 1px solid #4ade80; font-weight: 600; }
.tool { background: #fffbeb; border: 1px solid #fcd34d; border-radius: 6px; padding: 8px 10px; margin-top: 8px; }
.tool .name { font-family: ui-monospace, monospace; font-weight: bold; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; margin-left: 6px; }
.badge.ok { background: #16a34a; color: #fff; }
.badge.err { background: #dc2626; color: #fff; }
pre { margin: 6px 0; white-space: pre-wrap; word-wrap: break-word; font-size: 12px; }
.label { font-size: 12px; color: #6b7280; margin-top: 6px; }
"#;

fn render_page(trajs: &[Trajectory], source: &str) -> String {
    let mut h = String::with_capacity(64 * 1024);
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    h.push_str("<title>armt trajectories</title>\n<style>");
    h.push_str(CSS);
    h.push_str("</style></head><body>\n<header><h1>armt trajectories</h1><div class=\"stats\">");
    for (label, value) in summary(trajs) {
        let _ = write!(h, "<span><b>{}</b>: {}</span>", esc(&label), esc(&value));
    }
    let _ = write!(
        h,
        "</div><div class=\"src\">{}</div></header>\n<main>\n",
        esc(source)
    );
    for t in trajs {
        render_card(&mut h, t);
    }
    h.push_str("</main></body></html>\n");
    h
}

/// Header counts: what someone checking a run looks at first (is the reward moving, does the
/// model use tools at all, how do rollouts end).
fn summary(trajs: &[Trajectory]) -> Vec<(String, String)> {
    let mut out = vec![("trajectories".to_string(), trajs.len().to_string())];
    let rewards: Vec<f32> = trajs.iter().filter_map(|t| t.reward).collect();
    if !rewards.is_empty() {
        let mean = rewards.iter().map(|&r| r as f64).sum::<f64>() / rewards.len() as f64;
        out.push(("mean reward".into(), format!("{mean:.3} (n={})", rewards.len())));
    }
    if !trajs.is_empty() {
        let with_tool = trajs.iter().filter(|t| t.tool_calls().next().is_some()).count();
        let calls: Vec<&ToolCallRecord> = trajs.iter().flat_map(|t| t.tool_calls()).collect();
        let ok = calls.iter().filter(|c| c.success).count();
        out.push((
            "tool-call rate".into(),
            format!(
                "{:.1}% of trajectories ({} calls, {} succeeded)",
                100.0 * with_tool as f64 / trajs.len() as f64,
                calls.len(),
                ok
            ),
        ));
        let mut stops: BTreeMap<String, usize> = BTreeMap::new();
        for t in trajs {
            *stops.entry(stop_name(t.stop_reason)).or_default() += 1;
        }
        let stops: Vec<String> = stops.iter().map(|(k, n)| format!("{k} {n}")).collect();
        out.push(("stop reasons".into(), stops.join(", ")));
    }
    out
}

/// The snake_case name the JSONL uses, so the page and the file read alike.
fn stop_name(s: StopReason) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{s:?}"))
}

fn render_card(h: &mut String, t: &Trajectory) {
    h.push_str("<section class=\"card\">\n");
    let _ = write!(
        h,
        "<h2>{} #{}</h2><div class=\"meta\">",
        esc(&t.sample_id),
        t.group_index
    );
    let task = serde_json::to_value(t.task)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let _ = write!(h, "<span>task: {}</span>", esc(&task));
    let stop_class = if t.stop_reason == StopReason::Answered {
        "good"
    } else {
        "bad"
    };
    let _ = write!(
        h,
        "<span class=\"{stop_class}\">stop: {}</span>",
        esc(&stop_name(t.stop_reason))
    );
    if let Some(r) = t.reward {
        let class = if r > 0.0 { "good" } else { "bad" };
        let _ = write!(h, "<span class=\"{class}\">reward: {r:.3}</span>");
    }
    // saturating: a hand-edited or truncated record should render, not panic the viewer.
    let response = t.token_ids.len().saturating_sub(t.prompt_len);
    let sampled = t.loss_mask.iter().filter(|&&m| m != 0).count();
    let _ = write!(h, "<span>response: {response} tokens ({sampled} sampled)</span>");
    let _ = writeln!(h, "<span>turns: {}</span></div>", t.turns.len());

    // Images a tool returned are shown in the turn that produced them; the rest (the
    // original input) up front. Each file is inlined once.
    let observed: HashSet<&str> = t
        .tool_calls()
        .flat_map(|c| c.result_images.iter().map(String::as_str))
        .collect();
    let inputs: Vec<&(String, PathBuf)> = t
        .images
        .iter()
        .filter(|(k, _)| !observed.contains(k.as_str()))
        .collect();
    if !inputs.is_empty() {
        h.push_str("<div class=\"label\">input images</div><div class=\"gallery\">");
        for (key, path) in inputs {
            figure(h, key, Some(path));
        }
        h.push_str("</div>\n");
    }
    for (i, turn) in t.turns.iter().enumerate() {
        render_turn(h, t, i, turn);
    }
    h.push_str("</section>\n");
}

fn render_turn(h: &mut String, t: &Trajectory, i: usize, turn: &Turn) {
    let _ = write!(
        h,
        "<div class=\"turn\"><h3>turn {}</h3><div class=\"text\">",
        i + 1
    );
    h.push_str(&highlight(&turn.assistant_text));
    h.push_str("</div>\n");
    if let Some(call) = &turn.tool_call {
        h.push_str("<div class=\"tool\">");
        let badge = if call.success {
            "<span class=\"badge ok\">success</span>"
        } else {
            "<span class=\"badge err\">failed</span>"
        };
        let _ = write!(
            h,
            "tool <span class=\"name\">{}</span>{badge} <span class=\"label\">reward {} · {:.0} ms</span>",
            esc(&call.name),
            call.reward,
            call.duration_ms
        );
        let _ = write!(
            h,
            "<div class=\"label\">arguments</div><pre>{}</pre>",
            esc(&pretty_args(&call.arguments))
        );
        let _ = write!(
            h,
            "<div class=\"label\">result</div><pre>{}</pre>",
            esc(&call.result_text)
        );
        if !call.result_images.is_empty() {
            h.push_str("<div class=\"gallery\">");
            for key in &call.result_images {
                let path = t.images.iter().find(|(k, _)| k == key).map(|(_, p)| p);
                figure(h, key, path);
            }
            h.push_str("</div>");
        }
        h.push_str("</div>\n");
    }
    if let Some(err) = &turn.tool_error {
        let _ = writeln!(
            h,
            "<div class=\"tool\"><span class=\"badge err\">tool error</span><pre>{}</pre></div>",
            esc(err)
        );
    }
    h.push_str("</div>\n");
}

/// One argument per line with compact values: fully pretty-printed JSON puts every bbox
/// coordinate on its own line, which buries the one thing a reader checks (the box).
fn pretty_args(args: &serde_json::Value) -> String {
    match args {
        serde_json::Value::Object(map) if !map.is_empty() => {
            let lines: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("  {}: {v}", serde_json::Value::String(k.clone())))
                .collect();
            format!("{{\n{}\n}}", lines.join(",\n"))
        }
        other => other.to_string(),
    }
}

/// An inlined image, or a visible placeholder naming what is missing: a page about a run
/// whose image cache was cleaned up should still show everything else.
fn figure(h: &mut String, key: &str, path: Option<&PathBuf>) {
    let Some(path) = path else {
        let _ = write!(h, "<figure><div class=\"missing\">image <b>{}</b> is not listed in the trajectory's images</div><figcaption>{}</figcaption></figure>", esc(key), esc(key));
        return;
    };
    match data_url(path) {
        Ok(url) => {
            let _ = write!(
                h,
                "<figure><img src=\"{url}\" alt=\"{}\"><figcaption>{} · {}</figcaption></figure>",
                esc(key),
                esc(key),
                esc(&path.display().to_string())
            );
        }
        Err(why) => {
            let _ = write!(
                h,
                "<figure><div class=\"missing\">missing image<br><b>{}</b><br>{}</div><figcaption>{}</figcaption></figure>",
                esc(&path.display().to_string()),
                esc(&why.to_string()),
                esc(key)
            );
        }
    }
}

/// Why an observation image cannot be embedded (shown in its place on the page).
#[derive(Debug, thiserror::Error)]
enum EmbedError {
    #[error(transparent)]
    Read(#[from] std::io::Error),
    #[error("not a PNG, JPEG, GIF or WebP file")]
    NotAnImage,
}

fn data_url(path: &Path) -> Result<String, EmbedError> {
    let bytes = std::fs::read(path)?;
    let mime = sniff_mime(&bytes).ok_or(EmbedError::NotAnImage)?;
    Ok(format!("data:{mime};base64,{}", base64(&bytes)))
}

/// By content, not extension: rollouts name observation files however the tool saved them.
fn sniff_mime(b: &[u8]) -> Option<&'static str> {
    if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if b.starts_with(b"GIF8") {
        Some("image/gif")
    } else if b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// Standard base64 with padding (RFC 4648 §4), enough for data URLs.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// HTML-escapes text for element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The block tags of the ARM-Thinker prompt format, styled so a reader sees at a glance which
/// part is reasoning, which a tool request and which the verdict.
const BLOCKS: [&str; 3] = ["think", "tool_call", "answer"];

/// Escapes assistant text and wraps well-nested `<think>`, `<tool_call>` and `<answer>` blocks
/// in styled spans. Everything, tags included, goes through `esc`, so model output can never
/// inject markup; a stray closing tag stays plain text and an unclosed block runs to the end.
fn highlight(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    let mut open: Vec<&str> = Vec::new();
    let mut rest = text;
    while let Some(lt) = rest.find('<') {
        out.push_str(&esc(&rest[..lt]));
        rest = &rest[lt..];
        let tag = BLOCKS.iter().find_map(|&name| {
            if rest.starts_with(&format!("<{name}>")) {
                Some((name, false))
            } else if rest.starts_with(&format!("</{name}>")) {
                Some((name, true))
            } else {
                None
            }
        });
        match tag {
            Some((name, false)) => {
                let _ = write!(
                    out,
                    "<span class=\"blk {name}\"><span class=\"tag\">&lt;{name}&gt;</span>"
                );
                open.push(name);
                rest = &rest[name.len() + 2..];
            }
            Some((name, true)) if open.last() == Some(&name) => {
                let _ = write!(out, "<span class=\"tag\">&lt;/{name}&gt;</span></span>");
                open.pop();
                rest = &rest[name.len() + 3..];
            }
            _ => {
                out.push_str("&lt;");
                rest = &rest[1..];
            }
        }
    }
    out.push_str(&esc(rest));
    for _ in open {
        out.push_str("</span>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use armt_data::TaskKind;

    fn tmp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join("armt-view-tests").join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A 1×1 PNG, the smallest real image the page has to inline.
    const PNG_1X1: &[u8] = &[
        0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52, 0x00,
        0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x90, 0x77, 0x53, 0xDE, 0x00,
        0x00, 0x00, 0x0C, 0x49, 0x44, 0x41, 0x54, 0x08, 0xD7, 0x63, 0xF8, 0xCF, 0xC0, 0x00, 0x00, 0x03, 0x01,
        0x01, 0x00, 0x18, 0xDD, 0x8D, 0xB0, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60,
        0x82,
    ];

    fn traj(dir: &Path, reward: Option<f32>) -> Trajectory {
        let orig = dir.join("orig.png");
        std::fs::write(&orig, PNG_1X1).unwrap();
        let obs = dir.join("obs1.jpg");
        // JPEG magic is enough for the page: it inlines bytes, it does not decode them.
        std::fs::write(&obs, [0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F']).unwrap();
        Trajectory {
            sample_id: "zoom-0007".into(),
            group_index: 3,
            task: TaskKind::Zoom,
            token_ids: (0..30).collect(),
            prompt_len: 10,
            loss_mask: [vec![1u8; 12], vec![0; 8]].concat(),
            logprobs: vec![0.0; 20],
            turns: vec![
                Turn {
                    assistant_text: "<think>The sign is small; zoom in.</think>\n<tool_call>{\"name\": \"image_zoom_in_tool\"}</tool_call>".into(),
                    tool_call: Some(ToolCallRecord {
                        name: "image_zoom_in_tool".into(),
                        arguments: serde_json::json!({"bbox_2d": [10, 20, 110, 220], "label": "sign"}),
                        result_text: "Zoomed in on <sign> region".into(),
                        result_images: vec!["observation_1".into()],
                        success: true,
                        reward: 0.0,
                        duration_ms: 12.5,
                    }),
                    tool_error: None,
                },
                Turn {
                    assistant_text: "<think>bad call</think><tool_call>not json</tool_call>".into(),
                    tool_call: None,
                    tool_error: Some("tool call is not valid JSON".into()),
                },
                Turn {
                    assistant_text: "<think>It says STOP <script>alert(1)</script></think>\n<answer>Answer 2 is better</answer>".into(),
                    tool_call: None,
                    tool_error: None,
                },
            ],
            images: vec![("original_image".into(), orig), ("observation_1".into(), obs)],
            final_text: "<answer>Answer 2 is better</answer>".into(),
            stop_reason: StopReason::Answered,
            reward,
        }
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, enc) in cases {
            assert_eq!(base64(plain.as_bytes()), enc, "{plain}");
        }
        assert_eq!(base64(&[0xFF, 0xFE, 0xFD]), "//79");
    }

    #[test]
    fn assistant_text_is_escaped() {
        let html = render_html(&[traj(&tmp_dir("escape"), None)]);
        assert!(!html.contains("<script>"), "raw <script> leaked into the page");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        // Tool result text is escaped too.
        assert!(html.contains("Zoomed in on &lt;sign&gt; region"));
        // No external resources: self-contained.
        assert!(
            !html.contains("http://") && !html.contains("https://") && !html.contains("src=\"/"),
            "external URL in page"
        );
    }

    #[test]
    fn blocks_are_styled_and_stray_tags_stay_text() {
        let s = highlight("a <think>x & y</think> </answer> <answer>2");
        assert_eq!(
            s,
            "a <span class=\"blk think\"><span class=\"tag\">&lt;think&gt;</span>x &amp; y<span class=\"tag\">&lt;/think&gt;</span></span> \
             &lt;/answer&gt; <span class=\"blk answer\"><span class=\"tag\">&lt;answer&gt;</span>2</span>"
        );
        // Crossed tags never produce unbalanced markup.
        let s = highlight("<think><answer></think></answer>");
        assert_eq!(s.matches("<span class=\"blk").count(), 2);
        assert_eq!(s.matches("<span").count(), s.matches("</span>").count());
    }

    #[test]
    fn images_are_embedded_as_data_urls() {
        let html = render_html(&[traj(&tmp_dir("images"), Some(1.0))]);
        let png = format!("data:image/png;base64,{}", base64(PNG_1X1));
        assert_eq!(html.matches(&png).count(), 1, "original image inlined once");
        assert!(
            html.contains("data:image/jpeg;base64,/9j/"),
            "observation inlined as JPEG"
        );
        // The observation sits in the turn that produced it, after the tool's result.
        let result_at = html.find("Zoomed in on").unwrap();
        let obs_at = html.find("data:image/jpeg").unwrap();
        assert!(obs_at > result_at);
        assert!(!html.contains("missing image"));
    }

    #[test]
    fn missing_images_show_placeholder() {
        let dir = tmp_dir("missing");
        let mut t = traj(&dir, None);
        t.images[0].1 = dir.join("gone.png");
        t.turns[0]
            .tool_call
            .as_mut()
            .unwrap()
            .result_images
            .push("observation_9".into());
        let html = render_html(&[t]);
        assert!(html.contains("missing image"));
        assert!(
            html.contains(&esc(&dir.join("gone.png").display().to_string())),
            "placeholder names the path"
        );
        assert!(html.contains("<b>observation_9</b> is not listed"));
        assert!(
            html.contains("data:image/jpeg;base64,"),
            "the other images still render"
        );
    }

    #[test]
    fn header_and_all_turns_present() {
        let dir = tmp_dir("turns");
        let mut t2 = traj(&dir, Some(0.0));
        t2.turns.truncate(1);
        t2.stop_reason = StopReason::MaxTurns;
        t2.group_index = 4;
        let html = render_html(&[traj(&dir, Some(1.0)), t2]);
        assert!(html.contains("<b>trajectories</b>: 2"));
        assert!(html.contains("<b>mean reward</b>: 0.500 (n=2)"));
        assert!(html.contains("<b>tool-call rate</b>: 100.0% of trajectories (2 calls, 2 succeeded)"));
        assert!(html.contains("<b>stop reasons</b>: answered 1, max_turns 1"));
        assert_eq!(html.matches("<section class=\"card\">").count(), 2);
        for n in 1..=3 {
            assert!(html.contains(&format!("<h3>turn {n}</h3>")), "turn {n}");
        }
        assert_eq!(html.matches("<div class=\"turn\">").count(), 4);
        assert!(html.contains("zoom-0007 #4"));
        assert!(html.contains("response: 20 tokens (12 sampled)"));
        assert!(html
            .contains("<span class=\"badge err\">tool error</span><pre>tool call is not valid JSON</pre>"));
        assert!(html.contains("<pre>{\n  &quot;bbox_2d&quot;: [10,20,110,220],\n  &quot;label&quot;: &quot;sign&quot;\n}</pre>"), "one argument per line");
        assert!(html.contains("<span class=\"blk answer\">"));
    }

    #[test]
    fn run_writes_limited_page() {
        let dir = tmp_dir("run");
        let lines: Vec<String> = (0..3)
            .map(|_| serde_json::to_string(&traj(&dir, Some(0.5))).unwrap())
            .collect();
        let jsonl = dir.join("traj.jsonl");
        std::fs::write(&jsonl, lines.join("\n") + "\n").unwrap();
        let out = dir.join("sub/traj.html");
        run(ViewArgs {
            trajectories: jsonl,
            out: out.clone(),
            limit: 2,
        })
        .unwrap();
        let html = std::fs::read_to_string(&out).unwrap();
        assert_eq!(html.matches("<section class=\"card\">").count(), 2);
        assert!(html.contains("2 of 3 trajectories from"));
    }
}
