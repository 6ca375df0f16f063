//! ARM-Thinker RL parquet rows → samples. The parquet files are written at test time by pyarrow
//! (the writer verl's data preparation uses), so the reader is checked against files it did not
//! write itself.

use armt_data::formats::verl_parquet;
use armt_data::{read_dataset, FormatOptions, Judgment, TaskKind};
use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join("armt-parquet-tests").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run_python(script: &str, dir: &Path) {
    let out = Command::new(armt_testkit::python())
        .arg("-c")
        .arg(script)
        .arg(dir)
        .output()
        .expect("running the test Python (scripts/setup makes it)");
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const WRITE_ROWS: &str = r#"
import io, sys, os
import pyarrow as pa, pyarrow.parquet as pq
from PIL import Image
d = sys.argv[1]
def png(color, size=(40, 30)):
    b = io.BytesIO(); Image.new("RGB", size, color).save(b, format="PNG"); return b.getvalue()
os.makedirs(os.path.join(d, "img"), exist_ok=True)
os.makedirs(os.path.join(d, "pages"), exist_ok=True)
Image.new("RGB", (32, 32), (0, 0, 255)).save(os.path.join(d, "img", "blue.png"))
for p in (1, 2, 3):
    Image.new("RGB", (20, 28), (p * 50, 0, 0)).save(os.path.join(d, "pages", f"report_{p}.png"))
open(os.path.join(d, "pages", "report_2.txt"), "w").write("Revenue grew 12 percent.")
open(os.path.join(d, "red.bin"), "wb").write(png((255, 0, 0)))
rows = [
  dict(data_source="deepeyes_crop",
       prompt=[dict(role="user", content="<image>\nWhich answer is better?\n[Answer 1] red\n[Answer 2] blue")],
       images=[dict(bytes=png((255, 0, 0)), path=None)],
       reward_model=dict(ground_truth="2", style="rule"),
       extra_info=dict(index=7, rm_tag="pair_rm", doc_id=None, response=None,
                       tools_kwargs=dict(image_zoom_in_tool=dict(create_kwargs=dict(filename=None)))),
       agent_name="tool_agent"),
  dict(data_source="mp_docvqa",
       prompt=[dict(role="system", content="You are a judge."), dict(role="user", content="<image>Is the response correct? Revenue grew 12%.")],
       images=[dict(bytes=None, path="img/blue.png")],
       reward_model=dict(ground_truth="-1", style="rule"),
       extra_info=dict(index=8, rm_tag="single_rm", doc_id="report.pdf", response=None, tools_kwargs=None),
       agent_name="tool_agent"),
  dict(data_source="mmif_train_v2",
       prompt=[dict(role="user", content="<image>Does text_0 follow the constraint?")],
       images=[dict(bytes=None, path="img/blue.png")],
       reward_model=dict(ground_truth="True", style="rule"),
       extra_info=dict(index=9, rm_tag="single_rm", doc_id=None, response="Two short paragraphs.", tools_kwargs=None),
       agent_name="tool_agent"),
  dict(data_source="llava_critic",
       prompt=[dict(role="user", content="<image>\nWhich of four?")],
       images=[dict(bytes=None, path="img/blue.png")],
       reward_model=dict(ground_truth="3", style="rule"),
       extra_info=dict(index=10, rm_tag="4-way-pair_rm", doc_id=None, response=None, tools_kwargs=None),
       agent_name="tool_agent"),
]
pq.write_table(pa.Table.from_pylist(rows), os.path.join(d, "train.parquet"))
# The other ground-truth types a column can have: booleans, integers (mp_docvqa's -2).
pq.write_table(pa.Table.from_pylist([
  dict(data_source="val_llava_critic", prompt=[dict(role="user", content="<image>ok?")],
       images=[dict(bytes=None, path="img/blue.png")], reward_model=dict(ground_truth=False)),
]), os.path.join(d, "bools.parquet"), compression="zstd")
pq.write_table(pa.Table.from_pylist([
  dict(data_source="mp_docvqa", prompt=[dict(role="user", content="<image>ok?")],
       images=["img/blue.png"], reward_model=dict(ground_truth=-2),
       extra_info=dict(index=1, doc_id="report")),
]), os.path.join(d, "ints.parquet"))
pq.write_table(pa.Table.from_pylist([
  dict(data_source="some_new_set", prompt=[dict(role="user", content="q")], reward_model=dict(ground_truth="1")),
]), os.path.join(d, "unknown.parquet"))
pq.write_table(pa.Table.from_pylist([
  dict(data_source="deepeyes_crop", prompt=[dict(role="user", content="<image><image>q")],
       images=["img/blue.png"], reward_model=dict(ground_truth="1")),
]), os.path.join(d, "mismatch.parquet"))
"#;

fn options(dir: &Path) -> FormatOptions {
    FormatOptions {
        doc_root: Some(dir.join("pages")),
        image_cache: Some(dir.join("cache")),
        ..FormatOptions::default()
    }
}

#[test]
fn rows_become_samples() {
    let dir = tmp("rows");
    run_python(WRITE_ROWS, &dir);
    let opts = options(&dir);
    let s = read_dataset(&dir.join("train.parquet"), &opts).unwrap();
    assert_eq!(s.len(), 4);

    // Pairwise zoom row: embedded bytes written out unchanged; placeholder removed.
    assert_eq!(s[0].id, "deepeyes_crop-7");
    assert_eq!(s[0].task, TaskKind::Zoom);
    assert_eq!(s[0].judgment, Judgment::Pair { candidates: 2 });
    assert_eq!(s[0].ground_truth, "2");
    assert_eq!(s[0].source.as_deref(), Some("deepeyes_crop"));
    assert_eq!(
        s[0].prompt,
        "Which answer is better?\n[Answer 1] red\n[Answer 2] blue"
    );
    assert!(s[0].images[0].starts_with(dir.join("cache")));
    assert_eq!(
        std::fs::read(&s[0].images[0]).unwrap(),
        std::fs::read(dir.join("red.bin")).unwrap(),
        "image bytes must be written as stored"
    );
    assert_eq!(s[0].images[0].extension().unwrap(), "png");

    // Document row: -1 means true; pages found by doc_id (".pdf" dropped), in order, with text.
    assert_eq!(s[1].task, TaskKind::Document);
    assert_eq!(s[1].judgment, Judgment::Single);
    assert_eq!(s[1].ground_truth, "true");
    assert_eq!(s[1].images[0], dir.join("img/blue.png"));
    let doc = s[1].document.as_ref().unwrap();
    assert_eq!(doc.name, "report");
    assert_eq!(doc.pages.len(), 3);
    assert!(doc.pages[0].image.ends_with("report_1.png"));
    assert!(doc.pages[2].image.ends_with("report_3.png"));
    assert_eq!(doc.pages[1].text, "Revenue grew 12 percent.");
    assert_eq!(doc.pages[0].text, "");

    // A source containing "mmif" is an instruction task with its candidate as text_0.
    assert_eq!(s[2].task, TaskKind::Instruction);
    assert_eq!(s[2].response.as_deref(), Some("Two short paragraphs."));
    assert_eq!(s[2].ground_truth, "true");

    // rm_tag fixes the number of candidates.
    assert_eq!(s[3].judgment, Judgment::Pair { candidates: 4 });
    assert_eq!(s[3].ground_truth, "3");

    let b = read_dataset(&dir.join("bools.parquet"), &opts).unwrap();
    assert_eq!(
        (b[0].judgment, b[0].ground_truth.as_str()),
        (Judgment::Single, "false")
    );
    let i = read_dataset(&dir.join("ints.parquet"), &opts).unwrap();
    assert_eq!(
        (i[0].judgment, i[0].ground_truth.as_str()),
        (Judgment::Single, "false")
    );
    assert_eq!(i[0].images[0], dir.join("img/blue.png"));

    // The source → task table is configurable.
    let mut custom = opts.clone();
    custom.sources.insert("some_new_set".into(), TaskKind::Zoom);
    let u = verl_parquet::read_samples(&dir.join("unknown.parquet"), &custom).unwrap();
    assert_eq!(u[0].task, TaskKind::Zoom);
}

#[test]
fn bad_rows_name_file_and_row() {
    let dir = tmp("bad");
    run_python(WRITE_ROWS, &dir);
    let opts = options(&dir);
    let e = read_dataset(&dir.join("unknown.parquet"), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown.parquet:1") && e.contains("data.formats.sources"),
        "{e}"
    );
    let e = read_dataset(&dir.join("mismatch.parquet"), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("mismatch.parquet:1") && e.contains("2 <image> placeholder"),
        "{e}"
    );
    let mut no_pages = opts.clone();
    no_pages.doc_root = Some(dir.join("img"));
    let e = read_dataset(&dir.join("ints.parquet"), &no_pages)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ints.parquet:1") && e.contains("report"), "{e}");
    std::fs::write(dir.join("junk.parquet"), b"not parquet").unwrap();
    let e = read_dataset(&dir.join("junk.parquet"), &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("junk.parquet") && e.contains("parquet"), "{e}");
}
