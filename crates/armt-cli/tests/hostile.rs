//! Replays the hostile inputs of `tests/hostile/cases.json` against the built `armt`: each must
//! end with exit status 1 and an error that names the input (the case's `expect` strings), and
//! none may panic. Every case fails before a model is loaded, so the whole table runs in seconds.

use std::path::Path;
use std::process::Command;

#[test]
fn every_hostile_input_gets_a_named_error_and_no_panic() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap();
    let hostile = repo.join("tests/hostile");
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(hostile.join("cases.json")).unwrap()).unwrap();
    assert!(cases.len() >= 40, "the table lost cases: {}", cases.len());
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let name = case["name"].as_str().unwrap();
        let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hostile/{i}"));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).unwrap();
        let expand = |s: &str| {
            s.replace("{hostile}", &hostile.display().to_string())
                .replace("{repo}", &repo.display().to_string())
                .replace("{scratch}", &scratch.display().to_string())
        };
        let args: Vec<String> = case["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| expand(a.as_str().unwrap()))
            .collect();
        let out = Command::new(env!("CARGO_BIN_EXE_armt"))
            .args(&args)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err
            .lines()
            .find(|l| l.starts_with("Error"))
            .unwrap_or("")
            .to_string();
        println!(
            "{name}\n    -> exit {:?}: {}",
            out.status.code(),
            first.chars().take(300).collect::<String>()
        );
        let mut problems = Vec::new();
        if out.status.code() != Some(1) {
            problems.push(format!("exit status {:?}, expected 1", out.status));
        }
        if err.contains("panicked") {
            problems.push("panicked".into());
        }
        for want in case["expect"].as_array().unwrap() {
            let want = expand(want.as_str().unwrap());
            if !err.contains(&want) {
                problems.push(format!("no `{want}` in the error"));
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{name}: {}\n--- stderr:\n{err}", problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
