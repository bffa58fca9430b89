//! Decoding speed and quality, AR against CARD configurations on the same model and prompts,
//! in one process: tokens/s (generated only), tokens per forward, ratio to AR, and quality
//! proxies (unigram entropy, repeated 4-grams, the model's own NLL of what it generated).

use super::median;
use crate::data::{TextTokenizer, PROMPTS};
use crate::decode::{CardDecoder, Decoder, DecoderSpec, GenOptions, Generation};
use crate::eval::quality::{continuation_nll, repeated_ngram_rate, unigram_entropy};
use crate::model::Transformer;
use anyhow::Result;
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::time::Instant;

pub struct DecodeBenchConfig {
    pub lengths: Vec<usize>,
    pub batches: Vec<usize>,
    pub grid: Vec<CardDecoder>,
    pub rounds: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct DecodeBench {
    pub batch: usize,
    pub max_new_tokens: usize,
    pub decoder: String,
    pub block_size: Option<usize>,
    pub step_limit: Option<usize>,
    pub threshold: Option<f64>,
    /// Generated tokens per second (median over rounds), prompt excluded.
    pub tokens_per_s: f64,
    pub tokens_per_forward: f64,
    pub forward_passes: usize,
    pub generated_tokens: usize,
    pub ratio_to_ar: f64,
    pub unigram_entropy: f64,
    pub repeated_4gram_rate: f64,
    /// The model's own mean NLL (nats/token) of its generated text: a generative-perplexity proxy.
    pub self_nll: f64,
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

fn quality(model: &Transformer, prompts: &[Vec<u32>], g: &Generation) -> Result<(f64, f64, f64)> {
    let n = g.rows.len() as f64;
    let mut ent = 0.0;
    let mut rep = 0.0;
    let mut nll = 0.0;
    for (p, r) in prompts.iter().zip(&g.rows) {
        ent += unigram_entropy(&r.tokens);
        rep += repeated_ngram_rate(&r.tokens, 4);
        let x = continuation_nll(model, p, &r.tokens)?;
        nll += if x.is_finite() { x } else { 0.0 };
    }
    Ok((ent / n, rep / n, nll / n))
}

pub fn bench_decode(
    model: &Transformer,
    tok: &TextTokenizer,
    cfg: &DecodeBenchConfig,
    progress: impl Fn(&str),
) -> Result<(Vec<DecodeBench>, f64)> {
    progress("measuring copy bandwidth");
    // Memory bandwidth on a shared machine drifts: it is sampled again after every round and
    // the median of all samples is the reference.
    let mut stream = CopyBandwidth::new(model.device());
    let mut bandwidths = vec![stream.sample()?];
    let weight_bytes = model.cfg.n_params() as f64 * model.dtype().size_in_bytes() as f64;
    let mut out = Vec::new();
    // (row index in `out`, forward passes per second of each round)
    let mut forward_rates: Vec<Vec<f64>> = Vec::new();
    for &batch in &cfg.batches {
        let prompts: Vec<Vec<u32>> = (0..batch)
            .map(|i| tok.encode(PROMPTS[i % PROMPTS.len()]))
            .collect::<Result<_>>()?;
        let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        for &len in &cfg.lengths {
            if longest + len > model.cfg.max_seq_len {
                progress(&format!(
                    "skipping length {len}: beyond the model's context"
                ));
                continue;
            }
            // EOS is disabled (an id no token has) so every run generates exactly `len` tokens.
            let opts = GenOptions {
                eos_id: u32::MAX,
                ..GenOptions::new(len, tok)
            };
            let mut decoders: Vec<(DecoderSpec, Option<CardDecoder>)> =
                vec![(DecoderSpec::Ar, None)];
            for c in &cfg.grid {
                decoders.push((DecoderSpec::Card(c.clone()), Some(c.clone())));
            }
            // Rounds interleaved across decoders, so drift on a busy machine hits all alike.
            let mut tps = vec![Vec::new(); decoders.len()];
            let mut fps = vec![Vec::new(); decoders.len()];
            let mut allocs = vec![Vec::new(); decoders.len()];
            let mut alloc_bytes = vec![Vec::new(); decoders.len()];
            let mut last: Vec<Option<Generation>> = vec![None; decoders.len()];
            for round in 0..cfg.rounds.max(1) {
                for (i, (d, card)) in decoders.iter().enumerate() {
                    progress(&format!(
                        "batch {batch}, {len} tokens, round {}: {} {card:?}",
                        round + 1,
                        d.name()
                    ));
                    let (count0, bytes0) = crate::runtime::alloc::allocations();
                    let g = d.generate(model, &prompts, &opts, &mut |_| {})?;
                    let (count1, bytes1) = crate::runtime::alloc::allocations();
                    let n = g.generated_tokens().max(1) as f64;
                    allocs[i].push((count1 - count0) as f64 / n);
                    alloc_bytes[i].push((bytes1 - bytes0) as f64 / n);
                    tps[i].push(g.tokens_per_s());
                    fps[i].push(g.forward_passes as f64 / g.elapsed_s.max(1e-9));
                    last[i] = Some(g);
                }
                bandwidths.push(stream.sample()?);
            }
            let ar_tps = median(&mut tps[0]);
            for (i, (d, card)) in decoders.into_iter().enumerate() {
                let g = last[i].take().expect("at least one round");
                let tokens_per_s = median(&mut tps[i]);
                let (ent, rep, nll) = quality(model, &prompts, &g)?;
                forward_rates.push(std::mem::take(&mut fps[i]));
                out.push(DecodeBench {
                    batch,
                    max_new_tokens: len,
                    decoder: d.name().to_string(),
                    block_size: card.as_ref().map(|c| c.block_size),
                    step_limit: card.as_ref().map(|c| c.step_limit),
                    threshold: card.as_ref().map(|c| c.threshold),
                    tokens_per_s,
                    tokens_per_forward: g.tokens_per_forward(),
                    forward_passes: g.forward_passes,
                    generated_tokens: g.generated_tokens(),
                    ratio_to_ar: tokens_per_s / ar_tps,
                    unigram_entropy: ent,
                    repeated_4gram_rate: rep,
                    self_nll: nll,
                    bandwidth_fraction: f64::NAN,
                    allocs_per_token: median(&mut allocs[i]),
                    alloc_bytes_per_token: median(&mut alloc_bytes[i]),
                });
            }
        }
    }
    let bandwidth = median(&mut bandwidths);
    for (row, rates) in out.iter_mut().zip(&mut forward_rates) {
        row.bandwidth_fraction = median(rates) * weight_bytes / bandwidth;
    }
    Ok((out, bandwidth))
}
