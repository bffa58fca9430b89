//! The host backend of the recipe, for decoding CPU models with f32 weights or matrices in
//! Q4_0/Q4_1/Q8_0/Q4_K/Q6_K or bf16 blocks: the layer recipe of `layer.rs` on host slices instead of candle
//! ops, so a decoding step allocates nothing (activations come from a pool of reused
//! buffers) and every weight matrix goes through a small-row kernel (f32 or packed) once
//! per pass.
//!
//! Rows are packed, not padded: row r feeds its own tokens after its cached prefix, and only
//! real tokens are computed. Keys and values live in a host cache with the same per-row
//! bookkeeping as [`super::KvCache`] ([`RowLens`]); `truncate_row` rolls a row back.

use super::layer::{Compute, Weights};
use super::visibility::Tree;
use super::{Activations, RowLens, Transformer, Weight};
use crate::config::ModelConfig;
use crate::kernels::decode::{attend, linear, linear_packed, Query};
use crate::kernels::int8::Rounded;
use crate::kernels::norm::rms_norm_row;
use crate::kernels::pointwise::{rotate, swiglu_row};
use crate::kernels::quant::{self, Blocks};
use crate::kernels::small_matmul::MAX_ROWS;
use anyhow::{bail, Result};
use candle_core::{CpuStorage, DType, Storage, Tensor};

/// The tensor's data as a host slice, or None if it is not a contiguous f32 CPU tensor.
fn host(t: &Tensor) -> Option<&[f32]> {
    if t.dtype() != DType::F32 || !t.device().is_cpu() || t.is_variable() {
        return None;
    }
    let (guard, layout) = t.storage_and_layout();
    let (a, b) = layout.contiguous_offsets()?;
    let Storage::Cpu(CpuStorage::F32(data)) = &*guard else {
        return None;
    };
    let (ptr, len) = (data.as_ptr(), data.len());
    drop(guard);
    // SAFETY: the storage is kept alive by the tensor, which the returned slice borrows.
    // Weights are written in place only through a training `Var` (refused above; a detached
    // view of one is only ever updated between decoding calls, while a pass lives inside
    // one), so the slice stays valid and unchanged while borrowed.
    let all = unsafe { std::slice::from_raw_parts(ptr, len) };
    Some(&all[a..b])
}

/// A weight as the host backend reads it: f32 values, or a matrix's parts (block type,
/// packed rows, row count) stacked by rows.
#[derive(Clone)]
pub enum HostMat<'m> {
    F32(&'m [f32]),
    Packed(Vec<(Blocks, &'m [u8], usize)>),
}

impl<'m> HostMat<'m> {
    fn f32(&self) -> candle_core::Result<&'m [f32]> {
        match self {
            HostMat::F32(s) => Ok(s),
            HostMat::Packed(_) => candle_core::bail!("a packed weight where f32 values are needed"),
        }
    }
}

/// The model's weights and RoPE tables (cos, sin) as host slices.
type HostWeights<'m> = (Weights<HostMat<'m>>, &'m [f32], &'m [f32]);

/// The host view of a model, or None where the host backend does not apply (not plain f32
/// CPU tensors).
fn host_weights(model: &Transformer) -> Option<HostWeights<'_>> {
    Some((
        model.weights.map(|w| match w {
            Weight::Dense(t) => host(t).map(HostMat::F32),
            Weight::Quant(q) => q.host_parts().map(HostMat::Packed),
        })?,
        host(&model.cos)?,
        host(&model.sin)?,
    ))
}

/// Whether `model` can decode on the host backend.
pub fn applies(model: &Transformer) -> bool {
    host_weights(model).is_some()
}

/// Keys and values [layer][row][kv head][position][head_dim].
struct HostCache {
    k: Vec<f32>,
    v: Vec<f32>,
    rows: RowLens,
}

/// Decoding state for one batch: the weights as slices, the cache, reused buffers.
pub struct HostPass<'m> {
    cfg: &'m ModelConfig,
    weights: Weights<HostMat<'m>>,
    cos: &'m [f32],
    sin: &'m [f32],
    cache: HostCache,
    /// Each packed row of the last pass.
    rows: Vec<Query>,
    /// First packed row of each batch row.
    offsets: Vec<usize>,
    scores: Vec<f32>,
    scratch: Vec<f32>,
    /// Input rows rounded to 8 bits, when the model decodes with int8 activations.
    int8: Option<Rounded>,
    pool: Vec<Vec<f32>>,
    logits: Vec<f32>,
}

impl<'m> HostPass<'m> {
    /// A pass for `batch` rows with room for `capacity` positions each, or None when the
    /// model is not plain f32 CPU tensors.
    pub fn new(model: &'m Transformer, batch: usize, capacity: usize) -> Option<Self> {
        let (weights, cos, sin) = host_weights(model)?;
        let c = &model.cfg;
        let size = c.n_layers * batch * c.heads().kv * capacity * c.head_dim();
        Some(Self {
            cfg: c,
            weights,
            cos,
            sin,
            cache: HostCache {
                k: vec![0f32; size],
                v: vec![0f32; size],
                rows: RowLens::new(batch, capacity),
            },
            rows: Vec::new(),
            offsets: Vec::new(),
            scores: Vec::new(),
            scratch: Vec::new(),
            int8: (model.activations == Activations::Int8).then(Rounded::default),
            pool: Vec::new(),
            logits: Vec::new(),
        })
    }

    pub fn lens(&self) -> &[usize] {
        self.cache.rows.lens()
    }

    pub fn capacity(&self) -> usize {
        self.cache.rows.capacity()
    }

    /// Roll one row back to at most `len` positions.
    pub fn truncate_row(&mut self, row: usize, len: usize) {
        self.cache.rows.truncate_row(row, len);
    }

    /// The logits of the last pass for batch row `row`, its `i`-th fed token.
    pub fn logits(&self, row: usize, i: usize) -> &[f32] {
        let v = self.cfg.vocab_size;
        let at = (self.offsets[row] + i) * v;
        &self.logits[at..at + v]
    }

    /// One causal pass: row r feeds `inputs[r]` (possibly empty) after its cached prefix;
    /// their keys and values join the cache.
    pub fn forward(&mut self, inputs: &[Vec<u32>]) -> Result<()> {
        self.run(inputs, None)
    }

    /// One pass where row r feeds `inputs[r]` as the tree `trees[r]` (None: a chain) after
    /// its cached prefix: each token at its depth after the prefix, seeing the prefix, its
    /// ancestors and itself. Every fed token's keys/values join the cache in feeding order.
    pub fn forward_tree(&mut self, inputs: &[Vec<u32>], trees: &[Option<&Tree>]) -> Result<()> {
        self.run(inputs, Some(trees))
    }

    /// A pass of chains (`trees` None: no per-pass list to allocate) or of trees.
    fn run(&mut self, inputs: &[Vec<u32>], trees: Option<&[Option<&Tree>]>) -> Result<()> {
        let tree = |r: usize| trees.and_then(|t| t[r]);
        let c = self.cfg;
        let (d, v) = (c.d_model, c.vocab_size);
        let lens = self.cache.rows.lens();
        if inputs.len() != lens.len() || trees.is_some_and(|t| t.len() != lens.len()) {
            bail!("{} inputs for a batch of {}", inputs.len(), lens.len());
        }
        let shaped =
            |(r, input): (usize, &Vec<u32>)| tree(r).is_none_or(|t| t.depth.len() == input.len());
        if !inputs.iter().enumerate().all(shaped) {
            bail!("a tree pass needs one tree node per fed token");
        }
        let capacity = self.cache.rows.capacity();
        self.rows.clear();
        self.offsets.clear();
        for (r, input) in inputs.iter().enumerate() {
            // A tree's tokens take a cache slot each but sit at their depth.
            let depth = tree(r).map_or(input.len(), |t| t.depth.iter().max().map_or(0, |d| d + 1));
            let (slots, end) = (lens[r] + input.len(), lens[r] + depth);
            if end > c.max_seq_len || slots > capacity {
                let limit = c.max_seq_len.min(capacity);
                bail!("sequence of {end} tokens exceeds the model's context of {limit}");
            }
            self.offsets.push(self.rows.len());
            let len = lens[r];
            self.rows.extend((0..input.len()).map(|i| match tree(r) {
                Some(tree) => Query {
                    row: r,
                    slot: len + i,
                    pos: len + tree.depth[i],
                    tree: Some((len, tree.seen[i])),
                },
                None => Query::chain(r, len + i),
            }));
        }
        let n = self.rows.len();
        if n == 0 {
            return Ok(());
        }
        grow(&mut self.scores, n * c.n_heads * self.cache.rows.capacity());
        grow(
            &mut self.scratch,
            MAX_ROWS * v.max(2 * c.d_ff).max(c.qkv_width()),
        );
        let mut x = take(&mut self.pool, n * d);
        for (i, tok) in inputs.iter().flatten().enumerate() {
            let t = *tok as usize;
            if t >= v {
                self.pool.push(x);
                bail!("token {t} is outside the vocabulary of {v}");
            }
            embed_row(&self.weights.embed, t, &mut x[i * d..(i + 1) * d]);
        }
        let mut pass = HostCompute {
            cfg: c,
            cos: self.cos,
            sin: self.sin,
            rows: &self.rows,
            cache: &mut self.cache,
            scores: &mut self.scores,
            scratch: &mut self.scratch,
            int8: self.int8.as_mut(),
            pool: &mut self.pool,
        };
        let logits = self.weights.run(&mut pass, x)?;
        let old = std::mem::replace(&mut self.logits, logits);
        self.pool.push(old);
        self.cache.rows.advance(|r| inputs[r].len());
        Ok(())
    }
}

/// Row `t` of the embedding, expanded when packed.
fn embed_row(embed: &HostMat, t: usize, out: &mut [f32]) {
    let d = out.len();
    match embed {
        HostMat::F32(e) => out.copy_from_slice(&e[t * d..(t + 1) * d]),
        HostMat::Packed(parts) => {
            let mut row = t;
            for &(kind, bytes, rows) in parts {
                if row < rows {
                    let rb = kind.row_bytes(d);
                    return quant::dequantize_row(kind, &bytes[row * rb..(row + 1) * rb], out);
                }
                row -= rows;
            }
        }
    }
}

fn grow(b: &mut Vec<f32>, len: usize) {
    if b.len() < len {
        b.resize(len, 0.0);
    }
}

/// A buffer of `len` from the pool: one that already holds `len` if there is one, so buffers
/// stop growing after the first passes and a pass allocates nothing. Not cleared: every step
/// overwrites its whole output.
fn take(pool: &mut Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let fits = pool.iter().position(|b| b.capacity() >= len);
    let biggest = || (0..pool.len()).max_by_key(|&i| pool[i].capacity());
    let mut b = match fits.or_else(biggest) {
        Some(i) => pool.swap_remove(i),
        None => Vec::new(),
    };
    if b.len() < len {
        b.resize(len, 0.0);
    }
    b.truncate(len);
    b
}

/// One pass's context for the recipe's steps.
struct HostCompute<'a, 'm> {
    cfg: &'m ModelConfig,
    cos: &'m [f32],
    sin: &'m [f32],
    rows: &'a [Query],
    cache: &'a mut HostCache,
    scores: &'a mut [f32],
    scratch: &'a mut [f32],
    int8: Option<&'a mut Rounded>,
    pool: &'a mut Vec<Vec<f32>>,
}

impl<'m> Compute for HostCompute<'_, 'm> {
    type W = HostMat<'m>;
    type Act = Vec<f32>;

    fn norm(&mut self, x: &Vec<f32>, w: &HostMat<'m>) -> candle_core::Result<Vec<f32>> {
        let w = w.f32()?;
        let mut out = take(self.pool, x.len());
        for (xi, oi) in x.chunks(w.len()).zip(out.chunks_mut(w.len())) {
            rms_norm_row(xi, w, self.cfg.norm_eps, oi);
        }
        Ok(out)
    }

    fn linear(&mut self, x: Vec<f32>, w: &HostMat<'m>) -> candle_core::Result<Vec<f32>> {
        let n = self.rows.len();
        let k = x.len() / n;
        let out = match w {
            HostMat::F32(w) => {
                let m = w.len() / k;
                let mut out = take(self.pool, n * m);
                linear(&x, n, k, w, m, self.scratch, &mut out);
                out
            }
            HostMat::Packed(parts) => {
                let m: usize = parts.iter().map(|p| p.2).sum();
                let mut out = take(self.pool, n * m);
                // Only a matrix of several parts needs a buffer to gather its columns.
                let mut part_out = take(self.pool, if parts.len() > 1 { MAX_ROWS * m } else { 0 });
                let int8 = self.int8.as_deref_mut();
                linear_packed(&x, n, k, parts, int8, self.scratch, &mut part_out, &mut out);
                self.pool.push(part_out);
                out
            }
        };
        self.pool.push(x);
        Ok(out)
    }

    fn bias(&mut self, mut x: Vec<f32>, b: &HostMat<'m>) -> candle_core::Result<Vec<f32>> {
        let b = b.f32()?;
        for row in x.chunks_mut(b.len()) {
            for (a, &c) in row.iter_mut().zip(b.iter()) {
                *a += c;
            }
        }
        Ok(x)
    }

    fn head_norm(
        &mut self,
        mut qkv: Vec<f32>,
        q_norm: &HostMat<'m>,
        k_norm: &HostMat<'m>,
    ) -> candle_core::Result<Vec<f32>> {
        let heads = self.cfg.heads();
        let (q_norm, k_norm) = (q_norm.f32()?, k_norm.f32()?);
        let mut head = take(self.pool, heads.dim);
        for row in qkv.chunks_mut(heads.qkv_width()) {
            for (h, x) in row[..heads.v_offset()].chunks_mut(heads.dim).enumerate() {
                let w = if h < heads.q { q_norm } else { k_norm };
                head.copy_from_slice(x);
                rms_norm_row(&head, w, self.cfg.norm_eps, x);
            }
        }
        self.pool.push(head);
        Ok(qkv)
    }

    fn attention(&mut self, mut qkv: Vec<f32>, layer: usize) -> candle_core::Result<Vec<f32>> {
        let heads = self.cfg.heads();
        let (hd, half, width) = (heads.dim, heads.dim / 2, heads.qkv_width());
        let cache = &mut *self.cache;
        let (batch, cap) = (cache.rows.batch(), cache.rows.capacity());
        // Rotate q and k at each row's position; keys and values into the cache.
        for (
            i,
            &Query {
                row: r, slot, pos, ..
            },
        ) in self.rows.iter().enumerate()
        {
            let cos = &self.cos[pos * half..(pos + 1) * half];
            let sin = &self.sin[pos * half..(pos + 1) * half];
            let row = &mut qkv[i * width..(i + 1) * width];
            for h in row[..heads.v_offset()].chunks_mut(hd) {
                rotate(h, cos, sin, false, 1.0);
            }
            for kh in 0..heads.kv {
                let at = (((layer * batch + r) * heads.kv + kh) * cap + slot) * hd;
                let (k0, v0) = (heads.k_offset() + kh * hd, heads.v_offset() + kh * hd);
                cache.k[at..at + hd].copy_from_slice(&row[k0..k0 + hd]);
                cache.v[at..at + hd].copy_from_slice(&row[v0..v0 + hd]);
            }
        }
        let mut out = take(self.pool, self.rows.len() * heads.q_width());
        let block0 = layer * batch;
        let kv = (&cache.k[..], &cache.v[..], cap);
        attend(self.rows, &qkv, kv, heads, block0, self.scores, &mut out);
        self.pool.push(qkv);
        Ok(out)
    }

    fn swiglu(&mut self, gate_up: Vec<f32>) -> candle_core::Result<Vec<f32>> {
        let n = self.rows.len();
        let f = gate_up.len() / n / 2;
        let mut out = take(self.pool, n * f);
        for (gu, o) in gate_up.chunks(2 * f).zip(out.chunks_mut(f)) {
            swiglu_row(gu, o);
        }
        self.pool.push(gate_up);
        Ok(out)
    }

    fn add(&mut self, mut x: Vec<f32>, y: Vec<f32>) -> candle_core::Result<Vec<f32>> {
        for (a, &b) in x.iter_mut().zip(&y) {
            *a += b;
        }
        self.pool.push(y);
        Ok(x)
    }

    fn release(&mut self, x: Vec<f32>) {
        self.pool.push(x);
    }
}
