//! Training throughput of objectives side by side in one process, against a matmul peak
//! measured on the same machine.

use super::{matmul_peak_gflops, median, peak_rss_mb, rss_mb};
use crate::checkpoint::{self, Checkpoint};
use crate::config::{ComputeDtype, Config, ObjectiveKind};
use crate::data::{Prepared, TextTokenizer};
use crate::train::{resolved_compute, Trainer};
use anyhow::Result;
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// A checkpoint whose weights (its EMA where it kept one) every benchmarked trainer starts
/// from (`bench train --from`), with its model shape and tokenizer.
pub struct StartFrom {
    pub ckpt: Checkpoint,
    weights: HashMap<String, Tensor>,
}

impl StartFrom {
    pub fn open(path: &Path, device: &Device) -> Result<Self> {
        let ckpt = checkpoint::load(path, device)?;
        let weights = ckpt.pick(true)?.1.into_owned();
        Ok(Self { ckpt, weights })
    }

    pub fn tokenizer(&self) -> Result<TextTokenizer> {
        TextTokenizer::from_json(&self.ckpt.tokenizer_json)
    }
}

/// A trainer of `cfg` from random weights, or from `from`'s.
fn trainer<'a>(
    cfg: Config,
    data: &'a Prepared,
    device: &Device,
    from: Option<&StartFrom>,
) -> Result<Trainer<'a>> {
    match from {
        None => Trainer::with_model_vocab(cfg, data, device),
        Some(f) => Trainer::from_checkpoint(cfg, &f.ckpt, &f.weights, data),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainBench {
    pub objective: String,
    /// What the linear layers computed in (`train.compute`).
    pub compute: String,
    pub params: usize,
    pub tokens_per_step: usize,
    /// Median over the timed steps.
    pub step_time_s: f64,
    /// Real tokens (batch × seq_len) per second.
    pub tokens_per_s: f64,
    /// Peak resident memory (MiB): in-process high-water mark after this objective's warm-up;
    /// `card bench train` replaces it with a measurement in a process of its own.
    pub peak_rss_mb: f64,
    /// Resident growth (MiB) over `steps` steps after warm-up + `steps` steps, measured in a
    /// child process; a leak per step shows here.
    pub rss_growth_mb: Option<f64>,
    /// Model FLOPs per second over the measured matmul peak of this variant's compute type.
    pub mfu: f64,
    pub matmul_peak_gflops: f64,
    pub ratio_to_card: Option<f64>,
}

/// Time `steps` training steps (after `warmup`) for each (objective, compute) variant on the
/// same model shape, batch and data, in this process, each from random weights or `from`'s.
#[allow(clippy::too_many_arguments)]
pub fn bench_train(
    cfg: &Config,
    data: &Prepared,
    from: Option<&StartFrom>,
    variants: &[(ObjectiveKind, ComputeDtype)],
    warmup: usize,
    steps: usize,
    device: &Device,
    progress: impl Fn(&str),
) -> Result<Vec<TrainBench>> {
    // `auto` measured here, as a training run would decide it.
    let variants: &[(ObjectiveKind, ComputeDtype)] = &variants
        .iter()
        .map(|&(o, c)| (o, resolved_compute(c, cfg.train.dtype, device)))
        .collect::<Vec<_>>();
    progress("measuring the matmul peak");
    let peak_f32 = matmul_peak_gflops(device, 1024, 7, false)?;
    let peak_bf16 = if variants.iter().any(|v| v.1 == ComputeDtype::Bf16) {
        matmul_peak_gflops(device, 1024, 7, true)?
    } else {
        f64::NAN
    };
    // Phase 1, one objective at a time: build and warm up. The memory recorded is this
    // process's high-water mark so far (exact for the first objective; the CLI measures each
    // objective in a process of its own).
    let mut trainers = Vec::new();
    let mut peaks = Vec::new();
    let label = |(o, c): (ObjectiveKind, ComputeDtype)| match c {
        ComputeDtype::F32 => o.name().to_string(),
        other => format!("{} ({})", o.name(), other.name()),
    };
    for &(obj, compute) in variants {
        progress(&format!("{}: warm-up", label((obj, compute))));
        let mut c = cfg.clone();
        c.train.objective = obj;
        c.train.compute = compute;
        c.train.max_steps = warmup + steps;
        let mut trainer = trainer(c, data, device, from)?;
        for _ in 0..warmup.max(1) {
            trainer.step()?;
        }
        peaks.push(peak_rss_mb());
        trainers.push(trainer);
    }
    // Phase 2: timed steps interleaved round-robin, so a noisy machine slows every objective
    // alike and the ratios stay meaningful.
    let mut times = vec![Vec::with_capacity(steps); variants.len()];
    for i in 0..steps {
        for (o, trainer) in trainers.iter_mut().enumerate() {
            progress(&format!("{}: step {}/{}", label(variants[o]), i + 1, steps));
            let t = Instant::now();
            trainer.step()?;
            device.synchronize()?;
            times[o].push(t.elapsed().as_secs_f64());
        }
    }
    let mut out: Vec<TrainBench> = Vec::new();
    for (o, trainer) in trainers.iter().enumerate() {
        let c = &trainer.cfg;
        let step_time = median(&mut times[o]);
        let tokens = c.tokens_per_step();
        let flops = c.model.train_flops_per_token(c.train.seq_len) * tokens as f64;
        let peak = match variants[o].1 {
            ComputeDtype::Bf16 => peak_bf16,
            _ => peak_f32,
        };
        out.push(TrainBench {
            objective: variants[o].0.name().to_string(),
            compute: variants[o].1.name().into(),
            params: trainer.params.count(),
            tokens_per_step: tokens,
            step_time_s: step_time,
            tokens_per_s: tokens as f64 / step_time,
            peak_rss_mb: peaks[o],
            rss_growth_mb: None,
            mfu: flops / step_time / (peak * 1e9),
            matmul_peak_gflops: peak,
            ratio_to_card: None,
        });
    }
    if let Some(card) = out
        .iter()
        .find(|b| b.objective == "card")
        .map(|b| b.step_time_s)
    {
        for b in &mut out {
            b.ratio_to_card = Some(b.step_time_s / card);
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct MemoryProbe {
    /// Resident-set high-water mark of the whole run (MiB).
    pub peak_rss_mb: f64,
    /// Resident memory after warm-up + `steps` steps, and after `steps` more (MiB).
    pub rss_after_warmup_mb: f64,
    pub rss_end_mb: f64,
    /// Growth over each half of the watched steps (MiB).
    pub rss_growth_halves_mb: [f64; 2],
    /// Sustained growth over the watched steps: the smaller half's growth, doubled. Memory
    /// kept alive per step grows in both halves; a one-off rise (an allocator heap a
    /// starved thread first touches late) shows in one half only.
    pub rss_growth_mb: f64,
    pub steps: usize,
}

/// One objective's memory in this process: warm-up and `steps` steps, then `steps` more,
/// reading the resident set before, halfway through and after those (run it in a fresh
/// process so nothing else shares the heap).
pub fn memory_probe(
    cfg: &Config,
    data: &Prepared,
    from: Option<&StartFrom>,
    objective: ObjectiveKind,
    warmup: usize,
    steps: usize,
    device: &Device,
) -> Result<MemoryProbe> {
    let mut c = cfg.clone();
    c.train.objective = objective;
    c.train.max_steps = warmup.max(1) + 2 * steps;
    let mut trainer = trainer(c, data, device, from)?;
    // The allocator's pools fill over the first steps; growth is read over the second half.
    for _ in 0..warmup.max(1) + steps {
        trainer.step()?;
    }
    let start = rss_mb();
    let half = steps / 2;
    for _ in 0..half {
        trainer.step()?;
    }
    let middle = rss_mb();
    for _ in half..steps {
        trainer.step()?;
    }
    let end = rss_mb();
    let halves = [middle - start, end - middle];
    Ok(MemoryProbe {
        peak_rss_mb: peak_rss_mb(),
        rss_after_warmup_mb: start,
        rss_end_mb: end,
        rss_growth_halves_mb: halves,
        rss_growth_mb: sustained_growth(halves),
        steps,
    })
}

/// Growth that went on through both halves of a window, scaled to the whole window.
fn sustained_growth([a, b]: [f64; 2]) -> f64 {
    if a.signum() != b.signum() {
        return 0.0;
    }
    2.0 * if a.abs() < b.abs() { a } else { b }
}

/// One data-parallel configuration's training throughput, as rank 0 measured it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DistBench {
    pub objective: String,
    pub backend: String,
    pub ranks: usize,
    pub threads_per_rank: usize,
    pub tokens_per_step: usize,
    /// Medians over the timed steps.
    pub step_time_s: f64,
    /// Summing gradients over ranks (including waiting for the slowest rank).
    pub comm_time_s: f64,
    pub tokens_per_s: f64,
    pub tokens_per_s_per_rank: f64,
}

/// Time `steps` data-parallel steps (after `warmup`) of one objective over `comm`'s ranks,
/// the same global batch as one process would take.
pub fn bench_distributed(
    cfg: &Config,
    data: &Prepared,
    objective: ObjectiveKind,
    warmup: usize,
    steps: usize,
    comm: std::rc::Rc<dyn crate::dist::Collective>,
    device: &Device,
) -> Result<DistBench> {
    let mut c = cfg.clone();
    c.train.objective = objective;
    c.train.max_steps = warmup + steps;
    let (ranks, backend) = (comm.world(), comm.describe());
    let mut trainer = Trainer::with_model_vocab(c, data, device)?.distributed(comm)?;
    for _ in 0..warmup.max(1) {
        trainer.step()?;
    }
    let (mut times, mut comms) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let t = Instant::now();
        trainer.step()?;
        device.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
        comms.push(trainer.last_comm_s);
    }
    let step_time = median(&mut times);
    let tokens = trainer.cfg.tokens_per_step();
    Ok(DistBench {
        objective: objective.name().to_string(),
        backend,
        ranks,
        threads_per_rank: crate::runtime::threads(),
        tokens_per_step: tokens,
        step_time_s: step_time,
        comm_time_s: median(&mut comms),
        tokens_per_s: tokens as f64 / step_time,
        tokens_per_s_per_rank: tokens as f64 / step_time / ranks as f64,
    })
}

/// `card bench train`'s table: the shape measured, then one row per variant.
pub struct TrainReport<'a> {
    /// What the model is: "preset NAME" or "from CHECKPOINT".
    pub source: &'a str,
    pub cfg: &'a Config,
    pub results: &'a [TrainBench],
    /// Whether it ran on the CPU (bf16 then names the product's path).
    pub cpu: bool,
}

impl std::fmt::Display for TrainReport<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (c, first) = (self.cfg, &self.results[0]);
        writeln!(
            f,
            "bench train: {} ({} params), batch {} x seq {} = {} tokens/step, {} threads, {}",
            self.source,
            first.params,
            c.train.batch_size,
            c.train.seq_len,
            first.tokens_per_step,
            candle_core::utils::get_num_threads(),
            peaks(self.results, self.cpu)
        )?;
        write!(f, "objective  compute  step_time_s(median)  tokens/s  peak_rss_mb  rss_growth_mb   MFU   ratio_to_card")?;
        for r in self.results {
            write!(
                f,
                "\n{:<9}  {:<7}  {:>19.4}  {:>8.0}  {:>11.0}  {:>13}  {:>4.1}%  {}",
                r.objective,
                r.compute,
                r.step_time_s,
                r.tokens_per_s,
                r.peak_rss_mb,
                r.rss_growth_mb.map_or("-".into(), |x| format!("{x:+.1}")),
                100.0 * r.mfu,
                r.ratio_to_card.map_or("-".into(), |x| format!("{x:.3}"))
            )?;
        }
        Ok(())
    }
}

/// The matmul peak each compute type's MFU is measured against, e.g. "matmul peak f32 383.6
/// GFLOP/s, bf16 (amx-bf16) 1520.2 GFLOP/s".
fn peaks(results: &[TrainBench], cpu: bool) -> String {
    let mut seen: Vec<String> = Vec::new();
    for r in results {
        let name = match r.compute.as_str() {
            "bf16" if cpu => format!("bf16 ({})", crate::kernels::bf16::Path::best().name()),
            c => c.to_string(),
        };
        let entry = format!("{name} {:.1} GFLOP/s", r.matmul_peak_gflops);
        if !seen.contains(&entry) {
            seen.push(entry);
        }
    }
    format!("matmul peak {}", seen.join(", "))
}

/// `card bench train --distributed`'s table: per objective, each rank count against the first.
pub struct DistReport<'a> {
    pub preset: &'a str,
    pub objectives: &'a [ObjectiveKind],
    pub rows: &'a [DistBench],
    /// Every rank ran on this machine, and some measurement had more than one.
    pub one_machine: bool,
}

impl std::fmt::Display for DistReport<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cores = candle_core::utils::get_num_threads();
        writeln!(
            f,
            "bench train --distributed: preset {}, {} tokens per global step, {} cores here",
            self.preset,
            self.rows.first().map_or(0, |r| r.tokens_per_step),
            cores
        )?;
        write!(f, "objective  ranks  threads/rank  step_time_s  comm_s/step  tokens/s  tokens/s/rank  speedup  efficiency")?;
        for o in self.objectives {
            let of: Vec<&DistBench> = self
                .rows
                .iter()
                .filter(|r| r.objective == o.name())
                .collect();
            let Some(base) = of.first() else { continue };
            let base_n = base.ranks as f64;
            for r in &of {
                let speedup = base.step_time_s / r.step_time_s;
                write!(
                    f,
                    "\n{:<9}  {:>5}  {:>12}  {:>11.4}  {:>11.4}  {:>8.0}  {:>13.0}  {:>6.2}x  {:>9.0}%",
                    r.objective,
                    r.ranks,
                    r.threads_per_rank,
                    r.step_time_s,
                    r.comm_time_s,
                    r.tokens_per_s,
                    r.tokens_per_s_per_rank,
                    speedup,
                    100.0 * speedup * base_n / r.ranks as f64
                )?;
            }
        }
        if self.one_machine {
            write!(f, "\nnote: every rank ran on this machine, sharing its {cores} cores, so more ranks add no compute here; comm_s/step is the cost the transport adds per step")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::sustained_growth;

    #[test]
    fn growth_counts_only_what_both_halves_show() {
        // Memory kept per step grows in both halves.
        assert_eq!(sustained_growth([3.0, 4.0]), 6.0);
        assert_eq!(sustained_growth([-2.0, -3.0]), -4.0);
        // A one-off rise in either half, or a rise then a fall, is not a leak.
        assert_eq!(sustained_growth([9.0, 0.0]), 0.0);
        assert_eq!(sustained_growth([0.0, 9.0]), 0.0);
        assert_eq!(sustained_growth([9.0, -1.0]), 0.0);
    }
}
