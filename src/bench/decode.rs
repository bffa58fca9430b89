//! Decoding speed, mechanism and quality: AR against CARD threshold settings and the
//! lossless verifier on the same model and named prompt sets, in one process. Per setting:
//! tokens/s (generated only) and its ratio to AR in the same run, tokens per forward, drafts
//! accepted per pass and acceptance by draft slot, the share of computed positions that are
//! kept, whether the output is AR's, and quality beside it (NLL under a judge, repeated
//! 4-grams, distinct-2, unigram entropy).

use super::median;
use crate::data::{prose_prefixes, Prepared, TextTokenizer, COPYING, PROBES, PROMPTS};
use crate::decode::{Decoder, DecoderSpec, GenOptions, Generation, StepTrace};
use crate::eval::quality::{continuation_nll, distinct_n, repeated_ngram_rate, unigram_entropy};
use crate::model::Transformer;
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// A named list of prompts (token ids).
#[derive(Debug, Clone)]
pub struct PromptSet {
    pub name: String,
    pub prompts: Vec<Vec<u32>>,
}

/// The prompt sets the benchmark knows: `builtin` (fixed openings), `probes` (counting,
/// lists, copying), `prose` (held-out prefixes of the validation split) and `own` (those
/// prefixes followed by the model's own greedy continuation).
pub const PROMPT_SETS: [&str; 5] = ["prose", "probes", "copying", "own", "builtin"];

pub fn prompt_set(
    name: &str,
    model: &Transformer,
    tok: &TextTokenizer,
    data: Option<&Prepared>,
) -> Result<PromptSet> {
    let text = |list: &[&str]| -> Result<Vec<Vec<u32>>> {
        list.iter().map(|p| tok.encode_prompt(p)).collect()
    };
    let prose = || -> Result<Vec<Vec<u32>>> {
        let Some(d) = data else {
            bail!("the '{name}' prompt set needs the checkpoint's corpus (its validation split), which could not be loaded");
        };
        let p = prose_prefixes(&d.val, 16, 32);
        if p.is_empty() {
            bail!("the validation split is too short for prose prefixes");
        }
        Ok(p)
    };
    let prompts = match name {
        "builtin" => text(PROMPTS)?,
        "probes" => text(PROBES)?,
        "copying" => text(&PROBES[PROBES.len() - COPYING..])?,
        "prose" => prose()?,
        "own" => {
            let prefixes = prose()?;
            let opts = GenOptions::new(32, tok);
            let g = DecoderSpec::Ar.generate(model, &prefixes, &opts, &mut |_| {})?;
            prefixes
                .into_iter()
                .zip(g.rows)
                .map(|(mut p, r)| {
                    p.extend(r.tokens);
                    p
                })
                .collect()
        }
        other => bail!(
            "unknown prompt set '{other}' (known: {})",
            PROMPT_SETS.join(", ")
        ),
    };
    Ok(PromptSet {
        name: name.to_string(),
        prompts,
    })
}

pub struct DecodeBenchConfig {
    pub lengths: Vec<usize>,
    pub batches: Vec<usize>,
    /// Settings measured against AR (which always runs first, as the baseline).
    pub decoders: Vec<DecoderSpec>,
    pub sets: Vec<PromptSet>,
    pub rounds: usize,
    /// Shrink a length that does not fit after a set's longest prompt to what does (the
    /// defaults), instead of skipping it (lengths the user asked for).
    pub fit_lengths: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecodeBench {
    pub prompt_set: String,
    /// How the model held its matrices ("f32", "q4_1+q8_0", …).
    #[serde(default)]
    pub weights: String,
    /// Rows decoded together; every prompt of the set is decoded, `batch` at a time.
    pub batch: usize,
    pub max_new_tokens: usize,
    pub decoder: String,
    /// The decoder's settings in words, e.g. "K=8 T=8 τ=0.9".
    pub setting: String,
    pub block_size: Option<usize>,
    pub step_limit: Option<usize>,
    pub threshold: Option<f64>,
    /// Generated tokens per second (median over rounds), prompt excluded.
    pub tokens_per_s: f64,
    pub tokens_per_forward: f64,
    pub forward_passes: usize,
    pub generated_tokens: usize,
    pub ratio_to_ar: f64,
    /// Verifier: drafts accepted per pass (its tokens per pass less the one AR token).
    pub drafts_accepted_per_pass: Option<f64>,
    /// Verifier: for draft slot i (1-based, index i-1), the share of passes checking slot i
    /// that accepted it.
    pub acceptance_by_slot: Vec<f64>,
    /// Generated tokens over positions computed after the prompts (AR: 1).
    pub kept_fraction: f64,
    /// Share of rows whose tokens equal AR's in the same run.
    pub same_as_ar: f64,
    pub unigram_entropy: f64,
    pub repeated_4gram_rate: f64,
    pub distinct_2: f64,
    /// Mean NLL (nats/token) of the generated text under the judge (the model itself unless
    /// another is given): a generative-perplexity proxy.
    pub judge_nll: f64,
    /// Model weight bytes read per second (forwards/s × weight bytes) over the measured copy
    /// bandwidth: how close a memory-bound decoder is to the limit.
    pub bandwidth_fraction: f64,
    /// Heap allocations per generated token over a whole generate call (setup included), and
    /// their bytes: counted by the `card` binary's allocator (0 where it is not installed).
    pub allocs_per_token: f64,
    pub alloc_bytes_per_token: f64,
}

/// STREAM-style copy bandwidth (bytes/s, read + write) of a 256 MiB f32 buffer, median of 7.
/// On the CPU both buffers are allocated and touched once, and the copy runs on all pool
/// threads, as the decoder reads its weights (timing fresh allocations would measure page
/// faults instead).
pub struct CopyBandwidth {
    device: Device,
    host: Option<(Vec<f32>, Vec<f32>)>,
}

impl CopyBandwidth {
    const N: usize = 64 * 1024 * 1024;
    const ROUNDS: usize = 7;

    pub fn new(device: &Device) -> Self {
        let host = device
            .is_cpu()
            .then(|| (vec![1f32; Self::N], vec![0f32; Self::N]));
        Self {
            device: device.clone(),
            host,
        }
    }

    /// One measurement (median of its rounds).
    pub fn sample(&mut self) -> Result<f64> {
        let bytes = 2.0 * 4.0 * Self::N as f64;
        if let Some((src, dst)) = &mut self.host {
            use rayon::prelude::*;
            let chunk = Self::N.div_ceil(8 * rayon::current_num_threads().max(1));
            let mut times: Vec<f64> = (0..Self::ROUNDS + 1)
                .map(|_| {
                    let t = Instant::now();
                    dst.par_chunks_mut(chunk)
                        .zip(src.par_chunks(chunk))
                        .for_each(|(d, s)| d.copy_from_slice(s));
                    t.elapsed().as_secs_f64()
                })
                .skip(1) // warm-up
                .collect();
            std::hint::black_box(&dst);
            return Ok(bytes / median(&mut times));
        }
        let a = Tensor::ones(Self::N, candle_core::DType::F32, &self.device)?;
        let mut times: Vec<f64> = (0..Self::ROUNDS)
            .map(|_| {
                let t = Instant::now();
                let b = a.copy()?;
                self.device.synchronize()?;
                drop(b);
                Ok(t.elapsed().as_secs_f64())
            })
            .collect::<Result<_>>()?;
        Ok(bytes / median(&mut times))
    }
}

/// What the steps of one generate call say about the mechanism: (drafts accepted per pass,
/// acceptance by slot), for the verifier.
#[derive(Default)]
struct Mechanism {
    passes: usize,
    accepted: usize,
    /// Per slot: passes that checked it, passes that accepted it.
    checked: Vec<usize>,
    kept: Vec<usize>,
}

impl Mechanism {
    fn record(&mut self, s: &StepTrace) {
        let accepted = s.committed.len().saturating_sub(1);
        let checked = accepted + s.rejected.len();
        self.passes += 1;
        self.accepted += accepted;
        if self.checked.len() < checked {
            self.checked.resize(checked, 0);
            self.kept.resize(checked, 0);
        }
        for i in 0..checked {
            self.checked[i] += 1;
            self.kept[i] += usize::from(i < accepted);
        }
    }

    fn by_slot(&self) -> Vec<f64> {
        self.checked
            .iter()
            .zip(&self.kept)
            .map(|(&c, &k)| k as f64 / c.max(1) as f64)
            .collect()
    }
}

/// (unigram entropy, repeated 4-grams, distinct-2, judge NLL), means over rows.
fn quality(
    judge: (&Transformer, &TextTokenizer),
    tok: &TextTokenizer,
    prompts: &[Vec<u32>],
    g: &Generation,
) -> Result<[f64; 4]> {
    let n = g.rows.len() as f64;
    let same_tokenizer = judge.1.hash() == tok.hash();
    let mut q = [0.0; 4];
    for (p, r) in prompts.iter().zip(&g.rows) {
        q[0] += unigram_entropy(&r.tokens);
        q[1] += repeated_ngram_rate(&r.tokens, 4);
        q[2] += distinct_n(&r.tokens, 2);
        // A judge with another tokenizer reads the text, re-encoded.
        let x = if same_tokenizer {
            continuation_nll(judge.0, p, &r.tokens)?
        } else {
            let (pt, ct) = (
                judge.1.encode(&tok.decode(p)?)?,
                judge.1.encode(&tok.decode(&r.tokens)?)?,
            );
            continuation_nll(judge.0, &pt, &ct)?
        };
        q[3] += if x.is_finite() { x } else { 0.0 };
    }
    Ok(q.map(|x| x / n))
}

/// `prompts` decoded `batch` rows at a time, as one generation: rows in order, passes, time
/// and computed positions summed.
fn generate_all(
    d: &DecoderSpec,
    model: &Transformer,
    prompts: &[Vec<u32>],
    batch: usize,
    opts: &GenOptions,
    mech: &mut Mechanism,
) -> Result<Generation> {
    let mut all: Option<Generation> = None;
    for group in prompts.chunks(batch) {
        let g = d.generate(model, group, opts, &mut |s| mech.record(s))?;
        match &mut all {
            None => all = Some(g),
            Some(a) => {
                a.rows.extend(g.rows);
                a.forward_passes += g.forward_passes;
                a.elapsed_s += g.elapsed_s;
                a.computed_tokens += g.computed_tokens;
            }
        }
    }
    Ok(all.expect("at least one batch"))
}

/// Every setting of `cfg` on `model`, AR first as the baseline, per prompt set, batch size and
/// length; and the copy bandwidth (bytes/s) the rows' `bandwidth_fraction` is measured against.
pub fn bench_decode(
    model: &Transformer,
    tok: &TextTokenizer,
    judge: Option<(&Transformer, &TextTokenizer)>,
    cfg: &DecodeBenchConfig,
    progress: impl Fn(&str),
) -> Result<(Vec<DecodeBench>, f64)> {
    let judge = judge.unwrap_or((model, tok));
    progress("measuring copy bandwidth");
    // Memory bandwidth on a shared machine drifts: it is sampled again after every round and
    // the median of all samples is the reference.
    let mut stream = CopyBandwidth::new(model.device());
    let mut bandwidths = vec![stream.sample()?];
    let decoders = with_ar_first(&cfg.decoders);
    let mut out = Vec::new();
    // Forward passes per second of each round, per row of `out`.
    let mut forward_rates: Vec<Vec<f64>> = Vec::new();
    for set in &cfg.sets {
        for &batch in &cfg.batches {
            let prompts = batched(set, batch);
            let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
            for &len in &cfg.lengths {
                let len = fitted_length(cfg, model, len, longest);
                if len == 0 || longest + len > model.cfg.max_seq_len {
                    progress(&format!(
                        "skipping {}: length {len} is beyond the model's context",
                        set.name
                    ));
                    continue;
                }
                let case = Case {
                    set: &set.name,
                    prompts: &prompts,
                    batch,
                    len,
                };
                let mut runs = measure(
                    model,
                    tok,
                    &decoders,
                    &case,
                    cfg.rounds,
                    &mut || {
                        bandwidths.push(stream.sample()?);
                        Ok(())
                    },
                    &progress,
                )?;
                let ar_tps = median(&mut runs[0].tokens_per_s);
                let ar_tokens = runs[0].tokens();
                for (d, run) in decoders.iter().zip(&mut runs) {
                    forward_rates.push(std::mem::take(&mut run.forwards_per_s));
                    let ar = (ar_tps, ar_tokens.as_slice());
                    out.push(row(d, run, &case, (model, tok), judge, ar)?);
                }
            }
        }
    }
    if out.is_empty() {
        bail!(
            "nothing measured: every prompt set's longest prompt plus the generation length exceeds the model's context of {} (give shorter --lengths)",
            model.cfg.max_seq_len
        );
    }
    let bandwidth = median(&mut bandwidths);
    let weight_bytes = model.weight_bytes() as f64;
    for (row, rates) in out.iter_mut().zip(&mut forward_rates) {
        row.bandwidth_fraction = median(rates) * weight_bytes / bandwidth;
    }
    Ok((out, bandwidth))
}

/// AR (the baseline, measured first), then the other settings.
fn with_ar_first(decoders: &[DecoderSpec]) -> Vec<DecoderSpec> {
    let mut all = vec![DecoderSpec::Ar];
    all.extend(decoders.iter().filter(|d| **d != DecoderSpec::Ar).cloned());
    all
}

/// Every prompt of the set, in batches of `batch` (a short set is cycled to fill one).
fn batched(set: &PromptSet, batch: usize) -> Vec<Vec<u32>> {
    let rows = set.prompts.len().max(batch).div_ceil(batch) * batch;
    (0..rows)
        .map(|i| set.prompts[i % set.prompts.len()].clone())
        .collect()
}

/// The length measured after prompts of up to `longest` tokens: fitted lengths shrink to
/// what the context leaves, others stay (and are skipped when they do not fit).
fn fitted_length(
    cfg: &DecodeBenchConfig,
    model: &Transformer,
    len: usize,
    longest: usize,
) -> usize {
    if cfg.fit_lengths {
        len.min(model.cfg.max_seq_len.saturating_sub(longest))
    } else {
        len
    }
}

/// One prompt set at one batch size and length.
struct Case<'a> {
    set: &'a str,
    prompts: &'a [Vec<u32>],
    batch: usize,
    len: usize,
}

/// One decoder's rounds: per-round figures and the last round's generation.
#[derive(Default)]
struct Rounds {
    tokens_per_s: Vec<f64>,
    forwards_per_s: Vec<f64>,
    allocs: Vec<f64>,
    alloc_bytes: Vec<f64>,
    last: Option<(Generation, Mechanism)>,
}

impl Rounds {
    fn tokens(&self) -> Vec<Vec<u32>> {
        let (g, _) = self.last.as_ref().expect("at least one round");
        g.rows.iter().map(|r| r.tokens.clone()).collect()
    }
}

/// `rounds` rounds of every decoder on `case`, interleaved across decoders so drift on a busy
/// machine hits all alike; `after_round` runs after each round (a bandwidth sample).
fn measure(
    model: &Transformer,
    tok: &TextTokenizer,
    decoders: &[DecoderSpec],
    case: &Case,
    rounds: usize,
    after_round: &mut dyn FnMut() -> Result<()>,
    progress: &dyn Fn(&str),
) -> Result<Vec<Rounds>> {
    // EOS is disabled (an id no token has) so every run generates exactly `len` tokens.
    let opts = GenOptions {
        eos_id: u32::MAX,
        ..GenOptions::new(case.len, tok)
    };
    let mut runs: Vec<Rounds> = decoders.iter().map(|_| Rounds::default()).collect();
    for round in 0..rounds.max(1) {
        for (d, run) in decoders.iter().zip(&mut runs) {
            progress(&format!(
                "{}, batch {}, {} tokens, round {}: {} {}",
                case.set,
                case.batch,
                case.len,
                round + 1,
                d.name(),
                d.setting()
            ));
            let mut mech = Mechanism::default();
            let (count0, bytes0) = crate::runtime::alloc::allocations();
            let g = generate_all(d, model, case.prompts, case.batch, &opts, &mut mech)?;
            let (count1, bytes1) = crate::runtime::alloc::allocations();
            let n = g.generated_tokens().max(1) as f64;
            run.allocs.push((count1 - count0) as f64 / n);
            run.alloc_bytes.push((bytes1 - bytes0) as f64 / n);
            run.tokens_per_s.push(g.tokens_per_s());
            run.forwards_per_s
                .push(g.forward_passes as f64 / g.elapsed_s.max(1e-9));
            run.last = Some((g, mech));
        }
        after_round()?;
    }
    Ok(runs)
}

/// The row of decoder `d` from its rounds, against AR's (tokens/s, tokens); its bandwidth
/// share is filled in at the end.
fn row(
    d: &DecoderSpec,
    run: &mut Rounds,
    case: &Case,
    (model, tok): (&Transformer, &TextTokenizer),
    judge: (&Transformer, &TextTokenizer),
    (ar_tps, ar_tokens): (f64, &[Vec<u32>]),
) -> Result<DecodeBench> {
    let (g, mech) = run.last.take().expect("at least one round");
    let tokens_per_s = median(&mut run.tokens_per_s);
    let [ent, rep, dist2, nll] = quality(judge, tok, case.prompts, &g)?;
    let same = g
        .rows
        .iter()
        .zip(ar_tokens)
        .filter(|(r, a)| &r.tokens == *a)
        .count() as f64
        / g.rows.len() as f64;
    let verify = matches!(d, DecoderSpec::Verify(_));
    let card = match d {
        DecoderSpec::Card(c) => Some(c),
        _ => None,
    };
    Ok(DecodeBench {
        prompt_set: case.set.to_string(),
        batch: case.batch,
        max_new_tokens: case.len,
        weights: model.weights_label(),
        decoder: d.name().to_string(),
        setting: d.setting(),
        block_size: match d {
            DecoderSpec::Card(c) => Some(c.block_size),
            DecoderSpec::Verify(v) => Some(v.block_size),
            _ => None,
        },
        step_limit: card.map(|c| c.step_limit),
        threshold: card.map(|c| c.threshold),
        tokens_per_s,
        tokens_per_forward: g.tokens_per_forward(),
        forward_passes: g.forward_passes,
        generated_tokens: g.generated_tokens(),
        ratio_to_ar: tokens_per_s / ar_tps,
        drafts_accepted_per_pass: verify.then(|| mech.accepted as f64 / mech.passes.max(1) as f64),
        acceptance_by_slot: if verify { mech.by_slot() } else { Vec::new() },
        kept_fraction: g.kept_fraction(),
        same_as_ar: same,
        unigram_entropy: ent,
        repeated_4gram_rate: rep,
        distinct_2: dist2,
        judge_nll: nll,
        bandwidth_fraction: f64::NAN,
        allocs_per_token: median(&mut run.allocs),
        alloc_bytes_per_token: median(&mut run.alloc_bytes),
    })
}
