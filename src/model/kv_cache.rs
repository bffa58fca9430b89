//! Exact key/value cache with rollback, one length per batch row. Buffers are preallocated,
//! so the decode loop writes in place and never reallocates. A forward pass writes its
//! keys/values after each row's length (scratch) and advances it; `truncate_row` rolls a row
//! back to any earlier length — CARD's draft blocks are scratch until committed.

use candle_core::{DType, Device, Result, Tensor};

pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    lens: Vec<usize>,
    capacity: usize,
}

impl KvCache {
    /// Buffers [batch, heads, capacity, head_dim] for each layer.
    pub fn new(
        n_layers: usize,
        batch: usize,
        n_heads: usize,
        head_dim: usize,
        capacity: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let shape = (batch, n_heads, capacity, head_dim);
        let alloc = || Tensor::zeros(shape, dtype, device);
        Ok(Self {
            keys: (0..n_layers).map(|_| alloc()).collect::<Result<_>>()?,
            values: (0..n_layers).map(|_| alloc()).collect::<Result<_>>()?,
            lens: vec![0; batch],
            capacity,
        })
    }

    /// Length of row 0 (all rows, when they are kept in step).
    pub fn len(&self) -> usize {
        self.lens[0]
    }

    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    pub fn is_empty(&self) -> bool {
        self.lens.iter().all(|&l| l == 0)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn batch(&self) -> usize {
        self.lens.len()
    }

    /// True when every row has the same length.
    pub fn uniform(&self) -> bool {
        self.lens.iter().all(|&l| l == self.lens[0])
    }

    /// Write k/v [B, H, t, hd] of `layer` after each row's length and return the keys and
    /// values of positions 0..max_len+t. Lengths move only in `advance`, once per forward.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        let max = *self.lens.iter().max().expect("batch >= 1");
        if max + t > self.capacity {
            candle_core::bail!(
                "KV cache full: {max} + {t} positions exceed its capacity of {}",
                self.capacity
            );
        }
        let (k, v) = (k.contiguous()?, v.contiguous()?);
        if self.uniform() {
            self.keys[layer].slice_set(&k, 2, max)?;
            self.values[layer].slice_set(&v, 2, max)?;
        } else {
            for (r, &len) in self.lens.iter().enumerate() {
                let (kr, vr) = (k.narrow(0, r, 1)?, v.narrow(0, r, 1)?);
                self.keys[layer].narrow(0, r, 1)?.slice_set(&kr, 2, len)?;
                self.values[layer].narrow(0, r, 1)?.slice_set(&vr, 2, len)?;
            }
        }
        Ok((
            self.keys[layer].narrow(2, 0, max + t)?,
            self.values[layer].narrow(2, 0, max + t)?,
        ))
    }

    /// After a forward of t tokens: row r keeps `valid[r]` of them (all t when None).
    pub(crate) fn advance(&mut self, t: usize, valid: Option<&[usize]>) {
        for (r, len) in self.lens.iter_mut().enumerate() {
            *len += valid.map_or(t, |v| v[r]);
        }
    }

    /// Roll every row back to at most `len` positions (no data moves).
    pub fn truncate(&mut self, len: usize) {
        for l in &mut self.lens {
            *l = (*l).min(len);
        }
    }

    /// Roll one row back to at most `len` positions.
    pub fn truncate_row(&mut self, row: usize, len: usize) {
        self.lens[row] = self.lens[row].min(len);
    }
}
