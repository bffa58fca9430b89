//! Exact key/value cache with rollback. Buffers are preallocated to the model's context, so
//! the decode loop writes in place and never reallocates. `len` counts committed positions;
//! a forward pass writes its keys/values after them (scratch) and advances `len`, and
//! `truncate` rolls back to any earlier length — CARD's draft blocks are scratch until committed.

use candle_core::{DType, Device, Result, Tensor};

pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: usize,
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
            len: 0,
            capacity,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Write k/v [B, H, t, hd] of `layer` after the current length and return the keys and
    /// values of all positions so far. The length moves only in `advance`, once per forward.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        if self.len + t > self.capacity {
            candle_core::bail!(
                "KV cache full: {} + {} positions exceed its capacity of {}",
                self.len,
                t,
                self.capacity
            );
        }
        self.keys[layer].slice_set(&k.contiguous()?, 2, self.len)?;
        self.values[layer].slice_set(&v.contiguous()?, 2, self.len)?;
        let end = self.len + t;
        Ok((
            self.keys[layer].narrow(2, 0, end)?,
            self.values[layer].narrow(2, 0, end)?,
        ))
    }

    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Roll back to `len` positions (no data moves; later writes overwrite the scratch).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}
