//! AdamW with decoupled weight decay on matrices only, global-norm clipping, the learning-rate
//! schedule and the EMA of weights. State is plain tensors so checkpoints can hold it; on CPU
//! f32 the moments, weights and EMA are updated in place in one pass (`kernels::optim`), else
//! with candle ops.

use crate::config::{LrSchedule, TrainConfig};
use crate::kernels::optim as kernel;
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

    /// One step on `grads` times `grad_scale` (clipping's factor, see [`clip_scale`]).
    pub fn step(
        &mut self,
        params: &Params,
        grads: &[Tensor],
        lr: f64,
        cfg: &TrainConfig,
        grad_scale: f64,
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
            let decay = if self.decay[i] { cfg.weight_decay } else { 0.0 };
            let w = var.as_tensor();
            if kernel::supported(&[w, g, &self.m[i], &self.v[i]]) {
                let s = kernel::AdamW {
                    beta1: b1,
                    beta2: b2,
                    bias1: bc1,
                    bias2: bc2,
                    eps: cfg.eps,
                    lr,
                    weight_decay: decay,
                    grad_scale,
                };
                kernel::adamw(w, g, &self.m[i], &self.v[i], s)?;
                continue;
            }
            let scaled;
            let g = match grad_scale == 1.0 {
                true => g,
                false => {
                    scaled = (g * grad_scale)?;
                    &scaled
                }
            };
            self.m[i] = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
            self.v[i] = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let denom = ((&self.v[i] / bc2)?.sqrt()? + cfg.eps)?;
            let update = ((&self.m[i] / bc1)? / denom)?;
            let mut w = w.detach();
            if decay > 0.0 {
                w = (w * (1.0 - lr * decay))?;
            }
            var.set(&(w - (update * lr)?)?)?;
        }
        Ok(())
    }
}

/// The global L2 norm of the gradients (f64 sums; one read pass per gradient on CPU f32).
pub fn grad_norm(grads: &[Tensor]) -> Result<f64> {
    let mut sq = 0.0f64;
    for g in grads {
        sq += match kernel::supported(&[g]) {
            true => kernel::sum_squares(g)?,
            false => g
                .to_dtype(candle_core::DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?,
        };
    }
    Ok(sq.sqrt())
}

/// The factor that brings gradients of global norm `norm` within `max_norm` (0 = off): 1
/// when they already are. The optimizer applies it as it reads them.
pub fn clip_scale(norm: f64, max_norm: f64) -> f64 {
    match max_norm > 0.0 && norm > max_norm {
        true => max_norm / (norm + 1e-6),
        false => 1.0,
    }
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
            if kernel::supported(&[e, v.as_tensor()]) {
                kernel::ema(e, v.as_tensor(), d)?;
                continue;
            }
            *e = ((&*e * d)? + (v.as_tensor().detach() * (1.0 - d))?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::rng::test_values;
    use candle_core::{DType, Device, Var};

    /// Three AdamW steps (a matrix with decay, a vector without) and an EMA update in `dtype`,
    /// against the textbook update in f64. f32 takes the fused in-place pass, f64 the candle ops.
    fn steps_match_the_textbook(dtype: DType) {
        let dev = Device::Cpu;
        // Larger than one parallel chunk, so the split is exercised.
        let shapes = [vec![130, 200], vec![50]];
        let init: Vec<Vec<f64>> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| test_values(s.iter().product(), 10 + i as u64))
            .collect();
        let vars = shapes
            .iter()
            .zip(&init)
            .map(|(s, x)| {
                Var::from_tensor(
                    &Tensor::new(x.as_slice(), &dev)?
                        .reshape(s.as_slice())?
                        .to_dtype(dtype)?,
                )
            })
            .collect::<Result<Vec<_>>>()
            .unwrap();
        let params = Params {
            names: vec!["layers.0.w".into(), "layers.0.norm".into()],
            vars,
        };
        let cfg = TrainConfig {
            weight_decay: 0.1,
            ..TrainConfig::default()
        };
        let mut opt = AdamW::new(&params, &cfg).unwrap();
        let mut ema = Ema::new(&params, 0.9).unwrap();
        let mut want = init.clone();
        let mut mv: Vec<(Vec<f64>, Vec<f64>)> = init
            .iter()
            .map(|x| (vec![0.0; x.len()], vec![0.0; x.len()]))
            .collect();
        let mut avg = init.clone();
        for t in 1..=3 {
            let lr = 1e-2 * t as f64;
            let grads: Vec<Vec<f64>> = init
                .iter()
                .enumerate()
                .map(|(i, x)| test_values(x.len(), 100 * t + i as u64))
                .collect();
            let gt = grads
                .iter()
                .zip(&shapes)
                .map(|(g, s)| {
                    Tensor::new(g.as_slice(), &dev)?
                        .reshape(s.as_slice())?
                        .to_dtype(dtype)
                })
                .collect::<Result<Vec<_>>>()
                .unwrap();
            // Step 2 clips: its gradients are read at half their size.
            let scale = if t == 2 { 0.5 } else { 1.0 };
            opt.step(&params, &gt, lr, &cfg, scale).unwrap();
            ema.update(&params, 100).unwrap();
            let (bc1, bc2) = (
                1.0 - cfg.beta1.powi(t as i32),
                1.0 - cfg.beta2.powi(t as i32),
            );
            for (i, w) in want.iter_mut().enumerate() {
                let decay = if shapes[i].len() >= 2 {
                    cfg.weight_decay
                } else {
                    0.0
                };
                let (m, v) = &mut mv[i];
                for j in 0..w.len() {
                    let g = grads[i][j] * scale;
                    m[j] = cfg.beta1 * m[j] + (1.0 - cfg.beta1) * g;
                    v[j] = cfg.beta2 * v[j] + (1.0 - cfg.beta2) * g * g;
                    let update = (m[j] / bc1) / ((v[j] / bc2).sqrt() + cfg.eps);
                    w[j] = w[j] * (1.0 - lr * decay) - lr * update;
                    avg[i][j] = avg[i][j] * 0.9 + w[j] * 0.1;
                }
            }
        }
        let flat = |t: &Tensor| t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>();
        for i in 0..shapes.len() {
            let got = flat(params.vars[i].as_tensor()).unwrap();
            let got_ema = flat(&ema.weights[i]).unwrap();
            for j in 0..got.len() {
                // f32 rounding of values near one; the update itself is up to lr in size.
                assert!((got[j] - want[i][j]).abs() < 1e-5, "{dtype:?} w[{i}][{j}]");
                assert!(
                    (got_ema[j] - avg[i][j]).abs() < 1e-5,
                    "{dtype:?} ema[{i}][{j}]"
                );
            }
        }
    }

    #[test]
    fn the_gradient_norm_and_clipping_factor_are_the_textbook_ones() {
        let dev = Device::Cpu;
        // One gradient larger than a parallel chunk, one small; f32 takes the kernel.
        let vals: Vec<Vec<f64>> = [40_000, 7]
            .iter()
            .map(|&n| test_values(n, n as u64))
            .collect();
        let want = vals
            .iter()
            .flatten()
            .map(|x| (*x as f32 as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        for dtype in [DType::F32, DType::F64] {
            let grads: Vec<Tensor> = vals
                .iter()
                .map(|v| Tensor::new(v.as_slice(), &dev)?.to_dtype(dtype))
                .collect::<Result<_>>()
                .unwrap();
            let got = grad_norm(&grads).unwrap();
            assert!(
                (got - want).abs() < 1e-9 * want,
                "{dtype:?}: {got} vs {want}"
            );
        }
        assert_eq!(clip_scale(0.5, 1.0), 1.0);
        assert_eq!(clip_scale(4.0, 0.0), 1.0);
        assert!((clip_scale(4.0, 1.0) - 1.0 / (4.0 + 1e-6)).abs() < 1e-15);
    }

    #[test]
    fn the_fused_f32_step_matches_the_textbook_adamw() {
        steps_match_the_textbook(DType::F32);
    }

    #[test]
    fn the_candle_op_step_matches_the_textbook_adamw() {
        steps_match_the_textbook(DType::F64);
    }
}
