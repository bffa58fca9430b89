//! A decoding forward pass on host slices for f32 CPU models: the same transformer as
//! [`Transformer::forward_ragged`] with a cache, without candle ops, so a decoding step
//! allocates nothing (every buffer lives in a reused workspace) and runs each weight
//! matrix through the small-row kernel once per pass.
//!
//! Rows are packed, not padded: row r feeds its own tokens after its cached prefix, and
//! only real tokens are computed. Keys and values live in a host cache with one length per
//! row; `truncate_row` rolls a row back (CARD's draft windows are scratch).

use super::fused::norm::rms_norm_row;
use super::fused::pointwise::{rotate, swiglu_row};
use super::fused::small_matmul::{matmul_into, MAX_ROWS};
use super::fused::{gemm_into, Real};
use super::Transformer;
use crate::runtime::threads;
use anyhow::{bail, Result};
use candle_core::{CpuStorage, DType, Storage, Tensor};

/// A weight matrix or vector as a host slice.
#[derive(Clone, Copy)]
struct W<'m>(&'m [f32]);

struct LayerW<'m> {
    attn_norm: W<'m>,
    wqkv: W<'m>,
    wo: W<'m>,
    ffn_norm: W<'m>,
    w_gate_up: W<'m>,
    w_down: W<'m>,
}

/// Decoding state for one batch: the model's weights as slices, the cache, the workspace.
pub struct Engine<'m> {
    model: &'m Transformer,
    embed: W<'m>,
    layers: Vec<LayerW<'m>>,
    norm: W<'m>,
    head: W<'m>,
    cos: W<'m>,
    sin: W<'m>,
    /// Keys and values [layer][row][head][position][head_dim].
    k: Vec<f32>,
    v: Vec<f32>,
    lens: Vec<usize>,
    capacity: usize,
    ws: Workspace,
}

/// Buffers sized for the largest pass so far; reused by every pass.
#[derive(Default)]
struct Workspace {
    /// (batch row, position) of each packed row of the last pass.
    rows: Vec<(usize, usize)>,
    /// First packed row of each batch row.
    offsets: Vec<usize>,
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    ff: Vec<f32>,
    act: Vec<f32>,
    proj: Vec<f32>,
    scores: Vec<f32>,
    scratch: Vec<f32>,
    logits: Vec<f32>,
}

/// The tensor's data as a host slice, or None if it is not a contiguous f32 CPU tensor.
fn host(t: &Tensor) -> Option<&[f32]> {
    let (guard, layout) = t.storage_and_layout();
    let (a, b) = layout.contiguous_offsets()?;
    let Storage::Cpu(CpuStorage::F32(data)) = &*guard else {
        return None;
    };
    let (ptr, len) = (data.as_ptr(), data.len());
    drop(guard);
    // SAFETY: the storage is kept alive by the tensor, which the returned slice borrows.
    // Weights are written in place only through a training `Var` (`Engine::new` refuses
    // those; a detached view of one is only ever updated between decoding calls, while an
    // engine lives inside one), so the slice stays valid and unchanged while borrowed.
    let all = unsafe { std::slice::from_raw_parts(ptr, len) };
    Some(&all[a..b])
}

impl<'m> Engine<'m> {
    /// An engine for `batch` rows with room for `capacity` positions each, or None when the
    /// model is not plain f32 CPU tensors of its config's shapes (then the decoders use
    /// candle's path, which reports any mismatch).
    pub fn new(model: &'m Transformer, batch: usize, capacity: usize) -> Option<Self> {
        let c = &model.cfg;
        let (d, f, v, half) = (c.d_model, c.d_ff, c.vocab_size, c.head_dim() / 2);
        // A plain f32 CPU tensor of the size the config says, as a slice.
        let plain = |t: &'m Tensor, len: usize| {
            (t.dtype() == DType::F32 && t.device().is_cpu() && !t.is_variable())
                .then(|| host(t))
                .flatten()
                .filter(|s| s.len() == len)
                .map(W)
        };
        let mut layers = Vec::with_capacity(model.layers.len());
        for l in &model.layers {
            layers.push(LayerW {
                attn_norm: plain(&l.attn_norm, d)?,
                wqkv: plain(&l.wqkv, 3 * d * d)?,
                wo: plain(&l.wo, d * d)?,
                ffn_norm: plain(&l.ffn_norm, d)?,
                w_gate_up: plain(&l.w_gate_up, 2 * f * d)?,
                w_down: plain(&l.w_down, d * f)?,
            });
        }
        let size = c.n_layers * batch * c.n_heads * capacity * c.head_dim();
        Some(Self {
            model,
            embed: plain(&model.embed, v * d)?,
            layers,
            norm: plain(&model.norm, d)?,
            head: plain(model.head.as_ref().unwrap_or(&model.embed), v * d)?,
            cos: plain(&model.cos, c.max_seq_len * half)?,
            sin: plain(&model.sin, c.max_seq_len * half)?,
            k: vec![0f32; size],
            v: vec![0f32; size],
            lens: vec![0; batch],
            capacity,
            ws: Workspace::default(),
        })
    }

    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    /// Roll one row back to at most `len` positions.
    pub fn truncate_row(&mut self, row: usize, len: usize) {
        self.lens[row] = self.lens[row].min(len);
    }

    /// The logits of the last pass for batch row `row`, its `i`-th fed token.
    pub fn logits(&self, row: usize, i: usize) -> &[f32] {
        let v = self.model.cfg.vocab_size;
        let at = (self.ws.offsets[row] + i) * v;
        &self.ws.logits[at..at + v]
    }

    /// One causal pass: row r feeds `inputs[r]` (possibly empty) after its cached prefix;
    /// their keys and values join the cache.
    pub fn forward(&mut self, inputs: &[Vec<u32>]) -> Result<()> {
        let model = self.model;
        let c = &model.cfg;
        let (d, hd, nh, f, v) = (c.d_model, c.head_dim(), c.n_heads, c.d_ff, c.vocab_size);
        if inputs.len() != self.lens.len() {
            bail!("{} inputs for a batch of {}", inputs.len(), self.lens.len());
        }
        let ws = &mut self.ws;
        ws.rows.clear();
        ws.offsets.clear();
        for (r, input) in inputs.iter().enumerate() {
            let end = self.lens[r] + input.len();
            if end > c.max_seq_len.min(self.capacity) {
                bail!(
                    "sequence of {end} tokens exceeds the model's context of {}",
                    c.max_seq_len.min(self.capacity)
                );
            }
            ws.offsets.push(ws.rows.len());
            ws.rows
                .extend((0..input.len()).map(|i| (r, self.lens[r] + i)));
        }
        let n = ws.rows.len();
        let grow = |b: &mut Vec<f32>, len: usize| {
            if b.len() < len {
                b.resize(len, 0.0);
            }
        };
        grow(&mut ws.x, n * d);
        grow(&mut ws.h, n * d);
        grow(&mut ws.qkv, n * 3 * d);
        grow(&mut ws.att, n * d);
        grow(&mut ws.ff, n * 2 * f);
        grow(&mut ws.act, n * f);
        grow(&mut ws.proj, n * d);
        grow(&mut ws.scores, n * nh * self.capacity);
        grow(&mut ws.scratch, MAX_ROWS * v.max(2 * f).max(3 * d));
        grow(&mut ws.logits, n * v);
        if n == 0 {
            return Ok(());
        }
        for (i, tok) in inputs.iter().flatten().enumerate() {
            let t = *tok as usize;
            if t >= v {
                bail!("token {t} is outside the vocabulary of {v}");
            }
            ws.x[i * d..(i + 1) * d].copy_from_slice(&self.embed.0[t * d..(t + 1) * d]);
        }
        let eps = c.norm_eps;
        let batch = self.lens.len();
        for (li, l) in self.layers.iter().enumerate() {
            rms_norm(&ws.x[..n * d], l.attn_norm.0, eps, &mut ws.h[..n * d]);
            linear(&ws.h, n, d, l.wqkv.0, 3 * d, &mut ws.scratch, &mut ws.qkv);
            // Rotate q and k at each row's position; keys and values into the cache.
            let half = hd / 2;
            for (i, &(r, pos)) in ws.rows.iter().enumerate() {
                let (cos, sin) = (
                    &self.cos.0[pos * half..(pos + 1) * half],
                    &self.sin.0[pos * half..(pos + 1) * half],
                );
                let row = &mut ws.qkv[i * 3 * d..(i + 1) * 3 * d];
                for hh in 0..2 * nh {
                    rotate(&mut row[hh * hd..(hh + 1) * hd], cos, sin, false, 1.0);
                }
                for hh in 0..nh {
                    let at = (((li * batch + r) * nh + hh) * self.capacity + pos) * hd;
                    self.k[at..at + hd].copy_from_slice(&row[d + hh * hd..d + (hh + 1) * hd]);
                    self.v[at..at + hd]
                        .copy_from_slice(&row[2 * d + hh * hd..2 * d + (hh + 1) * hd]);
                }
            }
            attend(
                &ws.rows,
                &ws.qkv,
                &self.k,
                &self.v,
                (li * batch, nh, hd, self.capacity),
                &mut ws.scores,
                &mut ws.att,
            );
            linear(&ws.att, n, d, l.wo.0, d, &mut ws.scratch, &mut ws.proj);
            add(&mut ws.x[..n * d], &ws.proj[..n * d]);
            rms_norm(&ws.x[..n * d], l.ffn_norm.0, eps, &mut ws.h[..n * d]);
            linear(
                &ws.h,
                n,
                d,
                l.w_gate_up.0,
                2 * f,
                &mut ws.scratch,
                &mut ws.ff,
            );
            for i in 0..n {
                swiglu_row(
                    &ws.ff[i * 2 * f..(i + 1) * 2 * f],
                    &mut ws.act[i * f..(i + 1) * f],
                );
            }
            linear(&ws.act, n, f, l.w_down.0, d, &mut ws.scratch, &mut ws.proj);
            add(&mut ws.x[..n * d], &ws.proj[..n * d]);
        }
        rms_norm(&ws.x[..n * d], self.norm.0, eps, &mut ws.h[..n * d]);
        linear(&ws.h, n, d, self.head.0, v, &mut ws.scratch, &mut ws.logits);
        for (r, input) in inputs.iter().enumerate() {
            self.lens[r] += input.len();
        }
        Ok(())
    }
}

/// out [n, m] = x [n, k] · w [m, k]ᵀ: up to `MAX_ROWS` rows per weight pass, gemm beyond.
fn linear(
    x: &[f32],
    n: usize,
    k: usize,
    w: &[f32],
    m: usize,
    scratch: &mut [f32],
    out: &mut [f32],
) {
    if n > MAX_ROWS {
        // A prompt: compute-bound, where gemm's packing pays off.
        // SAFETY: x holds n·k, w m·k and out n·m elements (workspace sizes).
        unsafe {
            gemm_into(
                (n, m, k),
                (out.as_mut_ptr(), m as isize, 1),
                false,
                (x.as_ptr(), k as isize, 1),
                (w.as_ptr(), 1, k as isize),
                gemm::Parallelism::Rayon(threads()),
            )
        };
        return;
    }
    matmul_into(x, n, k, w, m, scratch, out);
}

fn rms_norm(x: &[f32], w: &[f32], eps: f64, out: &mut [f32]) {
    let d = w.len();
    for (xi, oi) in x.chunks(d).zip(out.chunks_mut(d)) {
        rms_norm_row(xi, w, eps, oi);
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Causal attention of every packed row and head over its batch row's cached keys 0..=pos,
/// spread over the pool by (row, head). `geometry` = (first layer-row block, heads,
/// head_dim, capacity).
fn attend(
    rows: &[(usize, usize)],
    qkv: &[f32],
    k: &[f32],
    v: &[f32],
    (block0, nh, hd, cap): (usize, usize, usize, usize),
    scores: &mut [f32],
    att: &mut [f32],
) {
    let d = nh * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let (s_ptr, a_ptr) = (scores.as_mut_ptr() as usize, att.as_mut_ptr() as usize);
    super::fused::par_rows(rows.len() * nh, cap * hd, |unit| {
        let (i, hh) = (unit / nh, unit % nh);
        let (r, pos) = rows[i];
        let keys = pos + 1;
        let base = ((block0 + r) * nh + hh) * cap * hd;
        let q = &qkv[i * 3 * d + hh * hd..i * 3 * d + (hh + 1) * hd];
        // SAFETY: unit (i, hh) alone uses its score segment and its output slice.
        let s =
            unsafe { std::slice::from_raw_parts_mut((s_ptr as *mut f32).add(unit * cap), keys) };
        let out =
            unsafe { std::slice::from_raw_parts_mut((a_ptr as *mut f32).add(i * d + hh * hd), hd) };
        for (j, sj) in s.iter_mut().enumerate() {
            *sj = f32::dot(q, &k[base + j * hd..base + (j + 1) * hd]) * scale;
        }
        let z = f32::exp_inplace_sum(s, f32::max_of(s));
        out.fill(0.0);
        for (j, &p) in s.iter().enumerate() {
            let vj = &v[base + j * hd..base + (j + 1) * hd];
            let p = p / z;
            for (o, &x) in out.iter_mut().zip(vj) {
                *o += p * x;
            }
        }
    });
}
