//! Training metrics where people coming from verl/TRL look for them:
//! - `run_dir/metrics.jsonl`: one JSON row per step (`{"step": N, "time": T, "reward/mean": …}`),
//! - `run_dir/tb/events.out.tfevents.*`: TensorBoard scalars under the same names,
//! - PNG plots (`plot_metrics`), with a reward curve first.
//!
//! Both files are flushed on every `log`, so a killed run keeps everything it logged; a run
//! resumed from a checkpoint drops the rows logged after that checkpoint so each step appears once.

mod plot;
mod tfevents;

pub use plot::plot_metrics;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: malformed metrics row: {source}")]
    Row {
        path: PathBuf,
        line: usize,
        #[source]
        source: RowError,
    },
    #[error("{path}: metric name `{name}` is reserved for the row's own field")]
    ReservedName { path: PathBuf, name: String },
    #[error("{path}: no metric named `{name}` (present: {present})")]
    UnknownMetric {
        path: PathBuf,
        name: String,
        present: String,
    },
    #[error("{path}: no metric rows to plot")]
    NoRows { path: PathBuf },
    #[error("{path}: cannot draw plot: {source}")]
    Plot {
        path: PathBuf,
        #[source]
        source: plot::DrawError,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MetricsError + '_ {
    move |source| MetricsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// One row of metrics.jsonl as read back: its step and its metrics by name.
pub type MetricRow = (u64, BTreeMap<String, f64>);

/// Appends metric rows to `metrics.jsonl` and a TensorBoard event file.
pub struct MetricsLogger {
    jsonl_path: PathBuf,
    jsonl: File,
    events_path: PathBuf,
    events: BufWriter<File>,
}

impl MetricsLogger {
    /// Opens run_dir/metrics.jsonl (append) and a new TensorBoard event file
    /// run_dir/tb/events.out.tfevents.<time>.<host>.
    ///
    /// `resume_step`: when resuming from a checkpoint at that step, rows of metrics.jsonl with
    /// step > resume_step are dropped first (they will be logged again), atomically (write
    /// temp, rename). The new event file then starts with a session-start marker at
    /// resume_step + 1, which makes TensorBoard discard the old files' points from there on.
    pub fn create(run_dir: &Path, resume_step: Option<u64>) -> Result<Self, MetricsError> {
        std::fs::create_dir_all(run_dir).map_err(io_err(run_dir))?;
        let jsonl_path = run_dir.join("metrics.jsonl");
        if jsonl_path.exists() {
            repair_jsonl(&jsonl_path, resume_step)?;
        }
        let jsonl = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&jsonl_path)
            .map_err(io_err(&jsonl_path))?;

        let tb_dir = run_dir.join("tb");
        std::fs::create_dir_all(&tb_dir).map_err(io_err(&tb_dir))?;
        let now = unix_now();
        let base = format!("events.out.tfevents.{}.{}", now as u64, hostname());
        // Two loggers opened in the same second (tests, a quick restart) must not share a
        // file; TensorBoard reads every file whose name contains "tfevents", suffix or not.
        let mut events_path = tb_dir.join(&base);
        let mut n = 0;
        let file = loop {
            match OpenOptions::new().write(true).create_new(true).open(&events_path) {
                Ok(f) => break f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    n += 1;
                    events_path = tb_dir.join(format!("{base}.{n}"));
                }
                Err(e) => return Err(io_err(&events_path)(e)),
            }
        };
        let mut logger = MetricsLogger {
            jsonl_path,
            jsonl,
            events_path,
            events: BufWriter::new(file),
        };
        logger.write_event(&tfevents::file_version_event(now))?;
        if let Some(step) = resume_step {
            logger.write_event(&tfevents::session_start_event(now, step.saturating_add(1) as i64))?;
        }
        logger.flush_events()?;
        Ok(logger)
    }

    /// The metrics.jsonl this logger appends to.
    pub fn jsonl_path(&self) -> &Path {
        &self.jsonl_path
    }

    /// The TensorBoard event file this logger writes.
    pub fn events_path(&self) -> &Path {
        &self.events_path
    }

    /// One row: {"step": N, "time": unix_seconds, <name>: value, …}; names like "reward/mean",
    /// "actor/kl", "perf/tokens_per_s" (verl-style slashes); NaN/inf values written as null in
    /// JSON and skipped in TensorBoard. Flushes both files every call (a killed run loses
    /// nothing logged).
    pub fn log(&mut self, step: u64, scalars: &BTreeMap<String, f64>) -> Result<(), MetricsError> {
        if let Some(name) = scalars.keys().find(|k| *k == "step" || *k == "time") {
            return Err(MetricsError::ReservedName {
                path: self.jsonl_path.clone(),
                name: name.clone(),
            });
        }
        let now = unix_now();
        // Written by hand rather than through a serde map so that `step` and `time` lead the
        // row (serde_json's map would sort them among the metric names).
        let mut row = format!("{{\"step\":{step},\"time\":{}", json_number(now));
        for (name, &v) in scalars {
            row.push(',');
            row.push_str(&serde_json::Value::String(name.clone()).to_string());
            row.push(':');
            row.push_str(&json_number(v));
        }
        row.push_str("}\n");
        // A single write of the whole line: an interrupted run leaves at most one torn
        // last line, which `create`/`read_metrics` know to discard.
        self.jsonl
            .write_all(row.as_bytes())
            .map_err(io_err(&self.jsonl_path))?;
        self.jsonl.flush().map_err(io_err(&self.jsonl_path))?;

        let finite = scalars
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(k, &v)| (k.as_str(), v as f32));
        let ev = tfevents::scalars_event(now, step as i64, finite);
        self.write_event(&ev)?;
        self.flush_events()
    }

    fn write_event(&mut self, ev: &[u8]) -> Result<(), MetricsError> {
        tfevents::write_record(&mut self.events, ev).map_err(io_err(&self.events_path))
    }

    fn flush_events(&mut self) -> Result<(), MetricsError> {
        self.events.flush().map_err(io_err(&self.events_path))
    }
}

/// Finite numbers as JSON numbers; NaN and ±inf as `null` (JSON has no spelling for them).
fn json_number(v: f64) -> String {
    serde_json::Number::from_f64(v).map_or_else(|| "null".to_string(), |n| n.to_string())
}

fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    // The name goes into a file name: keep it to characters safe there.
    let clean: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "localhost".to_string()
    } else {
        clean
    }
}

/// Rewrites an existing metrics.jsonl without a torn last line (a run killed mid-write) and,
/// when resuming, without rows after `resume_step`. The rewrite goes to a temporary file that
/// is renamed over the original, so a crash here never leaves a half-written metrics file.
fn repair_jsonl(path: &Path, resume_step: Option<u64>) -> Result<(), MetricsError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let torn = !text.is_empty() && !text.ends_with('\n');
    if resume_step.is_none() && !torn {
        return Ok(());
    }
    let complete = if torn {
        &text[..text.rfind('\n').map_or(0, |i| i + 1)]
    } else {
        &text[..]
    };
    let mut kept = String::with_capacity(complete.len());
    for (i, line) in complete.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        // A garbage row (an editor, a disk error) must not block a resume: it is dropped, and
        // said so, rather than kept where every later reader would trip on it.
        let step = match row_step(line) {
            Ok(step) => step,
            Err(why) => {
                eprintln!("armt: dropping malformed row {}:{}: {why}", path.display(), i + 1);
                continue;
            }
        };
        if resume_step.is_none_or(|r| step <= r) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    let tmp = path.with_extension("jsonl.tmp");
    {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(kept.as_bytes()).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// The `step` of a metrics row, or why the row has none.
fn row_step(line: &str) -> Result<u64, RowError> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(RowError::Json)?;
    v.get("step").and_then(|s| s.as_u64()).ok_or(RowError::NoStep)
}

/// What is wrong with one row of metrics.jsonl.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error(transparent)]
    Json(serde_json::Error),
    #[error("no non-negative integer `step`")]
    NoStep,
    /// `value` is the row's JSON text for it.
    #[error("metric `{name}` is not a number: {value}")]
    NotANumber { name: String, value: String },
}

/// Reads metrics.jsonl: (step, metrics) per row, in file order. `time` is not a metric and is
/// left out; `null` (a NaN/inf that was logged) reads back as NaN so the step still shows that
/// the metric was logged. A torn last line (no newline: the writer was killed mid-row) is
/// ignored; any other malformed row is an error naming file and line.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricRow>, MetricsError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let n_lines = text.lines().count();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |source: RowError| MetricsError::Row {
            path: path.to_path_buf(),
            line: i + 1,
            source,
        };
        let parsed: Result<serde_json::Map<String, serde_json::Value>, _> = serde_json::from_str(line);
        let obj = match parsed {
            Ok(o) => o,
            Err(_) if i + 1 == n_lines && !text.ends_with('\n') => break,
            Err(e) => return Err(err(RowError::Json(e))),
        };
        let step = obj
            .get("step")
            .and_then(|s| s.as_u64())
            .ok_or_else(|| err(RowError::NoStep))?;
        let mut row = BTreeMap::new();
        for (k, v) in obj {
            if k == "step" || k == "time" {
                continue;
            }
            let x = match v {
                serde_json::Value::Null => f64::NAN,
                serde_json::Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
                serde_json::Value::Bool(b) => f64::from(u8::from(b)),
                other => {
                    return Err(err(RowError::NotANumber {
                        name: k,
                        value: other.to_string(),
                    }))
                }
            };
            row.insert(k, x);
        }
        out.push((step, row));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
