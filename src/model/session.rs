//! A model with a KV cache for the causal decoders: each pass feeds every row its own tokens
//! after its cached prefix and exposes the logits per (row, fed token). It runs on one of two
//! backends, chosen explicitly ([`Backend`]): the host backend for plain f32 CPU models (a
//! pass allocates nothing), candle's forward with a [`KvCache`] for everything else.

use super::visibility::{Tree, TREE_MAX};
use super::{host, Attention, KvCache, Transformer};
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

/// Why a decoder stops on a model whose logits are NaN or infinite (a checksum proves a file
/// intact, not finite): a sampler would have nothing to draw.
pub const NON_FINITE: &str =
    "the model produced non-finite logits (its weights may hold NaN or infinity)";

/// Which implementation of the recipe runs a cached forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Host slices and reused buffers (`model::host`): plain f32 CPU weights only.
    Host,
    /// candle ops with a [`KvCache`]: any device and dtype.
    Candle,
}

impl Backend {
    /// The host backend where it applies, candle elsewhere.
    pub fn for_model(model: &Transformer) -> Self {
        if host::applies(model) {
            Backend::Host
        } else {
            Backend::Candle
        }
    }
}

/// Rows of different lengths padded with `pad` to the longest (at least 1): ids [B, T] and
/// each row's real length.
pub fn padded(inputs: &[Vec<u32>], pad: u32, device: &Device) -> Result<(Tensor, Vec<usize>)> {
    let t = inputs.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
    let valid: Vec<usize> = inputs.iter().map(|r| r.len()).collect();
    let ids: Vec<u32> = inputs
        .iter()
        .flat_map(|r| {
            r.iter()
                .copied()
                .chain(std::iter::repeat_n(pad, t - r.len()))
        })
        .collect();
    Ok((Tensor::from_vec(ids, (inputs.len(), t), device)?, valid))
}

pub struct Session<'m> {
    inner: Inner<'m>,
    /// Positions fed through the model by every pass so far (computed, kept or not).
    fed: usize,
}

enum Inner<'m> {
    Host(Box<host::HostPass<'m>>),
    Candle {
        model: &'m Transformer,
        cache: KvCache,
        /// The last pass's logits [B, T, V], on the host.
        logits: Vec<f32>,
        t: usize,
        pad: u32,
    },
}

impl<'m> Session<'m> {
    /// A session for `batch` rows. `positions`: the most any row will hold (prompt + new
    /// tokens); `scratch`: extra room for a padded window (candle) or a draft tree's
    /// alternatives (host, at most `TREE_MAX`); `pad`: the id padding rows on candle's backend.
    pub fn new(
        model: &'m Transformer,
        backend: Backend,
        batch: usize,
        positions: usize,
        scratch: usize,
        pad: u32,
    ) -> Result<Self> {
        let c = &model.cfg;
        let inner = match backend {
            Backend::Host => {
                // The scratch holds a tree's alternatives beside the positions themselves.
                let capacity = positions.min(c.max_seq_len) + scratch.min(TREE_MAX);
                match host::HostPass::new(model, batch, capacity) {
                    Some(p) => Inner::Host(Box::new(p)),
                    None => bail!("the host backend needs plain f32 CPU weights"),
                }
            }
            // Sized by what the call needs, not the model's context: a long-context model
            // serving short requests would otherwise hold its whole context per row.
            Backend::Candle => Inner::Candle {
                model,
                cache: model.kv_cache(batch, positions.min(c.max_seq_len) + scratch)?,
                logits: Vec::new(),
                t: 0,
                pad,
            },
        };
        Ok(Self { inner, fed: 0 })
    }

    /// Positions each row's cache holds room for.
    pub fn capacity(&self) -> usize {
        match &self.inner {
            Inner::Host(p) => p.capacity(),
            Inner::Candle { cache, .. } => cache.capacity(),
        }
    }

    /// Positions fed through the model by every pass so far.
    pub fn fed(&self) -> usize {
        self.fed
    }

    /// One causal pass: row r feeds `inputs[r]` (possibly empty) after its cached prefix.
    pub fn forward(&mut self, inputs: &[Vec<u32>]) -> Result<()> {
        self.pass(inputs, None)?;
        self.check_finite(inputs)
    }

    /// One pass where row r feeds `inputs[r]` as the tree `trees[r]` (None: a chain) after
    /// its cached prefix (see [`Tree`]); every fed token's keys/values join the cache in
    /// feeding order, to be kept or rolled back like a chain's.
    pub fn forward_tree(&mut self, inputs: &[Vec<u32>], trees: &[Option<&Tree>]) -> Result<()> {
        let shaped = |(tree, input): (&Option<&Tree>, &Vec<u32>)| {
            tree.is_none_or(|t| t.depth.len() == input.len())
        };
        if trees.len() != inputs.len() || !trees.iter().zip(inputs).all(shaped) {
            bail!("a tree pass needs one tree per row and one node per fed token");
        }
        self.pass(inputs, Some(trees))?;
        self.check_finite(inputs)
    }

    fn check_finite(&self, inputs: &[Vec<u32>]) -> Result<()> {
        // NaN or infinite logits would leave a sampler nothing to draw.
        for (r, input) in inputs.iter().enumerate() {
            for i in 0..input.len() {
                if !self.logits(r, i).iter().all(|x| x.is_finite()) {
                    bail!(NON_FINITE);
                }
            }
        }
        Ok(())
    }

    /// A pass of chains (`trees` None) or of trees.
    fn pass(&mut self, inputs: &[Vec<u32>], trees: Option<&[Option<&Tree>]>) -> Result<()> {
        self.fed += inputs.iter().map(|i| i.len()).sum::<usize>();
        match &mut self.inner {
            Inner::Host(p) => match trees {
                Some(trees) => p.forward_tree(inputs, trees),
                None => p.forward(inputs),
            },
            Inner::Candle {
                model,
                cache,
                logits,
                t,
                pad,
            } => {
                let (ids, valid) = padded(inputs, *pad, model.device())?;
                let l = match trees {
                    Some(trees) => model.forward_tree(&ids, &valid, trees, cache)?,
                    None => model.forward_padded(&ids, &valid, Attention::Causal, Some(cache))?,
                };
                *t = l.dim(1)?;
                *logits = l.flatten_all()?.to_vec1::<f32>()?;
                Ok(())
            }
        }
    }

    pub fn lens(&self) -> &[usize] {
        match &self.inner {
            Inner::Host(p) => p.lens(),
            Inner::Candle { cache, .. } => cache.lens(),
        }
    }

    pub fn truncate_row(&mut self, row: usize, len: usize) {
        match &mut self.inner {
            Inner::Host(p) => p.truncate_row(row, len),
            Inner::Candle { cache, .. } => cache.truncate_row(row, len),
        }
    }

    /// Logits of the last pass for row `row` after its `i`-th fed token.
    pub fn logits(&self, row: usize, i: usize) -> &[f32] {
        match &self.inner {
            Inner::Host(p) => p.logits(row, i),
            Inner::Candle {
                model, logits, t, ..
            } => {
                let v = model.cfg.vocab_size;
                let at = (row * t + i) * v;
                &logits[at..at + v]
            }
        }
    }
}
