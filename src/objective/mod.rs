//! An objective is the whole difference between ARM, CARD and the diffusion baselines: how a
//! clean batch is corrupted, which attention the model uses, how logits become a loss, and how
//! held-out text is scored (exactly, or by a bound with its estimator).

pub mod arm;
pub mod bd3lm;
pub mod card;
pub mod context_weights;
pub mod mdlm;

use crate::config::{Config, MdlmConfig, ObjectiveKind};
use crate::model::{Attention, Transformer};
use crate::noise::{mask_counts, Spacing};
use candle_core::{Result, Tensor};
use rand::RngCore;
use std::ops::Range;

pub use arm::Arm;
pub use bd3lm::Bd3lm;
pub use card::Card;
pub use context_weights::context_weights;
pub use mdlm::Mdlm;

/// One corrupted batch, in plain vectors (row-major [batch, len]).
#[derive(Debug, Clone)]
pub struct NoisyBatch {
    pub batch: usize,
    /// Model input ids [batch, input_len]: L−1 shifted inputs for ARM and CARD, the whole
    /// x_t (L tokens) for the diffusion baselines (see `Objective::shifted`).
    pub input: Vec<u32>,
    pub input_len: usize,
    /// Target ids [batch, input_len], aligned with the input positions.
    pub targets: Vec<u32>,
    /// Per-target weights (0 = unsupervised).
    pub weights: Vec<f32>,
    /// The loss is Σ w·CE / denom.
    pub denom: f64,
    /// The noise levels drawn: one per sequence (BD3LM: per block; count form: k/n per unit).
    pub t: Vec<f64>,
}

impl NoisyBatch {
    /// A batch denoised in place (MDLM, BD3LM): x_t and weights `masked` of clean rows x0
    /// [rows, len], targets x0, the loss normalised per token of x0.
    pub fn unshifted(x0: &[u32], len: usize, masked: (Vec<u32>, Vec<f32>), t: Vec<f64>) -> Self {
        let (input, weights) = masked;
        Self {
            batch: x0.len() / len,
            input,
            input_len: len,
            targets: x0.to_vec(),
            weights,
            denom: x0.len() as f64,
            t,
        }
    }
}

impl NoisyBatch {
    /// Rows `rows` of this batch, keeping the whole batch's normaliser, so the slices' losses
    /// sum to the whole batch's loss (one rank's share in data-parallel training).
    pub fn rows(&self, rows: Range<usize>) -> Self {
        let len = self.input_len;
        let per_row_t = self.t.len() / self.batch.max(1);
        Self {
            batch: rows.len(),
            input: self.input[rows.start * len..rows.end * len].to_vec(),
            input_len: len,
            targets: self.targets[rows.start * len..rows.end * len].to_vec(),
            weights: self.weights[rows.start * len..rows.end * len].to_vec(),
            denom: self.denom,
            t: self.t[rows.start * per_row_t..rows.end * per_row_t].to_vec(),
        }
    }
}

/// How an objective's held-out text is scored.
pub enum HeldOut<'a> {
    /// The exact causal likelihood (ARM, CARD).
    Exact,
    /// An upper bound on the NLL, estimated by noise draws (MDLM, BD3LM).
    Bound(&'a dyn Bound),
}

pub trait Objective: Send + Sync {
    fn kind(&self) -> ObjectiveKind;

    /// Corrupt clean sequences x0 ([batch, seq_len] row-major) for training. `t` fixes the
    /// noise levels; otherwise they are drawn from `rng`.
    fn corrupt(
        &self,
        x0: &[u32],
        batch: usize,
        seq_len: usize,
        t: Option<&[f64]>,
        rng: &mut dyn RngCore,
    ) -> NoisyBatch;

    /// Scalar training loss of a corrupted batch.
    fn loss(&self, model: &Transformer, batch: &NoisyBatch) -> Result<Tensor> {
        shifted_loss(model, batch)
    }

    /// True when target i is the token after input i (ARM, CARD: causal next-token
    /// prediction); false when the model denoises in place, target i being x_0 at input
    /// position i (MDLM, BD3LM).
    fn shifted(&self) -> bool {
        true
    }

    fn held_out(&self) -> HeldOut<'_> {
        HeldOut::Exact
    }
}

/// A likelihood bound estimated by noise draws: the diffusion NELBO in its count form
/// (`noise::counts`), over the objective's diffusion units, without training's clipping.
pub trait Bound: Send + Sync {
    /// The diffusion units of positions start..end of one sequence (each masks k ~ U{1..n}).
    fn units(&self, start: usize, end: usize) -> Vec<Range<usize>>;

    /// Per-sequence Σ_masked w·CE in nats (one draw of the bound) of an unshifted batch.
    fn row_nelbo(&self, model: &Transformer, batch: &NoisyBatch) -> Result<Vec<f64>>;

    /// The diffusion settings (the draws' counts are stratified over a batch's units when
    /// `antithetic`) and the [MASK] id.
    fn masking(&self) -> (&MdlmConfig, u32);

    /// One draw over clean windows x0 [batch, len].
    fn draw(&self, x0: &[u32], batch: usize, len: usize, rng: &mut dyn RngCore) -> NoisyBatch {
        draw_spans(self, x0, len, &vec![(0, len); batch], rng)
    }

    /// `rows` draws for one window whose first `start` tokens are clean context: only the
    /// continuation is masked (its log-likelihood bound given the context).
    fn draw_continuation(
        &self,
        window: &[u32],
        start: usize,
        rows: usize,
        rng: &mut dyn RngCore,
    ) -> NoisyBatch {
        let x0 = window.repeat(rows);
        draw_spans(
            self,
            &x0,
            window.len(),
            &vec![(start, window.len()); rows],
            rng,
        )
    }
}

/// A draw of `bound` over x0 ([rows, len]), row r masked within positions spans[r].
fn draw_spans<B: Bound + ?Sized>(
    bound: &B,
    x0: &[u32],
    len: usize,
    spans: &[(usize, usize)],
    rng: &mut dyn RngCore,
) -> NoisyBatch {
    let units: Vec<Range<usize>> = spans
        .iter()
        .enumerate()
        .flat_map(|(r, &(a, b))| {
            let at = r * len;
            bound
                .units(a, b)
                .into_iter()
                .map(move |u| at + u.start..at + u.end)
        })
        .collect();
    let (cfg, mask_id) = bound.masking();
    let spacing = Spacing::stratified_if(cfg.antithetic);
    let (input, weights, t) = mask_counts(x0, &units, spacing, mask_id, rng);
    NoisyBatch::unshifted(x0, len, (input, weights), t)
}

pub fn build(cfg: &Config, mask_id: u32) -> Box<dyn Objective> {
    match cfg.train.objective {
        ObjectiveKind::Arm => Box::new(Arm),
        ObjectiveKind::Card => Box::new(Card::new(cfg, mask_id)),
        ObjectiveKind::Mdlm => Box::new(Mdlm::new(cfg, mask_id)),
        ObjectiveKind::Bd3lm => Box::new(Bd3lm::new(cfg, mask_id)),
    }
}

/// Causal next-token loss: logits at input position i are scored against targets[i].
pub fn shifted_loss(model: &Transformer, nb: &NoisyBatch) -> Result<Tensor> {
    let input = Tensor::from_slice(&nb.input, (nb.batch, nb.input_len), model.device())?;
    model.loss(
        &input,
        Attention::Causal,
        &nb.targets,
        &nb.weights,
        nb.denom,
    )
}

/// Split clean sequences into the shifted pair (x[..L−1], x0[1..]) shared by ARM and CARD.
pub(crate) fn shift(
    x0: &[u32],
    input_src: &[u32],
    batch: usize,
    seq_len: usize,
) -> (Vec<u32>, Vec<u32>) {
    let mut input = Vec::with_capacity(batch * (seq_len - 1));
    let mut targets = Vec::with_capacity(batch * (seq_len - 1));
    for b in 0..batch {
        let row = b * seq_len;
        input.extend_from_slice(&input_src[row..row + seq_len - 1]);
        targets.extend_from_slice(&x0[row + 1..row + seq_len]);
    }
    (input, targets)
}
