//! Self-distillation: the model's own continuations of corpus prefixes, as training data.
//!
//! Parallel decoding and verification accept what the model is confident about *given its
//! own earlier tokens*. Training CARD on the model's greedy (or low-temperature)
//! continuations makes its `[MASK]`-slot predictions agree with its clean-context ones on
//! exactly the text it generates (the idea of consistency distillation: CLLM, Jacobi
//! Forcing, dParallel). Real text is mixed back in so the model does not drift from it; the
//! caller reports held-out bits per byte on real text before and after.
//!
//! Continuations are written in chunks to a JSON-lines file as they are generated, so a
//! killed run loses at most one chunk and resumes where it stopped with the same result
//! (prefix positions and sampling seeds are functions of the seed and the chunk).

use super::RunStart;
use crate::checkpoint::{self, Precision};
use crate::config::{Config, ObjectiveKind};
use crate::data::{eval_windows, load_data, Prepared, TextTokenizer};
use crate::decode::{ArDecoder, Decoder, Finish, GenOptions, Sampling};
use crate::eval;
use crate::model::Transformer;
use crate::runtime::fsutil::write_atomic;
use crate::runtime::rng::{rng, Stream};
use crate::runtime::stop_requested;
use anyhow::{bail, ensure, Context, Result};
use candle_core::Device;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize)]
pub struct DistillConfig {
    /// Corpus prefixes to continue.
    pub prefixes: usize,
    /// Tokens of real text in each prefix.
    pub prefix_len: usize,
    /// Tokens the model generates after each prefix.
    pub new_tokens: usize,
    /// Rows decoded together.
    pub batch: usize,
    /// Greedy by default: the trajectories greedy decoding and verification will meet.
    pub sampling: Sampling,
    /// Share of the new training stream taken by the continuation rows (each its real prefix
    /// followed by the model's tokens); the rest is further real text.
    pub mix: f64,
    pub seed: u64,
}

impl DistillConfig {
    pub fn validate(&self, model: &Transformer) -> Result<()> {
        ensure!(self.prefixes > 0, "--prefixes must be at least 1");
        ensure!(self.prefix_len > 0, "--prefix-len must be at least 1");
        ensure!(self.new_tokens > 0, "--new-tokens must be at least 1");
        ensure!(self.batch > 0, "--batch must be at least 1");
        ensure!(
            self.mix > 0.0 && self.mix <= 1.0,
            "--mix must be in (0, 1], got {}",
            self.mix
        );
        let ctx = model.cfg.max_seq_len;
        ensure!(
            self.prefix_len + self.new_tokens <= ctx,
            "--prefix-len {} + --new-tokens {} exceed the model's context of {ctx}",
            self.prefix_len,
            self.new_tokens
        );
        self.sampling.validate()
    }
}

/// One line of the continuations file.
#[derive(Serialize, Deserialize)]
struct Chunk {
    chunk: usize,
    /// Each row: its prefix, the continuation, and `<|endoftext|>` where the model ended it.
    rows: Vec<Vec<u32>>,
}

/// Where each prefix starts in the training stream.
fn prefix_starts(train_len: usize, cfg: &DistillConfig) -> Result<Vec<usize>> {
    if train_len <= cfg.prefix_len {
        bail!(
            "the training split has {train_len} tokens, too few for prefixes of {}",
            cfg.prefix_len
        );
    }
    let mut r = rng(cfg.seed, Stream::DistillPrefixes, 0);
    Ok((0..cfg.prefixes)
        .map(|_| r.random_range(0..train_len - cfg.prefix_len))
        .collect())
}

/// The chunks already in `path` (a torn last line from a killed run is dropped and the file
/// cut back to the valid lines, so appending continues cleanly).
fn read_chunks(path: &Path, rows_per_chunk: &dyn Fn(usize) -> usize) -> Result<Vec<Chunk>> {
    let Ok(text) = fs::read_to_string(path) else {
        return Ok(Vec::new());
    };
    let mut chunks = Vec::new();
    let mut valid = 0;
    for line in text.split_inclusive('\n') {
        let Ok(c) = serde_json::from_str::<Chunk>(line.trim_end()) else {
            break;
        };
        if !line.ends_with('\n')
            || c.chunk != chunks.len()
            || c.rows.len() != rows_per_chunk(c.chunk)
        {
            break;
        }
        valid += line.len();
        chunks.push(c);
    }
    if valid < text.len() {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(valid as u64)?;
        f.sync_all()?;
    }
    Ok(chunks)
}

/// The model's continuations of `cfg.prefixes` prefixes of `train`, generated in chunks of
/// `cfg.batch` rows and appended to `path` (resumed from what is there). Returns every row
/// (prefix + continuation); stops early, with what is written kept, on Ctrl-C.
pub fn continuations(
    model: &Transformer,
    tok: &TextTokenizer,
    train: &[u32],
    cfg: &DistillConfig,
    path: &Path,
    progress: bool,
) -> Result<Vec<Vec<u32>>> {
    cfg.validate(model)?;
    let starts = prefix_starts(train.len(), cfg)?;
    let n_chunks = cfg.prefixes.div_ceil(cfg.batch);
    let rows_in = |c: usize| cfg.batch.min(cfg.prefixes - c * cfg.batch);
    let mut chunks = read_chunks(path, &rows_in)?;
    let bar = crate::runtime::progress_bar(
        cfg.prefixes as u64,
        progress,
        "continuations {bar:30} {pos}/{len} rows [{elapsed_precise} < {eta_precise}]",
    );
    bar.set_position(chunks.iter().map(|c| c.rows.len() as u64).sum());
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    for c in chunks.len()..n_chunks {
        if stop_requested() {
            bail!("interrupted after {c} of {n_chunks} chunks; rerun to resume");
        }
        let prompts: Vec<Vec<u32>> = starts[c * cfg.batch..c * cfg.batch + rows_in(c)]
            .iter()
            .map(|&s| train[s..s + cfg.prefix_len].to_vec())
            .collect();
        let opts = GenOptions {
            sampling: cfg.sampling.clone(),
            seed: cfg.seed.wrapping_add(c as u64),
            ..GenOptions::new(cfg.new_tokens, tok)
        };
        // The model's own trajectory: AR decoding (exact for ARM and CARD checkpoints).
        let g = ArDecoder.generate(model, &prompts, &opts, &mut |_| {})?;
        let rows: Vec<Vec<u32>> = prompts
            .into_iter()
            .zip(g.rows)
            .map(|(mut p, r)| {
                p.extend(r.tokens);
                if r.finish == Finish::Eos {
                    p.push(tok.eot_id());
                }
                p
            })
            .collect();
        let chunk = Chunk { chunk: c, rows };
        let mut line = serde_json::to_string(&chunk)?;
        line.push('\n');
        file.write_all(line.as_bytes())?;
        file.sync_data()?;
        bar.inc(chunk.rows.len() as u64);
        chunks.push(chunk);
    }
    bar.finish_and_clear();
    Ok(chunks.into_iter().flat_map(|c| c.rows).collect())
}

/// A training corpus of the self-generated rows (each ended by `<|endoftext|>`) and real
/// text from the start of `data`'s training stream, sized so that the self-generated share
/// of tokens is `mix` (or as near as the real text allows); validation stays `data`'s own.
/// Returns the corpus and the self-generated share reached.
pub fn mixed(data: &Prepared, rows: &[Vec<u32>], mix: f64) -> Result<(Prepared, f64)> {
    let tok = &data.tokenizer;
    let eot = tok.eot_id();
    let mut train: Vec<u32> = Vec::new();
    let mut bytes = 0u64;
    for r in rows {
        train.extend_from_slice(r);
        if r.last() != Some(&eot) {
            train.push(eot);
        }
        bytes += tok.decode(r)?.len() as u64;
    }
    let own = train.len();
    let want_real = ((own as f64) * (1.0 - mix) / mix).round() as usize;
    let real = want_real.min(data.train.len());
    train.extend_from_slice(&data.train[..real]);
    bytes += (data.train_bytes as f64 * real as f64 / data.train.len().max(1) as f64) as u64;
    let sources = vec![
        format!("self-distilled: {} continuations, {own} tokens", rows.len()),
        format!("real text: the first {real} tokens of the original training split"),
    ];
    let share = own as f64 / train.len() as f64;
    Ok((data.with_train(train, bytes, sources), share))
}

/// A whole distillation: continuations, the mixed corpus, training from the checkpoint and
/// held-out bits per byte on real text before and after. Every stage is reused when rerun
/// with the same settings (a killed run resumes).
#[derive(Debug, Clone, Serialize)]
pub struct DistillPlan {
    pub out: PathBuf,
    pub gen: DistillConfig,
    pub objective: ObjectiveKind,
    pub max_steps: usize,
    /// Config overrides for the training stage (after the fine-tuning defaults).
    pub sets: Vec<String>,
    /// Start from (and generate with) the checkpoint's EMA weights where it kept them.
    pub use_ema: bool,
    /// The corpus to cut prefixes from [default: the checkpoint's].
    pub data: Option<PathBuf>,
    /// Validation windows scored before and after (not part of the settings a rerun must
    /// match: scoring changes no earlier stage).
    #[serde(skip)]
    pub eval_windows: usize,
    #[serde(skip)]
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DistillReport {
    pub checkpoint: String,
    pub rows: usize,
    /// Tokens of the continuation rows (real prefixes included).
    pub self_tokens: usize,
    /// The share of the training stream the continuation rows take.
    pub self_share: f64,
    pub steps: usize,
    pub objective: String,
    /// Held-out bits per byte on real validation text, before and after.
    pub bpb_before: f64,
    pub bpb_after: f64,
    /// The distilled run's directory (its latest checkpoint is the result).
    pub run: String,
}

impl DistillReport {
    /// Relative change of held-out bits per byte (positive: worse).
    pub fn bpb_change(&self) -> f64 {
        self.bpb_after / self.bpb_before - 1.0
    }
}

/// Held-out bits per byte of `model` on `windows` of real text.
fn real_text_bpb(
    model: &Transformer,
    cfg: &Config,
    data: &Prepared,
    windows: usize,
) -> Result<f64> {
    let w = eval_windows(&data.val, cfg.train.seq_len, Some(windows));
    ensure!(!w.is_empty(), "the validation split is empty");
    let objective = crate::objective::build(cfg, data.tokenizer.mask_id());
    let budget = eval::BoundBudget::default();
    let score = eval::held_out(
        model,
        objective.as_ref(),
        &w,
        cfg.train.batch_size,
        budget,
        cfg.train.seed,
    )?;
    Ok(eval::val_bits_per_byte(score.nats_per_token, data))
}

pub fn distill(
    checkpoint_path: &Path,
    plan: &DistillPlan,
    device: &Device,
) -> Result<DistillReport> {
    ensure!(plan.eval_windows >= 1, "--eval-windows must be at least 1");
    fs::create_dir_all(&plan.out)
        .with_context(|| format!("cannot create {}", plan.out.display()))?;
    let ckpt = checkpoint::load(checkpoint_path, device)?;
    // The same settings as the run being resumed, or a clear refusal; paths compared in
    // canonical form, so `d` and `./d` are one directory.
    let canonical = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let mut identity = plan.clone();
    // Every stage works under the canonical directory, so the configs it saves (data.path)
    // match however the directory is spelled on a rerun.
    let out = canonical(&plan.out);
    identity.out = out.clone();
    identity.data = plan.data.as_deref().map(canonical);
    let settings = serde_json::json!({
        "checkpoint": canonical(&ckpt.dir).display().to_string(),
        "plan": identity,
    });
    let settings_path = out.join("distill.json");
    match fs::read_to_string(&settings_path) {
        Ok(old)
            if serde_json::from_str::<serde_json::Value>(&old).ok() != Some(settings.clone()) =>
        {
            bail!(
                "{} holds a distillation with other settings; remove it or choose another --out",
                plan.out.display()
            )
        }
        Ok(_) => {}
        Err(_) => write_atomic(
            &settings_path,
            serde_json::to_string_pretty(&settings)?.as_bytes(),
        )?,
    }
    // Finished earlier with these settings: the report stands.
    let report_path = out.join("report.json");
    if let Ok(text) = fs::read_to_string(&report_path) {
        if let Ok(done) = serde_json::from_str::<DistillReport>(&text) {
            return Ok(done);
        }
    }
    let tok = TextTokenizer::from_json(&ckpt.tokenizer_json)?;
    let mut source_cfg = ckpt.config.clone();
    if let Some(d) = &plan.data {
        source_cfg.data.path = d.display().to_string();
    }
    let data = load_data(&source_cfg, Some(tok.clone()))?;
    let teacher = ckpt.open(plan.use_ema)?;
    let rows = continuations(
        &teacher.model,
        &tok,
        &data.train,
        &plan.gen,
        &out.join("continuations.jsonl"),
        plan.progress,
    )?;
    drop(teacher);
    let (corpus, share) = mixed(&data, &rows, plan.gen.mix)?;
    let data_dir = out.join("data");
    corpus.save(&data_dir)?;
    let mut sets = plan.sets.clone();
    sets.push(format!("train.objective=\"{}\"", plan.objective.name()));
    sets.push(format!("train.max_steps={}", plan.max_steps));
    sets.push(format!("data.path={:?}", data_dir.display().to_string()));
    let start = RunStart::Init {
        from: ckpt.dir.clone(),
        preset: None,
        ema: plan.use_ema,
    };
    let cfg = start.config(Some(&ckpt.config), &sets)?;
    let source = ckpt.dir.display().to_string();
    // The real text's validation split is the mixed corpus's too. Scored with f32 weights:
    // a quantized teacher's blocks decode fast on the host backend but run whole windows
    // through candle's quantized products many times slower.
    let before = {
        let scorer = ckpt.open_as(plan.use_ema, Precision::F32)?;
        real_text_bpb(&scorer.model, &cfg, &data, plan.eval_windows)?
    };
    let run_dir = out.join("run");
    let begin = start.begin(Some(ckpt), Some(&run_dir), device)?;
    let corpus = load_data(&cfg, begin.tokenizer()?)?;
    let mut trainer = begin.trainer(cfg.clone(), &corpus, device)?;
    let summary = trainer.run(&run_dir, plan.progress)?;
    if summary.interrupted {
        bail!("interrupted at step {}; rerun to resume", summary.steps);
    }
    let after = real_text_bpb(&trainer.eval_model()?, &cfg, &corpus, plan.eval_windows)?;
    let report = DistillReport {
        checkpoint: source,
        rows: rows.len(),
        self_tokens: rows.iter().map(|r| r.len()).sum(),
        self_share: share,
        steps: summary.steps,
        objective: plan.objective.name().to_string(),
        bpb_before: before,
        bpb_after: after,
        run: run_dir.display().to_string(),
    };
    write_atomic(
        &report_path,
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_lines_are_dropped_and_the_file_cut_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        let good = serde_json::to_string(&Chunk {
            chunk: 0,
            rows: vec![vec![1, 2], vec![3]],
        })
        .unwrap();
        fs::write(&path, format!("{good}\n{{\"chunk\": 1, \"ro")).unwrap();
        let chunks = read_chunks(&path, &|_| 2).unwrap();
        assert_eq!(chunks.len(), 1);
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{good}\n"));
        // A chunk of the wrong size (a corrupted line) is not reused either.
        assert!(read_chunks(&path, &|_| 3).unwrap().is_empty());
    }
}
