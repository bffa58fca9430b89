//! Training data order: the token stream is cut into windows of seq_len tokens; each epoch
//! shifts the cut by a seeded offset and visits the windows in a seeded permutation. The
//! order is a pure function of (seed, cursor), so the cursor is the whole data position.

use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;

pub struct Batches<'a> {
    tokens: &'a [u32],
    seq_len: usize,
    n_windows: usize,
    seed: u64,
    epoch: Option<u64>,
    offset: usize,
    order: Vec<u32>,
}

/// A deterministic RNG for one purpose at one point of the run.
pub fn derived_rng(seed: u64, stream: u64, index: u64) -> rand_pcg::Pcg64 {
    let mix = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(stream.wrapping_mul(0xD1B5_4A32_D192_ED03))
        .wrapping_add(index.wrapping_mul(0x94D0_49BB_1331_11EB));
    rand_pcg::Pcg64::seed_from_u64(mix)
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
        let mut rng = derived_rng(self.seed, 1, epoch);
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

/// Non-overlapping evaluation windows from the start of a split (at most `max` of them).
pub fn eval_windows(tokens: &[u32], seq_len: usize, max: Option<usize>) -> Vec<&[u32]> {
    let n = tokens.len() / seq_len;
    if n == 0 && tokens.len() >= 2 {
        return vec![tokens];
    }
    let n = max.map_or(n, |m| n.min(m));
    (0..n)
        .map(|i| &tokens[i * seq_len..(i + 1) * seq_len])
        .collect()
}
