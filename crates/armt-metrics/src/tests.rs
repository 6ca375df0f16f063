use super::*;
use std::process::Command;

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join("armt-metrics-tests").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn m(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn python() -> PathBuf {
    armt_testkit::python()
}

/// Reads the run's tb/ folder with TensorBoard's own EventAccumulator and returns
/// `tag step value` lines, sorted, so the Rust side checks what TensorBoard would show.
fn tensorboard_scalars(tb_dir: &Path) -> Vec<(String, i64, f64)> {
    let script = r#"
import sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
for tag in sorted(acc.Tags()["scalars"]):
    for e in acc.Scalars(tag):
        print(f"{tag}\t{e.step}\t{e.value!r}")
"#;
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(tb_dir)
        .output()
        .expect("run the set-up Python");
    assert!(
        out.status.success(),
        "tensorboard read failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_string(), f[1].parse().unwrap(), f[2].parse().unwrap())
        })
        .collect()
}

#[test]
fn jsonl_rows_have_step_time_and_null_for_non_finite() {
    let dir = tmp_dir("jsonl");
    let mut log = MetricsLogger::create(&dir, None).unwrap();
    log.log(
        1,
        &m(&[
            ("reward/mean", 0.25),
            ("actor/kl", f64::NAN),
            ("perf/tokens_per_s", f64::INFINITY),
        ]),
    )
    .unwrap();
    log.log(2, &m(&[("reward/mean", 0.5)])).unwrap();
    // No drop(): the rows must already be on disk (flushed per call).
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with("{\"step\":1,\"time\":"), "{}", lines[0]);
    let row: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(row["reward/mean"], 0.25);
    assert!(row["actor/kl"].is_null() && row["perf/tokens_per_s"].is_null());
    let t = row["time"].as_f64().unwrap();
    assert!(t > 1.7e9, "time should be unix seconds, got {t}");

    let back = read_metrics(&dir.join("metrics.jsonl")).unwrap();
    assert_eq!(back.len(), 2);
    assert_eq!(back[0].0, 1);
    assert_eq!(back[0].1["reward/mean"], 0.25);
    assert!(back[0].1["actor/kl"].is_nan());
    assert!(!back[0].1.contains_key("time"));
    assert_eq!(back[1], (2, m(&[("reward/mean", 0.5)])));
}

#[test]
fn reserved_names_are_rejected() {
    let dir = tmp_dir("reserved");
    let mut log = MetricsLogger::create(&dir, None).unwrap();
    let err = log.log(1, &m(&[("step", 1.0)])).unwrap_err().to_string();
    assert!(err.contains("metrics.jsonl") && err.contains("`step`"), "{err}");
}

#[test]
fn resume_drops_rows_after_checkpoint_and_appends() {
    let dir = tmp_dir("resume");
    {
        let mut log = MetricsLogger::create(&dir, None).unwrap();
        for s in 1..=5 {
            log.log(s, &m(&[("reward/mean", s as f64)])).unwrap();
        }
    }
    let mut log = MetricsLogger::create(&dir, Some(3)).unwrap();
    assert!(!dir.join("metrics.jsonl.tmp").exists());
    for s in 4..=6 {
        log.log(s, &m(&[("reward/mean", 10.0 * s as f64)])).unwrap();
    }
    let rows = read_metrics(&dir.join("metrics.jsonl")).unwrap();
    let got: Vec<(u64, f64)> = rows.iter().map(|(s, m)| (*s, m["reward/mean"])).collect();
    assert_eq!(
        got,
        vec![(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0)]
    );
    // Two event files now; TensorBoard must show each step once, with the resumed values.
    let files = std::fs::read_dir(dir.join("tb")).unwrap().count();
    assert_eq!(files, 2);
    let tb = tensorboard_scalars(&dir.join("tb"));
    let got: Vec<(i64, f64)> = tb.iter().map(|(_, s, v)| (*s, *v)).collect();
    assert_eq!(
        got,
        vec![(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0)],
        "{tb:?}"
    );
}

#[test]
fn torn_last_line_is_ignored_and_repaired() {
    let dir = tmp_dir("torn");
    let p = dir.join("metrics.jsonl");
    std::fs::write(
        &p,
        "{\"step\":1,\"time\":1.0,\"reward/mean\":0.5}\n{\"step\":2,\"ti",
    )
    .unwrap();
    assert_eq!(read_metrics(&p).unwrap().len(), 1);
    let mut log = MetricsLogger::create(&dir, None).unwrap();
    log.log(2, &m(&[("reward/mean", 0.75)])).unwrap();
    let rows = read_metrics(&p).unwrap();
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2]);
    // A malformed row that is not the torn tail is an error naming file and line.
    std::fs::write(&p, "{\"step\":1}\nnot json\n{\"step\":3}\n").unwrap();
    let err = read_metrics(&p).unwrap_err().to_string();
    assert!(err.contains("metrics.jsonl:2"), "{err}");
}

#[test]
fn a_garbage_row_does_not_block_a_resume() {
    let dir = tmp_dir("garbage");
    let p = dir.join("metrics.jsonl");
    std::fs::write(
        &p,
        "{\"step\":1}\n\u{0}\u{0}garbage\n{\"step\":2}\n{\"step\":3}\n",
    )
    .unwrap();
    let mut log = MetricsLogger::create(&dir, Some(2)).unwrap();
    log.log(3, &m(&[("reward/mean", 0.5)])).unwrap();
    let rows = read_metrics(&p).unwrap();
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3]);
}

#[test]
fn tensorboard_reads_our_event_files() {
    let dir = tmp_dir("tb");
    let mut log = MetricsLogger::create(&dir, None).unwrap();
    let name = log
        .events_path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    for s in 0..4u64 {
        log.log(
            s * 10,
            &m(&[
                ("reward/mean", 0.5 + s as f64 * 0.125),
                ("actor/kl", 1e-3 * s as f64),
                ("actor/bad", f64::NAN),
            ]),
        )
        .unwrap();
    }
    let tb = tensorboard_scalars(&dir.join("tb"));
    let tags: BTreeSet<&str> = tb.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(
        tags,
        BTreeSet::from(["actor/kl", "reward/mean"]),
        "NaN-only tag must be skipped"
    );
    let reward: Vec<(i64, f64)> = tb
        .iter()
        .filter(|t| t.0 == "reward/mean")
        .map(|t| (t.1, t.2))
        .collect();
    assert_eq!(reward, vec![(0, 0.5), (10, 0.625), (20, 0.75), (30, 0.875)]);
    let kl: Vec<f64> = tb.iter().filter(|t| t.0 == "actor/kl").map(|t| t.2).collect();
    assert_eq!(kl.len(), 4);
    // simple_value is a float32: compare at float32 precision.
    assert!((kl[3] - 3e-3).abs() < 1e-9, "{kl:?}");
}

use std::collections::BTreeSet;

fn write_run(dir: &Path, n: u64, with_acc: bool) {
    let mut log = MetricsLogger::create(dir, None).unwrap();
    for s in 1..=n {
        let x = s as f64;
        let noise = ((s * 7919) % 13) as f64 / 13.0 - 0.5;
        let mut row = m(&[
            ("reward/mean", 0.2 + 0.6 * (1.0 - (-x / 30.0).exp()) + 0.1 * noise),
            ("actor/kl", 1e-3 * x),
        ]);
        if with_acc {
            row.insert(
                "reward/accuracy".into(),
                0.3 + 0.5 * (1.0 - (-x / 40.0).exp()) + 0.05 * noise,
            );
        }
        if s == 50 {
            row.insert("actor/kl".into(), f64::NAN);
        }
        log.log(s, &row).unwrap();
    }
}

fn count_color(img: &image::RgbImage, c: plotters::style::RGBColor) -> usize {
    img.pixels().filter(|p| p.0 == [c.0, c.1, c.2]).count()
}

#[test]
fn plots_reward_curve_and_panels() {
    let dir = tmp_dir("plot");
    write_run(&dir, 120, true);
    let out = dir.join("plots");
    let paths = plot_metrics(&dir.join("metrics.jsonl"), &out, None).unwrap();
    let names: Vec<String> = paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec![
            "reward_curve.png",
            "actor_kl.png",
            "reward_accuracy.png",
            "reward_mean.png"
        ]
    );

    let curve = image::open(&paths[0]).unwrap().to_rgb8();
    assert_eq!(curve.dimensions(), (plot::REWARD_W, plot::REWARD_H));
    // The smoothed reward and accuracy lines are solid 3-px lines across the plot width.
    assert!(
        count_color(&curve, plot::MAIN_COLOR) > 1500,
        "reward line missing"
    );
    assert!(
        count_color(&curve, plot::ACC_COLOR) > 1500,
        "accuracy line missing"
    );
    // Text was rendered: dark pixels well beyond what axis lines alone give.
    let dark = curve.pixels().filter(|p| p.0.iter().all(|&c| c < 80)).count();
    assert!(dark > 3000, "too few dark (text) pixels: {dark}");

    let kl = image::open(&paths[1]).unwrap().to_rgb8();
    assert_eq!(kl.dimensions(), (plot::PANEL_W, plot::PANEL_H));
    assert!(count_color(&kl, plot::MAIN_COLOR) > 500);
    assert_eq!(count_color(&kl, plot::ACC_COLOR), 0);
}

#[test]
fn plots_chosen_metrics_and_rejects_unknown() {
    let dir = tmp_dir("plot-chosen");
    write_run(&dir, 5, false);
    let jsonl = dir.join("metrics.jsonl");
    let paths = plot_metrics(&jsonl, &dir.join("p"), Some(&["actor/kl".to_string()])).unwrap();
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert!(paths[0].ends_with("reward_curve.png") && paths[1].ends_with("actor_kl.png"));
    let err = plot_metrics(&jsonl, &dir.join("p"), Some(&["nope".to_string()]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope") && err.contains("metrics.jsonl") && err.contains("reward/mean"),
        "{err}"
    );
}

#[test]
fn single_step_run_still_plots() {
    let dir = tmp_dir("plot-one");
    write_run(&dir, 1, false);
    let paths = plot_metrics(&dir.join("metrics.jsonl"), &dir.join("p"), None).unwrap();
    let curve = image::open(&paths[0]).unwrap().to_rgb8();
    assert!(
        count_color(&curve, plot::MAIN_COLOR) > 30,
        "the lone point should be drawn"
    );
}

#[test]
fn smoothing_is_debiased() {
    let s = plot::smooth(&[(0.0, 1.0), (1.0, f64::NAN), (2.0, 1.0)], 0.9);
    assert_eq!(s.len(), 2);
    assert!(
        (s[0].1 - 1.0).abs() < 1e-12 && (s[1].1 - 1.0).abs() < 1e-12,
        "{s:?}"
    );
}

#[test]
fn reward_curve_shows_validation_accuracy_when_logged() {
    let dir = tmp_dir("plot-val");
    let mut log = MetricsLogger::create(&dir, None).unwrap();
    for s in 1..=40u64 {
        let x = s as f64;
        let mut row = m(&[
            ("reward/mean", 0.5 + 0.01 * x),
            ("reward/accuracy", 0.3 + 0.01 * x),
        ]);
        if s % 10 == 0 {
            row.insert("val/accuracy".into(), 0.4 + 0.1 * (x / 10.0));
        }
        log.log(s, &row).unwrap();
    }
    drop(log);
    let paths = plot_metrics(&dir.join("metrics.jsonl"), &dir.join("plots"), None).unwrap();
    let curve = image::open(&paths[0]).unwrap().to_rgb8();
    // Four markers and the line between them, in the validation colour.
    assert!(
        count_color(&curve, plot::VAL_COLOR) > 400,
        "validation accuracy missing"
    );
    assert!(
        count_color(&curve, plot::ACC_COLOR) > 1000,
        "training accuracy missing"
    );

    // Without val/accuracy the colour does not appear.
    let dir = tmp_dir("plot-noval");
    write_run(&dir, 40, true);
    let paths = plot_metrics(&dir.join("metrics.jsonl"), &dir.join("plots"), None).unwrap();
    let curve = image::open(&paths[0]).unwrap().to_rgb8();
    assert_eq!(count_color(&curve, plot::VAL_COLOR), 0);
}
