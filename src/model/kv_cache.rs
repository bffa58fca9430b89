//! Exact key/value caches with rollback, one length per batch row. [`RowLens`] is the
//! bookkeeping both backends' caches share: a forward pass writes its keys/values after each
//! row's length (scratch) and advances it; `truncate_row` rolls a row back to any earlier
//! length — CARD's draft windows are scratch until committed. [`KvCache`] holds candle
//! tensors; the host backend keeps plain buffers (`model::host`).

use candle_core::{DType, Device, Result, Tensor};

/// Cached lengths of a batch's rows, within a fixed capacity.
#[derive(Debug, Clone)]
pub struct RowLens {
    lens: Vec<usize>,
    capacity: usize,
}

impl RowLens {
    pub fn new(batch: usize, capacity: usize) -> Self {
        Self {
            lens: vec![0; batch],
            capacity,
        }
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

    /// After a pass: row r keeps `fed(r)` more positions.
    pub(crate) fn advance(&mut self, fed: impl Fn(usize) -> usize) {
        for (r, len) in self.lens.iter_mut().enumerate() {
            *len += fed(r);
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

/// Keys and values as candle tensors [batch, kv heads, capacity, head_dim] per layer,
/// preallocated, so the decode loop writes in place and never reallocates.
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    rows: RowLens,
}

impl std::ops::Deref for KvCache {
    type Target = RowLens;
    fn deref(&self) -> &RowLens {
        &self.rows
    }
}

impl std::ops::DerefMut for KvCache {
    fn deref_mut(&mut self) -> &mut RowLens {
        &mut self.rows
    }
}

impl KvCache {
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
            rows: RowLens::new(batch, capacity),
        })
    }

    /// Write k/v [B, H, t, hd] of `layer` after each row's length and return the keys and
    /// values of positions 0..max_len+t. Lengths move only in `advance`, once per forward.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        let max = *self.lens().iter().max().expect("batch >= 1");
        if max + t > self.capacity() {
            candle_core::bail!(
                "KV cache full: {max} + {t} positions exceed its capacity of {}",
                self.capacity()
            );
        }
        let (k, v) = (k.contiguous()?, v.contiguous()?);
        if self.uniform() {
            self.keys[layer].slice_set(&k, 2, max)?;
            self.values[layer].slice_set(&v, 2, max)?;
        } else {
            for (r, &len) in self.rows.lens().iter().enumerate() {
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
}
