//! `armt serve` with a real HTTP client against the running server (tiny checkpoint, CPU): both
//! endpoints under 8 concurrent clients, malformed requests and paths outside the image roots
//! refused with 400 and the reason, a full queue answered with 429.

mod common;

use common::{repo, serve, Server};
use serde_json::{json, Value};
use std::ffi::OsStr;
use std::path::Path;

fn start(extra: &[&str]) -> Server {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("short.toml");
    std::fs::write(
        &config,
        "[rollout]\nmax_turns = 2\nmax_turn_tokens = 12\nmax_response_tokens = 24\nmax_context = 8192\n",
    )
    .unwrap();
    let model = armt_testkit::refs_dir().join("model/tiny-hub/model");
    let mut args: Vec<&OsStr> = vec![
        "--model".as_ref(),
        model.as_os_str(),
        "--tools".as_ref(),
        "configs/tools/zoom.yaml".as_ref(),
        "--image-root".as_ref(),
        "data".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    serve(&args)
}

fn post(base: &str, path: &str, body: &str) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .post(format!("{base}{path}"))
        .header("Content-Type", "application/json")
        .send(body)
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn data_url(path: &Path) -> String {
    use base64::Engine;
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap())
    )
}

#[test]
fn both_endpoints_under_concurrent_clients() {
    let server = start(&[]);
    let red = repo().join("data/images/red_dot.png");
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let base = server.base.clone();
            let image = if i % 2 == 0 { data_url(&red) } else { red.display().to_string() };
            std::thread::spawn(move || {
                if i % 4 == 3 {
                    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "What colour is the dot?"}]}]});
                    let (status, v) = post(&base, "/v1/chat/completions", &body.to_string());
                    assert_eq!(status, 200, "{v}");
                    assert_eq!(v["object"], "chat.completion");
                    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
                    assert_eq!(v["armt"]["trajectory"][1]["role"], "user");
                } else {
                    let body = json!({"question": "What colour is the dot?", "images": [image],
                        "candidates": ["It is red.", "It is blue."]});
                    let (status, v) = post(&base, "/v1/judge", &body.to_string());
                    assert_eq!(status, 200, "{v}");
                    assert!(v["answer"].is_string() && v["tool_calls"].is_array(), "{v}");
                    // An untrained checkpoint rarely gives a verdict; when it does, the preference matches it.
                    if let Some(k) = v["verdict"].as_u64() {
                        assert_eq!(v["preference"][(k - 1) as usize], 1.0, "{v}");
                    } else {
                        assert!(v["preference"].is_null(), "{v}");
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }

    // Malformed requests: 400 with the reason.
    let (s, v) = post(&server.base, "/v1/judge", "{not json");
    assert_eq!(s, 400);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("not JSON"),
        "{v}"
    );
    let (s, v) = post(
        &server.base,
        "/v1/judge",
        &json!({"question": "q", "images": [], "candidates": ["a", "b", "c"]}).to_string(),
    );
    assert_eq!(s, 400);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("3 candidates"),
        "{v}"
    );
    let (s, v) = post(
        &server.base,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "assistant", "content": "x"}]}).to_string(),
    );
    assert_eq!(s, 400, "{v}");
    // No file outside the configured roots, however the path is spelled.
    for path in ["/etc/passwd", "data/../Cargo.toml"] {
        let body = json!({"question": "q", "images": [path], "candidates": ["a", "b"]});
        let (s, v) = post(&server.base, "/v1/judge", &body.to_string());
        assert_eq!(s, 400, "{path}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("outside the configured image roots") || msg.contains("No such file"),
            "{msg}"
        );
    }
    let (s, _) = post(&server.base, "/v1/nothing", "{}");
    assert_eq!(s, 404);
}

#[test]
fn a_full_queue_answers_429() {
    let server = start(&["--queue", "1", "--max-batch", "1"]);
    let image = data_url(&repo().join("data/images/blue_dot.png"));
    let handles: Vec<_> = (0..12)
        .map(|_| {
            let (base, image) = (server.base.clone(), image.clone());
            std::thread::spawn(move || {
                let body = json!({"question": "q", "images": [image], "candidates": ["a", "b"]});
                post(&base, "/v1/judge", &body.to_string()).0
            })
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    assert!(
        statuses.contains(&429),
        "12 requests at once, queue of 1: {statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
}
