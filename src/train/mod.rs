//! The one trainer every objective shares: batches → objective.corrupt → model → loss →
//! AdamW step (+ clipping, accumulation, EMA), periodic validation and atomic checkpoints.

pub mod batches;
pub mod distill;
pub mod optim;
pub mod start;

/// Defaults of a run that starts from a checkpoint's weights (`--init`, self-distillation,
/// adaptation): a lower peak learning rate and a shorter warm-up than from scratch; the
/// user's `--set` comes after them.
pub const FINE_TUNE_SETS: [&str; 2] = ["train.lr=3e-4", "train.warmup_steps=50"];

use crate::checkpoint::{self, Checkpoint, TrainState, FORMAT_VERSION};
use crate::config::{ComputeDtype, Config, DType as WeightDType};
use crate::data::{eval_windows, Prepared};
use crate::dist::{self, Collective};
use crate::eval;
use crate::model::{Params, Transformer};
use crate::objective::{self, Objective};
use crate::runtime::rng::{rng, Stream};
use crate::runtime::stop_requested;
use anyhow::{bail, Context, Result};
use batches::Batches;
use candle_core::{DType, Device, Tensor};
use optim::{clip_scale, grad_norm, learning_rate, AdamW, Ema};
use serde::Serialize;
pub use start::RunStart;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct StepMetrics {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// The validation score in bits per byte of text (for ARM and CARD the exact AR
    /// likelihood, so an adaptation that hurts AR quality shows here at once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_bits_per_byte: Option<f64>,
    pub elapsed_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub final_loss: f64,
    pub val_loss: Option<f64>,
    pub tokens_per_s: f64,
    pub checkpoint: PathBuf,
    pub interrupted: bool,
}

pub struct Trainer<'a> {
    pub cfg: Config,
    pub params: Params,
    pub model: Transformer,
    pub objective: Box<dyn Objective>,
    pub opt: AdamW,
    pub ema: Option<Ema>,
    pub state: TrainState,
    /// The checkpoint files a run carries forward (an imported model's chat template and
    /// provenance), written into each of its checkpoints.
    pub extra: std::collections::BTreeMap<String, String>,
    data: &'a Prepared,
    batches: Batches<'a>,
    /// The ranks this run trains with ([`dist::Single`] in one process).
    comm: Rc<dyn Collective>,
    /// Seconds the last step spent summing gradients over ranks.
    pub last_comm_s: f64,
}

/// Gradients are summed over ranks in buckets of this many elements (16 MiB of f32).
const BUCKET: usize = 4 << 20;

/// `compute` made concrete for a run on `device` with `weights`: `auto` becomes bf16 where
/// this CPU's bf16 products measure faster than its f32 ones and the weights are f32, else f32.
pub fn resolved_compute(
    compute: ComputeDtype,
    weights: WeightDType,
    device: &Device,
) -> ComputeDtype {
    compute.resolved(weights == WeightDType::F32, || {
        device.is_cpu() && crate::kernels::bf16::pays_over_f32()
    })
}

impl<'a> Trainer<'a> {
    /// A fresh run (model vocabulary taken from the tokenizer).
    pub fn new(mut cfg: Config, data: &'a Prepared, device: &Device) -> Result<Self> {
        cfg.model.vocab_size = data.tokenizer.vocab_size();
        Self::with_model_vocab(cfg, data, device)
    }

    /// A fresh run keeping cfg.model.vocab_size (≥ the tokenizer's; benchmarks use it to
    /// keep a preset's exact shape on a smaller corpus).
    pub fn with_model_vocab(cfg: Config, data: &'a Prepared, device: &Device) -> Result<Self> {
        Self::fresh(cfg, data, device, None)
    }

    /// A fresh run — step 0, a new optimizer and learning-rate schedule — starting from a
    /// checkpoint's weights instead of a random init (fine-tuning, self-distillation,
    /// adaptation). `cfg.model` must be the checkpoint's and `data` tokenized with its
    /// tokenizer; `weights` are the ones to start from (raw or EMA).
    pub fn from_checkpoint(
        mut cfg: Config,
        ckpt: &Checkpoint,
        weights: &HashMap<String, Tensor>,
        data: &'a Prepared,
    ) -> Result<Self> {
        if ckpt.state.tokenizer_hash != data.tokenizer.hash() {
            bail!(
                "cannot start from {}: the data was prepared with another tokenizer than the checkpoint's (prepare it with --tokenizer from the checkpoint, or use the embedded corpus)",
                ckpt.dir.display()
            );
        }
        cfg.model = ckpt.config.model.clone();
        let device = weights
            .values()
            .next()
            .context("checkpoint has no weights")?
            .device()
            .clone();
        let dtype = cfg.train.dtype.candle();
        let cast: HashMap<String, Tensor> = weights
            .iter()
            .map(|(n, t)| Ok((n.clone(), t.to_dtype(dtype)?)))
            .collect::<Result<_>>()?;
        let mut t = Self::fresh(cfg, data, &device, Some(&cast))?;
        t.state.init_from = Some(ckpt.dir.display().to_string());
        t.extra = ckpt.extra.clone();
        Ok(t)
    }

    fn fresh(
        cfg: Config,
        data: &'a Prepared,
        device: &Device,
        weights: Option<&HashMap<String, Tensor>>,
    ) -> Result<Self> {
        if cfg.model.vocab_size < data.tokenizer.vocab_size() {
            bail!(
                "model vocab {} is smaller than the tokenizer's {}",
                cfg.model.vocab_size,
                data.tokenizer.vocab_size()
            );
        }
        cfg.validate()?;
        let dtype = cfg.train.dtype.candle();
        let params = match weights {
            Some(w) => Params::from_map(&cfg.model, w)?,
            None => Params::init(&cfg.model, dtype, device, cfg.train.seed)?,
        };
        let state = TrainState {
            format_version: FORMAT_VERSION,
            step: 0,
            data_cursor: 0,
            tokens_seen: 0,
            seed: cfg.train.seed,
            tokenizer_hash: data.tokenizer.hash(),
            last_val_loss: None,
            elapsed_s: 0.0,
            init_from: None,
            data_sha256: Some(data.fingerprint()),
        };
        let opt = AdamW::new(&params, &cfg.train)?;
        let ema = if cfg.train.ema {
            Some(Ema::new(&params, cfg.train.ema_decay)?)
        } else {
            None
        };
        Self::assemble(cfg, params, opt, ema, state, data)
    }

    /// Continue a checkpoint exactly. `cfg` may differ from the saved config only in
    /// run-length and cadence fields (max_steps, eval/ckpt/log intervals).
    pub fn resume(mut cfg: Config, ckpt: Checkpoint, data: &'a Prepared) -> Result<Self> {
        // `auto` asks for what the run decided when it started, not a new measurement.
        if cfg.train.compute == ComputeDtype::Auto {
            cfg.train.compute = ckpt.config.train.compute;
        }
        let mut saved = ckpt.config.clone();
        let mut wanted = cfg.clone();
        wanted.model.vocab_size = saved.model.vocab_size;
        for c in [&mut saved, &mut wanted] {
            c.train.max_steps = 0;
            c.train.eval_every = 0;
            c.train.ckpt_every = 0;
            c.train.log_every = 0;
        }
        if saved != wanted {
            bail!(
                "cannot resume {}: its config differs from the requested one in: {}",
                ckpt.dir.display(),
                saved.diff(&wanted).join(", ")
            );
        }
        if ckpt.state.tokenizer_hash != data.tokenizer.hash() {
            bail!(
                "cannot resume {}: it was trained with another tokenizer than the data's",
                ckpt.dir.display()
            );
        }
        let data_now = data.fingerprint();
        if let Some(saved) = ckpt.state.data_sha256.as_ref().filter(|s| **s != data_now) {
            bail!(
                "cannot resume {}: the data differs from the data it was trained on (fingerprint {} then, {} now); resume on the same data, or start a new run with another --out",
                ckpt.dir.display(),
                &saved[..saved.len().min(12)],
                &data_now[..12]
            );
        }
        let mut cfg = cfg;
        cfg.model = ckpt.config.model.clone();
        let optim = ckpt
            .optim
            .as_ref()
            .context("checkpoint has no optimizer state; it cannot be resumed")?;
        let params = Params::from_map(&cfg.model, &ckpt.weights)?;
        let get = |prefix: &str| -> Result<Vec<Tensor>> {
            params
                .names
                .iter()
                .map(|n| {
                    optim
                        .get(&format!("{prefix}.{n}"))
                        .cloned()
                        .with_context(|| format!("optimizer state lacks {prefix}.{n}"))
                })
                .collect()
        };
        let opt = AdamW::with_state(&params, &cfg.train, get("m")?, get("v")?, ckpt.state.step)?;
        let ema = match (&ckpt.ema, cfg.train.ema) {
            (Some(map), true) => Some(Ema {
                weights: params
                    .names
                    .iter()
                    .map(|n| {
                        map.get(n)
                            .cloned()
                            .with_context(|| format!("EMA lacks {n}"))
                    })
                    .collect::<Result<_>>()?,
                decay: cfg.train.ema_decay,
            }),
            _ => None,
        };
        let mut t = Self::assemble(cfg, params, opt, ema, ckpt.state, data)?;
        t.extra = ckpt.extra;
        Ok(t)
    }

    fn assemble(
        mut cfg: Config,
        params: Params,
        opt: AdamW,
        ema: Option<Ema>,
        state: TrainState,
        data: &'a Prepared,
    ) -> Result<Self> {
        // `auto` is decided here, once, and kept in the config every checkpoint saves.
        let device = params.vars[0].device();
        cfg.train.compute = resolved_compute(cfg.train.compute, cfg.train.dtype, device);
        let mut model = Transformer::from_params(&cfg.model, &params)?;
        model.compute = cfg.train.compute;
        let objective = objective::build(&cfg, data.tokenizer.mask_id());
        let batches = Batches::new(&data.train, cfg.train.seq_len, cfg.train.seed)?;
        Ok(Self {
            cfg,
            params,
            model,
            objective,
            opt,
            ema,
            state,
            extra: Default::default(),
            data,
            batches,
            comm: Rc::new(dist::Single),
            last_comm_s: 0.0,
        })
    }

    /// Train data-parallel over `comm`'s ranks: each takes its slice of every global batch
    /// (train.batch_size rows, which must divide evenly), gradients are summed over ranks,
    /// and only rank 0 writes checkpoints and metrics. The ranks' weights must agree.
    pub fn distributed(mut self, comm: Rc<dyn Collective>) -> Result<Self> {
        dist::shard(self.cfg.train.batch_size, comm.as_ref())?;
        let tensors: Vec<Tensor> = self
            .params
            .vars
            .iter()
            .map(|v| v.as_tensor().clone())
            .collect();
        dist::check_same_weights(comm.as_ref(), &tensors)?;
        self.comm = comm;
        Ok(self)
    }

    /// Rank 0 (the only rank, in one process) writes checkpoints, metrics and progress.
    pub fn is_leader(&self) -> bool {
        self.comm.rank() == 0
    }

    /// One optimizer step over grad_accum micro-batches; returns (loss, grad norm).
    pub fn step(&mut self) -> Result<(f64, f64)> {
        let tc = &self.cfg.train;
        let accum = tc.grad_accum;
        let mut grads: Option<Vec<Tensor>> = None;
        let mut loss_sum = 0.0;
        for micro in 0..accum {
            let x0 = self
                .batches
                .next(&mut self.state.data_cursor, tc.batch_size);
            let index = (self.state.step * accum + micro) as u64;
            let mut rng = rng(tc.seed, Stream::TrainNoise, index);
            let nb = self
                .objective
                .corrupt(&x0, tc.batch_size, tc.seq_len, None, &mut rng);
            // Every rank draws the whole batch's noise (cheap, and the same as one process
            // would) and trains on its own rows; the global normaliser makes the ranks'
            // losses sum to the whole batch's.
            let nb = match self.comm.world() {
                1 => nb,
                _ => nb.rows(dist::shard(tc.batch_size, self.comm.as_ref())?),
            };
            let loss = self.objective.loss(&self.model, &nb)?;
            loss_sum += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let store = (loss / accum as f64)?.backward()?;
            let g: Vec<Tensor> = self
                .params
                .vars
                .iter()
                .zip(&self.params.names)
                .map(|(v, n)| {
                    store
                        .get(v.as_tensor())
                        .cloned()
                        .with_context(|| format!("parameter {n} received no gradient"))
                })
                .collect::<Result<_>>()?;
            grads = Some(match grads {
                None => g,
                Some(acc) => acc
                    .iter()
                    .zip(&g)
                    .map(|(a, b)| a + b)
                    .collect::<candle_core::Result<_>>()?,
            });
        }
        let mut grads = grads.expect("grad_accum >= 1");
        self.last_comm_s = dist::sum_gradients(self.comm.as_ref(), &mut grads, BUCKET)?;
        if self.comm.world() > 1 {
            let mut l = [loss_sum];
            self.comm.sum_f64(&mut l)?;
            loss_sum = l[0];
        }
        // Frozen parameters take no step, so their gradients must not set the clipping norm.
        for (g, &frozen) in grads.iter_mut().zip(&self.opt.frozen) {
            if frozen {
                *g = g.zeros_like()?;
            }
        }
        let norm = grad_norm(&grads)?;
        let lr = learning_rate(tc, self.state.step);
        let scale = clip_scale(norm, tc.grad_clip);
        self.opt.step(&self.params, &grads, lr, tc, scale)?;
        self.state.step += 1;
        if let Some(ema) = &mut self.ema {
            ema.update(&self.params, self.state.step)?;
        }
        self.state.tokens_seen += self.cfg.tokens_per_step() as u64;
        let loss = loss_sum / accum as f64;
        if !loss.is_finite() {
            bail!(
                "loss became {loss} at step {}; lower train.lr",
                self.state.step
            );
        }
        Ok((loss, norm))
    }

    /// The model evaluation uses: EMA weights when kept, else the current weights (untracked).
    pub fn eval_model(&self) -> Result<Transformer> {
        Ok(Transformer::from_tensors(&self.cfg.model, |n| {
            self.eval_tensor(n)
        })?)
    }

    /// Weight `name` as evaluation uses it: the EMA where kept, else the current weight.
    pub fn eval_tensor(&self, name: &str) -> candle_core::Result<Tensor> {
        let i = self
            .params
            .names
            .iter()
            .position(|x| x == name)
            .ok_or_else(|| candle_core::Error::Msg(format!("no parameter {name}")))?;
        Ok(match &self.ema {
            Some(e) => e.weights[i].clone(),
            None => self.params.vars[i].as_tensor().detach(),
        })
    }

    /// Validation loss over eval_batches batches of the validation split, scored as the
    /// objective says: the exact AR likelihood (t = 0) for ARM and CARD, the NELBO bound for
    /// the diffusion baselines.
    pub fn validate(&self) -> Result<f64> {
        let tc = &self.cfg.train;
        let windows = eval_windows(
            &self.data.val,
            tc.seq_len,
            Some(tc.eval_batches * tc.batch_size),
        );
        if windows.is_empty() {
            bail!("the validation split is empty");
        }
        // A bound takes two seeded noise draws per window: cheap, and the same every time.
        let budget = eval::BoundBudget {
            min_samples: 2,
            max_samples: 2,
            target_se: 0.0,
        };
        let model = self.eval_model()?;
        let objective = self.objective.as_ref();
        let score = eval::held_out(&model, objective, &windows, tc.batch_size, budget, tc.seed)?;
        Ok(score.nats_per_token)
    }

    pub fn checkpoint(&self) -> Result<Checkpoint> {
        let weights = self.params.to_map()?;
        let ema = self.ema.as_ref().map(|e| {
            self.params
                .names
                .iter()
                .cloned()
                .zip(e.weights.iter().cloned())
                .collect::<HashMap<_, _>>()
        });
        let mut optim = HashMap::new();
        for (i, n) in self.params.names.iter().enumerate() {
            optim.insert(format!("m.{n}"), self.opt.m[i].clone());
            optim.insert(format!("v.{n}"), self.opt.v[i].clone());
        }
        Ok(Checkpoint {
            dir: PathBuf::new(),
            config: self.cfg.clone(),
            state: self.state.clone(),
            tokenizer_json: self.data.tokenizer.to_json()?,
            weights,
            ema,
            optim: Some(optim),
            quantized: None,
            device: self.params.vars[0].device().clone(),
            extra: self.extra.clone(),
        })
    }

    /// Train to max_steps, logging to `out/metrics.jsonl` and checkpointing into `out` (rank 0
    /// alone writes there and validates; the other ranks only train).
    pub fn run(&mut self, out: &Path, progress: bool) -> Result<TrainSummary> {
        let leader = self.is_leader();
        let mut _lock = None;
        let mut metrics = None;
        if leader {
            std::fs::create_dir_all(out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            _lock = Some(checkpoint::lock_run(out)?);
            let metrics_path = out.join("metrics.jsonl");
            truncate_metrics(&metrics_path, self.state.step)?;
            metrics = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&metrics_path)?,
            );
        }
        let mut log = |line: &str| -> Result<()> {
            if let Some(m) = metrics.as_mut() {
                writeln!(m, "{line}")?;
                m.flush()?;
            }
            Ok(())
        };
        let tc = self.cfg.train.clone();
        let bar = crate::runtime::progress_bar(
            tc.max_steps as u64,
            progress && leader,
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        );
        bar.set_position(self.state.step as u64);
        let start = Instant::now();
        let elapsed0 = self.state.elapsed_s;
        let step0 = self.state.step;
        let (mut last_loss, mut tps) = (f64::NAN, 0.0);
        let mut ckpt_dir = out.to_path_buf();
        let mut interrupted = false;
        if leader && self.state.step == 0 && self.state.init_from.is_some() && tc.eval_every > 0 {
            // The starting checkpoint's score, the reference the run's curve is read against.
            let v = self.validate()?;
            let bpb = eval::val_bits_per_byte(v, self.data);
            let line = serde_json::json!({"step": 0, "val_loss": v, "val_bits_per_byte": bpb, "elapsed_s": 0.0});
            log(&line.to_string())?;
            bar.println(format!(
                "held-out before training: {v:.4} nats/token, {bpb:.4} bits/byte"
            ));
        }
        while self.state.step < tc.max_steps {
            let t0 = Instant::now();
            let (loss, norm) = self.step()?;
            let dt = t0.elapsed().as_secs_f64();
            last_loss = loss;
            tps = self.cfg.tokens_per_step() as f64 / dt;
            self.state.elapsed_s = elapsed0 + start.elapsed().as_secs_f64();
            let step = self.state.step;
            let done = step == tc.max_steps;
            let mut val_loss = None;
            if leader && ((tc.eval_every > 0 && step.is_multiple_of(tc.eval_every)) || done) {
                let v = self.validate()?;
                self.state.last_val_loss = Some(v);
                val_loss = Some(v);
            }
            if val_loss.is_some() || (tc.log_every > 0 && step.is_multiple_of(tc.log_every)) {
                let m = StepMetrics {
                    step,
                    loss,
                    lr: learning_rate(&tc, step - 1),
                    grad_norm: norm,
                    tokens_per_s: tps,
                    val_loss,
                    val_bits_per_byte: val_loss.map(|v| eval::val_bits_per_byte(v, self.data)),
                    elapsed_s: self.state.elapsed_s,
                };
                log(&serde_json::to_string(&m)?)?;
            }
            let val_msg = self.state.last_val_loss.map_or(String::new(), |v| {
                let bpb = eval::val_bits_per_byte(v, self.data);
                format!("  val {v:.3} ({bpb:.3} bits/byte)")
            });
            bar.set_message(format!("loss {loss:.3}{val_msg}  {tps:.0} tok/s"));
            bar.set_position(step as u64);
            // Every rank stops after the same step when any of them was signalled.
            let stop = dist::any(self.comm.as_ref(), stop_requested())?;
            let save = done || stop || (tc.ckpt_every > 0 && step.is_multiple_of(tc.ckpt_every));
            if save && leader {
                ckpt_dir = checkpoint::save(out, &self.checkpoint()?)?;
            }
            if stop {
                interrupted = true;
                bar.println(format!("interrupted: checkpoint saved at step {step}"));
                break;
            }
        }
        bar.finish_and_clear();
        if self.state.step == step0 {
            ckpt_dir = checkpoint::resolve(out).unwrap_or(ckpt_dir);
        }
        Ok(TrainSummary {
            steps: self.state.step,
            final_loss: last_loss,
            val_loss: self.state.last_val_loss,
            tokens_per_s: tps,
            checkpoint: ckpt_dir,
            interrupted,
        })
    }
}

/// Drop metric lines past `step` (written by a run killed after its last checkpoint); a run
/// at step 0 starts a fresh file.
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    if step == 0 {
        return crate::runtime::fsutil::write_atomic(path, b"");
    }
    let text = std::fs::read_to_string(path)?;
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    crate::runtime::fsutil::write_atomic(path, kept.as_bytes())
}
