//! Generates a task set, trains the tiny tokenizer, writes the model files and prints one
//! sample of each kind with token counts: `cargo run -p armt-synth --example synth_demo -- OUT_DIR [N]`.

use armt_data::TaskKind;
use armt_synth::*;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let out = std::path::PathBuf::from(
        args.get(1)
            .cloned()
            .unwrap_or_else(|| "/tmp/armt-synth-demo".into()),
    );
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(300);
    let t0 = std::time::Instant::now();
    let samples = generate_tasks(&out.join("data"), n, 0)?;
    let t1 = t0.elapsed();
    let tok = build_tiny_tokenizer(&default_corpus(&samples))?;
    let t2 = t0.elapsed() - t1;
    tiny_model_files(&out.join("model"), &tok)?;
    println!(
        "generated {n} samples in {t1:?}; tokenizer trained in {t2:?}; vocab {} (config {})",
        tok.get_vocab_size(true),
        padded_vocab_size(&tok)
    );
    println!("special ids: {:?}", special_token_ids(&tok)?);
    let count = |s: &str| tok.encode(s, false).map(|e| e.get_ids().len()).unwrap_or(0);
    for kind in [TaskKind::Zoom, TaskKind::Document, TaskKind::Instruction] {
        let of_kind: Vec<_> = samples.iter().filter(|s| s.task == kind).collect();
        let s = of_kind[0];
        println!("\n===== {kind:?}: {} (gt {}) =====", s.id, s.ground_truth);
        println!("{}", serde_json::to_string_pretty(s)?);
        for (i, t) in expert_turns(s).iter().enumerate() {
            println!("--- expert turn {} ({} tokens)\n{t}", i + 1, count(t));
        }
        let toks: Vec<usize> = of_kind.iter().map(|s| count(&s.prompt)).collect();
        let turns: Vec<usize> = of_kind
            .iter()
            .map(|s| expert_turns(s).iter().map(|t| count(t)).sum())
            .collect();
        println!(
            "prompt tokens: mean {:.1} min {} max {}; expert turns total: mean {:.1}",
            toks.iter().sum::<usize>() as f64 / toks.len() as f64,
            toks.iter().min().unwrap(),
            toks.iter().max().unwrap(),
            turns.iter().sum::<usize>() as f64 / turns.len() as f64
        );
        let enc = tok
            .encode(s.prompt.as_str(), false)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        println!("tokens: {:?}", enc.get_tokens());
    }
    println!(
        "\nSHORT_COT_PROMPT: {} tokens; FIXED_COT_PROMPT: {} tokens",
        count(SHORT_COT_PROMPT),
        count(FIXED_COT_PROMPT)
    );
    Ok(())
}
