//! AdamW with decoupled weight decay on matrices only, global-norm clipping, the learning-rate
//! schedule and the EMA of weights. State is plain tensors so checkpoints can hold it.

use crate::config::{LrSchedule, TrainConfig};
use crate::model::Params;
use candle_core::{Result, Tensor};

pub struct AdamW {
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Optimizer steps taken (for bias correction).
    pub t: usize,
    decay: Vec<bool>,
    /// Parameters the config keeps fixed (`train.freeze_embeddings`, `train.freeze_layers`).
    pub frozen: Vec<bool>,
}

/// Whether the config keeps parameter `name` fixed.
pub fn is_frozen(name: &str, cfg: &TrainConfig) -> bool {
    if cfg.freeze_embeddings && name == "embed.weight" {
        return true;
    }
    let layer = name
        .strip_prefix("layers.")
        .and_then(|r| r.split('.').next())
        .and_then(|i| i.parse::<usize>().ok());
    layer.is_some_and(|i| i < cfg.freeze_layers)
}

impl AdamW {
    pub fn new(params: &Params, cfg: &TrainConfig) -> Result<Self> {
        let zeros = |v: &candle_core::Var| v.as_tensor().zeros_like();
        Ok(Self {
            m: params.vars.iter().map(zeros).collect::<Result<_>>()?,
            v: params.vars.iter().map(zeros).collect::<Result<_>>()?,
            t: 0,
            decay: params.vars.iter().map(|v| v.rank() >= 2).collect(),
            frozen: params.names.iter().map(|n| is_frozen(n, cfg)).collect(),
        })
    }

    /// Restore moments saved by a checkpoint.
    pub fn with_state(
        params: &Params,
        cfg: &TrainConfig,
        m: Vec<Tensor>,
        v: Vec<Tensor>,
        t: usize,
    ) -> Result<Self> {
        let mut opt = Self::new(params, cfg)?;
        opt.m = m;
        opt.v = v;
        opt.t = t;
        Ok(opt)
    }

    pub fn step(
        &mut self,
        params: &Params,
        grads: &[Tensor],
        lr: f64,
        cfg: &TrainConfig,
    ) -> Result<()> {
        self.t += 1;
        let (b1, b2) = (cfg.beta1, cfg.beta2);
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        for (i, var) in params.vars.iter().enumerate() {
            if self.frozen[i] {
                continue;
            }
            let g = &grads[i];
            self.m[i] = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
            self.v[i] = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let denom = ((&self.v[i] / bc2)?.sqrt()? + cfg.eps)?;
            let update = ((&self.m[i] / bc1)? / denom)?;
            let mut w = var.as_tensor().detach();
            if self.decay[i] && cfg.weight_decay > 0.0 {
                w = (w * (1.0 - lr * cfg.weight_decay))?;
            }
            var.set(&(w - (update * lr)?)?)?;
        }
        Ok(())
    }
}

/// Scale gradients so their global L2 norm is at most `max_norm` (0 = off); returns the norm before.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let mut sq = 0.0f64;
    for g in grads.iter() {
        sq += g
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

/// Linear warmup, then cosine decay to lr·min_lr_ratio at max_steps (or constant).
pub fn learning_rate(cfg: &TrainConfig, step: usize) -> f64 {
    if step < cfg.warmup_steps {
        return cfg.lr * (step + 1) as f64 / cfg.warmup_steps as f64;
    }
    match cfg.schedule {
        LrSchedule::Constant => cfg.lr,
        LrSchedule::Cosine => {
            let span = cfg.max_steps.saturating_sub(cfg.warmup_steps).max(1) as f64;
            let progress = ((step - cfg.warmup_steps) as f64 / span).min(1.0);
            let min = cfg.lr * cfg.min_lr_ratio;
            min + 0.5 * (cfg.lr - min) * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

/// Exponential moving average of the weights. The effective decay ramps up as
/// min(decay, (1+n)/(10+n)) so short runs are not dominated by the initialisation.
pub struct Ema {
    pub weights: Vec<Tensor>,
    pub decay: f64,
}

impl Ema {
    pub fn new(params: &Params, decay: f64) -> Result<Self> {
        let weights = params
            .vars
            .iter()
            .map(|v| v.as_tensor().detach().copy())
            .collect::<Result<_>>()?;
        Ok(Self { weights, decay })
    }

    pub fn update(&mut self, params: &Params, step: usize) -> Result<()> {
        let d = self.decay.min((1.0 + step as f64) / (10.0 + step as f64));
        for (e, v) in self.weights.iter_mut().zip(&params.vars) {
            *e = ((&*e * d)? + (v.as_tensor().detach() * (1.0 - d))?)?;
        }
        Ok(())
    }
}
