//! Trainable parameters: named `Var`s in the fixed order of `tensor_specs`.

use super::layer::{tensor_specs, Init, TensorSpec};
use crate::config::ModelConfig;
use anyhow::{bail, Context};
use candle_core::{DType, Device, Result, Tensor, Var};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use std::collections::HashMap;

pub struct Params {
    pub names: Vec<String>,
    pub vars: Vec<Var>,
}

impl Params {
    /// Fresh initialisation, deterministic from `seed`: N(0, init_std) matrices, residual output
    /// projections scaled by 1/sqrt(2·n_layers) (GPT-2), norm weights at one.
    pub fn init(cfg: &ModelConfig, dtype: DType, device: &Device, seed: u64) -> Result<Self> {
        let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
        let mut names = Vec::new();
        let mut vars = Vec::new();
        for spec in tensor_specs(cfg) {
            let (shape, n) = (spec.shape.clone(), spec.shape.iter().product::<usize>());
            let std = match spec.init {
                Init::One | Init::Zero => None,
                Init::Normal => Some(cfg.init_std),
                Init::Residual => Some(cfg.init_std / (2.0 * cfg.n_layers as f64).sqrt()),
            };
            let tensor = match std {
                None if spec.init == Init::Zero => Tensor::zeros(shape, DType::F32, device)?,
                None => Tensor::ones(shape, DType::F32, device)?,
                Some(std) => {
                    let normal = Normal::new(0.0f32, std as f32).expect("finite std");
                    let data: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
                    Tensor::from_vec(data, shape, device)?
                }
            };
            names.push(spec.name);
            vars.push(Var::from_tensor(&tensor.to_dtype(dtype)?)?);
        }
        Ok(Self { names, vars })
    }

    /// Wrap loaded tensors as trainable variables, checking names and shapes.
    pub fn from_map(cfg: &ModelConfig, map: &HashMap<String, Tensor>) -> anyhow::Result<Self> {
        let mut names = Vec::new();
        let mut vars = Vec::new();
        for TensorSpec { name, shape, .. } in tensor_specs(cfg) {
            let t = map
                .get(&name)
                .with_context(|| format!("checkpoint lacks parameter {name}"))?;
            if t.dims() != shape.as_slice() {
                bail!(
                    "parameter {name} has shape {:?}, config expects {:?}",
                    t.dims(),
                    shape
                );
            }
            names.push(name);
            vars.push(Var::from_tensor(t)?);
        }
        if map.len() != names.len() {
            bail!(
                "checkpoint has {} tensors, config expects {}",
                map.len(),
                names.len()
            );
        }
        Ok(Self { names, vars })
    }

    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        match self.names.iter().position(|n| n == name) {
            Some(i) => Ok(self.vars[i].as_tensor().clone()),
            None => candle_core::bail!("no parameter named {name}"),
        }
    }

    /// Plain (untracked) copies of the current values, by name.
    pub fn to_map(&self) -> Result<HashMap<String, Tensor>> {
        self.names
            .iter()
            .zip(&self.vars)
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().detach().copy()?)))
            .collect()
    }

    pub fn count(&self) -> usize {
        self.vars.iter().map(|v| v.elem_count()).sum()
    }
}
