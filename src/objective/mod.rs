//! An objective is the whole difference between ARM, CARD and the diffusion baselines: how a
//! clean batch is corrupted, which attention the model uses, and how logits become a loss.

pub mod arm;
pub mod bd3lm;
pub mod card;
pub mod context_weights;
pub mod mdlm;

use crate::config::{Config, ObjectiveKind};
use crate::model::{ops, Attention, Transformer};
use candle_core::{Result, Tensor};
use rand::RngCore;

pub use arm::Arm;
pub use bd3lm::{bd3lm_bias, bd3lm_mask, Bd3lm};
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
    /// Noise level of each sequence (BD3LM: of each block, [batch, n_blocks]).
    pub t: Vec<f64>,
    /// Mask pattern of x_t over the full sequences [batch, seq_len].
    pub mask: Vec<bool>,
}

pub trait Objective: Send + Sync {
    fn kind(&self) -> ObjectiveKind;

    /// Corrupt clean sequences x0 ([batch, seq_len] row-major). `t` fixes the noise levels
    /// (evaluation); otherwise they are drawn from `rng`.
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

    /// Per-sequence NELBO of one noise draw, Σ_masked w(t)·CE in nats, for objectives whose
    /// loss is a likelihood bound (MDLM, BD3LM); None for the others.
    fn row_nelbo(&self, _model: &Transformer, _batch: &NoisyBatch) -> Result<Option<Vec<f64>>> {
        Ok(None)
    }
}

pub fn build(cfg: &Config, mask_id: u32) -> Box<dyn Objective> {
    match cfg.train.objective {
        ObjectiveKind::Arm => Box::new(Arm),
        ObjectiveKind::Card => Box::new(Card::new(cfg, mask_id)),
        ObjectiveKind::Mdlm => Box::new(Mdlm::new(cfg, mask_id)),
        ObjectiveKind::Bd3lm => Box::new(Bd3lm::new(cfg, mask_id)),
    }
}

/// The objective whose noise draws estimate the likelihood bound: for MDLM and BD3LM the
/// unclipped NELBO in its count form (a uniform number of masks per sequence or block,
/// weighted n/k: the same bound as 1/t weights over t ∈ (0, 1], with less variance); the
/// others as `build`.
pub fn build_for_bound(cfg: &Config, mask_id: u32) -> Box<dyn Objective> {
    match cfg.train.objective {
        ObjectiveKind::Mdlm => Box::new(Mdlm {
            count_form: true,
            ..Mdlm::new(cfg, mask_id)
        }),
        ObjectiveKind::Bd3lm => {
            let mut c = cfg.clone();
            c.bd3lm.clip_low = 0.0;
            c.bd3lm.clip_high = 1.0;
            let mut b = Bd3lm::new(&c, mask_id);
            b.count_form = true;
            Box::new(b)
        }
        _ => build(cfg, mask_id),
    }
}

/// Causal next-token loss: logits at input position i are scored against targets[i].
pub fn shifted_loss(model: &Transformer, nb: &NoisyBatch) -> Result<Tensor> {
    let dev = model.device();
    let n = nb.batch * nb.input_len;
    let input = Tensor::from_slice(&nb.input, (nb.batch, nb.input_len), dev)?;
    let logits = model.forward(&input, Attention::Causal, None)?;
    let targets = Tensor::from_slice(&nb.targets, n, dev)?;
    let weights = Tensor::from_slice(&nb.weights, n, dev)?.to_dtype(model.dtype())?;
    ops::weighted_nll(&logits, &targets, &weights, nb.denom)
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
