//! Checkpoints: a directory per step (weights, EMA, optimizer moments as safetensors; config,
//! tokenizer, state and a manifest of SHA-256 checksums), written to a temporary directory,
//! fsynced and renamed into place, then published by atomically replacing the run's `latest`
//! pointer. A kill at any moment leaves the previous checkpoint intact and loadable.
//!
//! [`load`] reads everything (a run to resume); [`open`] gives what inference needs: the
//! model, its tokenizer and config.
//!
//! An imported model's weights may stay quantized: `model.gguf` ([`gguf`]) in place of
//! `model.safetensors`, and files beside them ([`EXTRA_FILES`]) say where it came from and
//! how to chat with it.

pub mod gguf;

use crate::config::{Config, ObjectiveKind};
use crate::data::TextTokenizer;
use crate::model::Transformer;
use crate::runtime::fsutil::{sync_dir, write_atomic};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const FORMAT_VERSION: u32 = 1;
/// Optional text files a checkpoint carries: `provenance.json` (what it was imported from)
/// and `chat.json` (the model's chat template and turn tokens).
pub const EXTRA_FILES: [&str; 2] = ["provenance.json", "chat.json"];
const KEEP: usize = 2;

/// Everything besides tensors needed to continue a run exactly. The run's objective is its
/// config's `train.objective`; `state.json` carries a copy ([`StateFile`]) for readers of
/// the format, which `load` reads past.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    pub format_version: u32,
    /// Optimizer steps completed.
    pub step: usize,
    /// Training sequences consumed: the data position (the order is a function of seed and it).
    pub data_cursor: u64,
    pub tokens_seen: u64,
    /// Noise and data RNGs are derived from (seed, step), so the seed is the whole RNG state.
    pub seed: u64,
    pub tokenizer_hash: String,
    pub last_val_loss: Option<f64>,
    pub elapsed_s: f64,
    /// The checkpoint whose weights a `--init` run started from (None: a random init).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<String>,
    /// SHA-256 over the training and validation token streams (see
    /// [`crate::data::Prepared::fingerprint`]): a resume on other data behind the same path
    /// and tokenizer is refused. None in checkpoints written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_sha256: Option<String>,
}

/// `state.json` as written: the state and the objective of the run's config.
#[derive(Serialize)]
struct StateFile<'a> {
    #[serde(flatten)]
    state: &'a TrainState,
    objective: ObjectiveKind,
}

/// Which of a checkpoint's weights a model holds or a run starts from: the average the run
/// kept (EMA) or the last step's. Written as "ema" / "raw" (eval reports, `result.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightsChoice {
    Ema,
    Raw,
}

impl WeightsChoice {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ema => "ema",
            Self::Raw => "raw",
        }
    }
}

impl std::fmt::Display for WeightsChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: Config,
    pub state: TrainState,
    pub tokenizer_json: String,
    pub weights: HashMap<String, Tensor>,
    pub ema: Option<HashMap<String, Tensor>>,
    /// Optimizer moments `m.<name>` and `v.<name>`.
    pub optim: Option<HashMap<String, Tensor>>,
    /// The weights in GGUF blocks (saved as `model.gguf` instead of `model.safetensors`;
    /// `weights` is then empty: [`Checkpoint::pick`] expands them only for a caller that
    /// needs f32, so a quantized model does not hold ~4× its size in memory).
    pub quantized: Option<gguf::QTensors>,
    /// Where expanded weights go (the blocks stay on the host).
    pub device: Device,
    /// [`EXTRA_FILES`] present, by name.
    pub extra: BTreeMap<String, String>,
}

/// How an opened model holds its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Quantized matrices stay in their blocks where the checkpoint has them; f32 elsewhere.
    #[default]
    Stored,
    /// Everything expanded to f32 (the reference).
    F32,
    /// Stored blocks, whose Q4_0/Q4_1/Q8_0 products take activations rounded to 8 bits
    /// (integer dot products; `--int8`).
    Int8,
}

impl Precision {
    /// The precision a command's `--f32` and `--int8` flags ask for (clap keeps them apart).
    pub fn from_flags(f32: bool, int8: bool) -> Self {
        match (f32, int8) {
            (true, _) => Precision::F32,
            (_, true) => Precision::Int8,
            _ => Precision::Stored,
        }
    }
}

/// A checkpoint opened for inference: what every command that decodes or evaluates needs.
pub struct Opened {
    pub dir: PathBuf,
    pub config: Config,
    pub state: TrainState,
    pub tokenizer: TextTokenizer,
    pub model: Transformer,
    /// Which weights the model holds: the EMA where the run kept one and it was wanted.
    pub weights: WeightsChoice,
    pub extra: BTreeMap<String, String>,
}

impl Opened {
    pub fn objective(&self) -> ObjectiveKind {
        self.config.train.objective
    }
}

impl Checkpoint {
    pub fn objective(&self) -> ObjectiveKind {
        self.config.train.objective
    }

    /// Which weights `pick` gives: the EMA where the run kept one and it is wanted.
    pub fn choice(&self, use_ema: bool) -> WeightsChoice {
        if use_ema && self.ema.is_some() {
            WeightsChoice::Ema
        } else {
            WeightsChoice::Raw
        }
    }

    /// The EMA weights where the run kept them and `use_ema`, else the raw ones, as f32
    /// tensors: a quantized checkpoint's blocks expanded here, on the checkpoint's device.
    pub fn pick(&self, use_ema: bool) -> Result<(WeightsChoice, Cow<'_, HashMap<String, Tensor>>)> {
        match (&self.ema, use_ema, &self.quantized) {
            (Some(ema), true, _) => Ok((WeightsChoice::Ema, Cow::Borrowed(ema))),
            (_, _, Some(q)) => {
                let dense = gguf::weights(&self.config.model, q, false)
                    .and_then(|w| Ok(Transformer::from_weights(&self.config.model, w)?))
                    .and_then(|m| Ok(m.dense_tensors()?))
                    .with_context(|| format!("checkpoint {}", self.dir.display()))?
                    .into_iter()
                    .map(|(n, t)| Ok((n, t.to_device(&self.device)?)))
                    .collect::<Result<_>>()?;
                Ok((WeightsChoice::Raw, Cow::Owned(dense)))
            }
            _ => Ok((WeightsChoice::Raw, Cow::Borrowed(&self.weights))),
        }
    }

    /// The inference model and tokenizer: the EMA weights when the run kept them and
    /// `use_ema`, else the raw ones.
    pub fn open(&self, use_ema: bool) -> Result<Opened> {
        self.open_as(use_ema, Precision::Stored)
    }

    /// Like `open`, with quantized weights kept quantized under [`Precision::Stored`].
    pub fn open_as(&self, use_ema: bool, precision: Precision) -> Result<Opened> {
        if precision == Precision::Int8 && self.quantized.is_none() {
            bail!(
                "--int8 rounds the activations of quantized blocks; checkpoint {} holds f32 \
                 weights (import it with --quantize q4_1, say)",
                self.dir.display()
            );
        }
        let (which, model) = match (&self.quantized, precision) {
            (Some(q), Precision::Stored | Precision::Int8) => {
                let m = gguf::weights(&self.config.model, q, true)
                    .and_then(|w| Ok(Transformer::from_weights(&self.config.model, w)?))
                    .map(|m| match precision {
                        Precision::Int8 => m.with_int8(),
                        _ => m,
                    });
                (WeightsChoice::Raw, m)
            }
            _ => {
                let (which, weights) = self.pick(use_ema)?;
                let m = Transformer::from_tensors(&self.config.model, |n| {
                    weights
                        .get(n)
                        .cloned()
                        .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks {n}")))
                });
                (which, m.map_err(Into::into))
            }
        };
        let model = model.with_context(|| format!("checkpoint {}", self.dir.display()))?;
        Ok(Opened {
            dir: self.dir.clone(),
            config: self.config.clone(),
            state: self.state.clone(),
            tokenizer: TextTokenizer::from_json(&self.tokenizer_json)?,
            model,
            weights: which,
            extra: self.extra.clone(),
        })
    }
}

/// Load, verify and open a checkpoint (or a run's latest) for inference.
pub fn open(path: &Path, device: &Device, use_ema: bool) -> Result<Opened> {
    load(path, device)?.open(use_ema)
}

/// Like [`open`], holding the weights as `precision` says.
pub fn open_as(
    path: &Path,
    device: &Device,
    use_ema: bool,
    precision: Precision,
) -> Result<Opened> {
    load(path, device)?.open_as(use_ema, precision)
}

/// Streamed, so a multi-GB weight file is not held in memory twice (once here, once loaded).
fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:x}", h.finalize()))
}

/// Write and fsync a file inside a staging directory (published later by one rename).
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f =
        fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn save_tensors(map: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    candle_core::safetensors::save(map, path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    fs::File::open(path)?.sync_all()?;
    Ok(())
}

/// Save a checkpoint under `run_dir/ckpt-<step>` and point `run_dir/latest` at it.
/// Write every file of `ckpt` into the staging directory, the manifest last.
fn stage(tmp_dir: &Path, ckpt: &Checkpoint) -> Result<()> {
    match &ckpt.quantized {
        Some(q) => gguf::write(&tmp_dir.join(gguf::FILE), q)?,
        None => save_tensors(&ckpt.weights, &tmp_dir.join("model.safetensors"))?,
    }
    for (name, text) in &ckpt.extra {
        if !EXTRA_FILES.contains(&name.as_str()) {
            bail!("internal error: {name} is not a checkpoint file");
        }
        write_synced(&tmp_dir.join(name), text.as_bytes())?;
    }
    if let Some(ema) = &ckpt.ema {
        save_tensors(ema, &tmp_dir.join("ema.safetensors"))?;
    }
    if let Some(optim) = &ckpt.optim {
        save_tensors(optim, &tmp_dir.join("optim.safetensors"))?;
    }
    write_synced(
        &tmp_dir.join("config.toml"),
        ckpt.config.to_toml().as_bytes(),
    )?;
    write_synced(
        &tmp_dir.join("tokenizer.json"),
        ckpt.tokenizer_json.as_bytes(),
    )?;
    write_synced(
        &tmp_dir.join("state.json"),
        serde_json::to_string_pretty(&StateFile {
            state: &ckpt.state,
            objective: ckpt.objective(),
        })?
        .as_bytes(),
    )?;
    // The manifest is written last: a directory without a valid one is incomplete.
    let mut manifest = BTreeMap::new();
    for entry in fs::read_dir(tmp_dir)? {
        let p = entry?.path();
        let file = p.file_name().unwrap().to_string_lossy().to_string();
        manifest.insert(file, sha256_file(&p)?);
    }
    write_synced(
        &tmp_dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    sync_dir(Some(tmp_dir));
    Ok(())
}

pub fn save(run_dir: &Path, ckpt: &Checkpoint) -> Result<PathBuf> {
    fs::create_dir_all(run_dir)
        .with_context(|| format!("cannot create run directory {}", run_dir.display()))?;
    let name = format!("ckpt-{:08}", ckpt.state.step);
    let final_dir = run_dir.join(&name);
    let tmp_dir = run_dir.join(format!(".{name}.tmp{}", std::process::id()));
    if tmp_dir.exists() {
        fs::remove_dir_all(&tmp_dir)?;
    }
    fs::create_dir(&tmp_dir)?;
    // A save that fails part-way leaves nothing behind.
    if let Err(e) = stage(&tmp_dir, ckpt) {
        let _ = fs::remove_dir_all(&tmp_dir);
        return Err(e);
    }
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir)?;
    }
    fs::rename(&tmp_dir, &final_dir)?;
    sync_dir(Some(run_dir));
    write_atomic(&run_dir.join("latest"), name.as_bytes())?;
    prune(run_dir, &name)?;
    Ok(final_dir)
}

/// The exclusive right to write into a run directory, held for as long as this lives. It is
/// an OS file lock on `<run>/.lock`, so it is gone the moment its process dies (a killed
/// run never leaves a stale lock), and the file names the holder for the error message.
/// Re-entrant within a process (the CLI takes it before loading a run, the trainer again).
pub struct RunLock {
    _file: Option<fs::File>,
    path: PathBuf,
}

fn held() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    static HELD: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if self._file.is_some() {
            held().retain(|p| p != &self.path);
        }
    }
}

pub fn lock_run(run_dir: &Path) -> Result<RunLock> {
    let path = fs::canonicalize(run_dir)
        .with_context(|| format!("cannot open {}", run_dir.display()))?
        .join(".lock");
    if held().contains(&path) {
        return Ok(RunLock { _file: None, path });
    }
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            let holder = if holder.is_empty() {
                "another process".to_string()
            } else {
                holder.to_string()
            };
            bail!(
                "{} is being written by {holder}; wait for it to finish (or stop it), or choose another --out",
                run_dir.display()
            );
        }
        Err(fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let me = format!("card (pid {}) on {}", std::process::id(), host.trim());
    file.set_len(0)?;
    file.write_all(me.as_bytes())?;
    file.flush()?;
    held().push(path.clone());
    Ok(RunLock {
        _file: Some(file),
        path,
    })
}

/// Keep the newest KEEP checkpoints (always the one just published); remove staging
/// directories a killed run left behind.
fn prune(run_dir: &Path, keep_name: &str) -> Result<()> {
    for e in fs::read_dir(run_dir)?.filter_map(|e| e.ok()) {
        if e.file_name().to_string_lossy().starts_with(".ckpt-") {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    let mut dirs: Vec<String> = fs::read_dir(run_dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("ckpt-"))
        .collect();
    dirs.sort();
    let excess = dirs.len().saturating_sub(KEEP);
    for name in dirs.into_iter().take(excess) {
        if name != keep_name {
            let _ = fs::remove_dir_all(run_dir.join(name));
        }
    }
    Ok(())
}

/// A checkpoint's (or a run's latest) config alone, without loading or verifying its
/// weights: what a caller needs to decide whether to load them at all.
pub fn saved_config(path: &Path) -> Result<Config> {
    let path = resolve(path)?.join("config.toml");
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Config::from_toml_with_sets(&text, &[])
}

/// A run directory (follows `latest`) or a checkpoint directory itself.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if !path.exists() {
        bail!("checkpoint {} does not exist", path.display());
    }
    let latest = path.join("latest");
    if latest.is_file() {
        let name = fs::read_to_string(&latest)?.trim().to_string();
        if name.is_empty() || name.contains('/') {
            bail!("{} is corrupted", latest.display());
        }
        return Ok(path.join(name));
    }
    if path.join("manifest.json").is_file() {
        return Ok(path.to_path_buf());
    }
    bail!(
        "{} is not a checkpoint (no manifest.json) nor a run directory (no latest)",
        path.display()
    )
}

/// Load and verify a checkpoint: every file's checksum must match its manifest.
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
    let dir = resolve(path)?;
    let manifest_text = fs::read_to_string(dir.join("manifest.json")).with_context(|| {
        format!(
            "checkpoint {} is incomplete: no manifest.json",
            dir.display()
        )
    })?;
    let manifest: BTreeMap<String, String> = serde_json::from_str(&manifest_text)
        .with_context(|| format!("checkpoint {} has a corrupted manifest", dir.display()))?;
    if !manifest.contains_key("model.safetensors") && !manifest.contains_key(gguf::FILE) {
        bail!("checkpoint {} is missing model.safetensors", dir.display());
    }
    for required in ["config.toml", "tokenizer.json", "state.json"] {
        if !manifest.contains_key(required) {
            bail!("checkpoint {} is missing {required}", dir.display());
        }
    }
    for (file, sum) in &manifest {
        let p = dir.join(file);
        if !p.is_file() {
            bail!("checkpoint {} is missing {file}", dir.display());
        }
        if &sha256_file(&p)? != sum {
            bail!(
                "checkpoint {} is corrupted: {file} does not match its checksum",
                dir.display()
            );
        }
    }
    // The format version first: a newer checkpoint's config may not parse as ours.
    let state_text = fs::read_to_string(dir.join("state.json"))?;
    let version = serde_json::from_str::<serde_json::Value>(&state_text)
        .ok()
        .and_then(|v| v["format_version"].as_u64());
    if version != Some(FORMAT_VERSION as u64) {
        bail!(
            "checkpoint {} has format {} (this card reads format {FORMAT_VERSION})",
            dir.display(),
            version.map_or("unknown".into(), |v| v.to_string())
        );
    }
    let config = Config::from_toml(&fs::read_to_string(dir.join("config.toml"))?)
        .with_context(|| format!("checkpoint {} has an invalid config", dir.display()))?;
    let state: TrainState = serde_json::from_str(&state_text)
        .with_context(|| format!("checkpoint {} has an invalid state.json", dir.display()))?;
    let read = |name: &str| -> Result<Option<HashMap<String, Tensor>>> {
        if !manifest.contains_key(name) {
            return Ok(None);
        }
        let map = candle_core::safetensors::load(dir.join(name), device)
            .with_context(|| format!("checkpoint {}: cannot read {name}", dir.display()))?;
        Ok(Some(map))
    };
    let (weights, quantized) = match read("model.safetensors")? {
        Some(w) => (w, None),
        None => {
            let (_, q) = gguf::read(&dir.join(gguf::FILE))
                .with_context(|| format!("checkpoint {}: {}", dir.display(), gguf::FILE))?;
            // The blocks must make the model; they are expanded only when asked (`pick`).
            gguf::weights(&config.model, &q, true)
                .with_context(|| format!("checkpoint {}", dir.display()))?;
            (HashMap::new(), Some(q))
        }
    };
    let mut extra = BTreeMap::new();
    for name in EXTRA_FILES {
        if manifest.contains_key(name) {
            extra.insert(name.to_string(), fs::read_to_string(dir.join(name))?);
        }
    }
    Ok(Checkpoint {
        quantized,
        device: device.clone(),
        extra,
        tokenizer_json: fs::read_to_string(dir.join("tokenizer.json"))?,
        ema: read("ema.safetensors")?,
        optim: read("optim.safetensors")?,
        dir,
        config,
        state,
        weights,
    })
}
