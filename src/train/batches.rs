//! Training data order: the token stream is cut into windows of seq_len tokens; each epoch
//! shifts the cut by a seeded offset and visits the windows in a seeded permutation. The
//! order is a pure function of (seed, cursor), so the cursor is the whole data position.

use crate::runtime::rng::{rng, Stream};
use anyhow::{bail, Result};
use rand::seq::SliceRandom;

pub struct Batches<'a> {
    tokens: &'a [u32],
    seq_len: usize,
    n_windows: usize,
    seed: u64,
    epoch: Option<u64>,
    offset: usize,
    order: Vec<u32>,
}

impl<'a> Batches<'a> {
    pub fn new(tokens: &'a [u32], seq_len: usize, seed: u64) -> Result<Self> {
        let whole = tokens.len() / seq_len;
        if whole == 0 {
            bail!(
                "the training split has {} tokens, fewer than one sequence of {seq_len}",
                tokens.len()
            );
        }
        // One window is left free so every epoch's random shift still fits.
        let n_windows = if whole >= 2 { whole - 1 } else { 1 };
        Ok(Self {
            tokens,
            seq_len,
            n_windows,
            seed,
            epoch: None,
            offset: 0,
            order: Vec::new(),
        })
    }

    pub fn windows_per_epoch(&self) -> usize {
        self.n_windows
    }

    fn start_epoch(&mut self, epoch: u64) {
        let mut rng = rng(self.seed, Stream::DataOrder, epoch);
        let slack = self.tokens.len() - self.n_windows * self.seq_len;
        self.offset = if slack > 0 {
            rand::Rng::random_range(&mut rng, 0..=slack.min(self.seq_len - 1))
        } else {
            0
        };
        self.order = (0..self.n_windows as u32).collect();
        self.order.shuffle(&mut rng);
        self.epoch = Some(epoch);
    }

    /// The next `batch` sequences ([batch, seq_len] row-major), advancing `cursor`.
    pub fn next(&mut self, cursor: &mut u64, batch: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(batch * self.seq_len);
        for _ in 0..batch {
            let epoch = *cursor / self.n_windows as u64;
            if self.epoch != Some(epoch) {
                self.start_epoch(epoch);
            }
            let w = self.order[(*cursor % self.n_windows as u64) as usize] as usize;
            let start = self.offset + w * self.seq_len;
            out.extend_from_slice(&self.tokens[start..start + self.seq_len]);
            *cursor += 1;
        }
        out
    }
}
