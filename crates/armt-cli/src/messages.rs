//! Trajectories as OpenAI chat messages (the original's `full_messages`): system, the user turn
//! (image, then text), then assistant turns with tool turns between them (images first, then
//! text), as the agent loop sent them.

use armt_data::{Sample, Trajectory};
use armt_processing::{render_chat, Content, Message};
use armt_rollout::LAST_TURN_MESSAGE;
use serde_json::{json, Value};
use std::path::Path;

/// The system prompt the chat template renders for `tools` (the default one without tools).
pub fn system_text(tools: &[Value]) -> String {
    let text = render_chat(
        &[Message::new("user", Content::Text(String::new()))],
        Some(tools),
        false,
    );
    let body = text.strip_prefix("<|im_start|>system\n").unwrap_or(&text);
    body.split("<|im_end|>").next().unwrap_or("").to_string()
}

/// An image reference: relative to `base` when under it, else the path; `hidden` when the image
/// was kept in memory only.
fn image_url(path: &Path, base: Option<&Path>) -> String {
    if path.as_os_str().is_empty() {
        return "hidden".into();
    }
    base.and_then(|b| path.strip_prefix(b).ok())
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

fn image_part(url: String) -> Value {
    json!({"type": "image_url", "image_url": {"url": url}})
}

/// The trajectory of `sample` as chat messages.
pub fn trajectory_messages(sample: &Sample, traj: &Trajectory, system: &str, base: Option<&Path>) -> Value {
    let mut msgs = vec![json!({"role": "system", "content": system})];
    let mut user: Vec<Value> = sample
        .images
        .iter()
        .map(|p| image_part(image_url(p, base)))
        .collect();
    user.push(json!({"type": "text", "text": sample.prompt}));
    msgs.push(json!({"role": "user", "content": user}));
    let n = traj.turns.len();
    for (k, turn) in traj.turns.iter().enumerate() {
        msgs.push(json!({"role": "assistant", "content": turn.assistant_text}));
        if let Some(call) = &turn.tool_call {
            let mut parts: Vec<Value> = call
                .result_images
                .iter()
                .filter_map(|key| traj.images.iter().find(|(k, _)| k == key))
                .map(|(_, p)| image_part(image_url(p, base)))
                .collect();
            if parts.is_empty() {
                msgs.push(json!({"role": "tool", "content": call.result_text}));
            } else {
                parts.push(json!({"type": "text", "text": call.result_text}));
                msgs.push(json!({"role": "tool", "content": parts}));
            }
        } else if let Some(err) = &turn.tool_error {
            msgs.push(json!({"role": "tool", "content": err}));
        } else if k + 1 < n {
            // A call in the last allowed turn was not run; the model was told to answer.
            msgs.push(json!({"role": "tool", "content": LAST_TURN_MESSAGE}));
        }
    }
    Value::Array(msgs)
}
