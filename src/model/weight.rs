//! A weight as the candle backend holds it: a dense tensor (training, and the f32 reference)
//! or a matrix kept in its GGUF blocks (quantized decoding), multiplied by candle's
//! quantized matmul without ever being expanded.

use crate::kernels::quant::Blocks;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Result, Tensor, D};
use std::sync::Arc;

#[derive(Clone)]
pub enum Weight {
    Dense(Tensor),
    Quant(Arc<QMatrix>),
}

/// A quantized matrix [rows, cols]: row blocks of one or more parts stacked in order (a fused
/// projection whose parts came in different block types keeps them apart).
pub struct QMatrix {
    parts: Vec<(QMatMul, GgmlDType, usize)>,
    cols: usize,
}

impl QMatrix {
    /// Stack `parts` (each [rows_i, cols]) by rows.
    pub fn new(parts: Vec<QTensor>) -> Result<Self> {
        let Some(first) = parts.first() else {
            candle_core::bail!("a quantized matrix needs at least one part");
        };
        let cols = first.shape().dims2()?.1;
        let mut out = Vec::with_capacity(parts.len());
        for p in parts {
            let (rows, c) = p.shape().dims2()?;
            if c != cols {
                candle_core::bail!("quantized parts of {c} and {cols} columns cannot stack");
            }
            let dtype = p.dtype();
            // candle expands bf16 to f32 on load; kept as blocks, the host kernel reads half
            // the bytes per token (and candle's bf16 matmul serves the other paths).
            let m = match dtype {
                GgmlDType::BF16 => QMatMul::QTensor(Arc::new(p)),
                _ => QMatMul::from_qtensor(p)?,
            };
            out.push((m, dtype, rows));
        }
        Ok(Self { parts: out, cols })
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.parts.iter().map(|p| p.2).sum(), self.cols)
    }

    /// The block types of the parts, e.g. "q4_1" or "q4_k+q6_k".
    pub fn dtype_name(&self) -> String {
        let mut names: Vec<String> = self
            .parts
            .iter()
            .map(|p| format!("{:?}", p.1).to_lowercase())
            .collect();
        names.dedup();
        names.join("+")
    }

    /// Bytes the blocks take.
    pub fn size_in_bytes(&self) -> usize {
        self.parts
            .iter()
            .map(|(_, dtype, rows)| rows * self.cols / dtype.block_size() * dtype.type_size())
            .sum()
    }

    /// The parts as (block type, bytes, rows) for the host kernel, or None where one is a
    /// type it does not read.
    pub fn host_parts(&self) -> Option<Vec<(Blocks, &[u8], usize)>> {
        self.parts
            .iter()
            .map(|(m, dtype, rows)| {
                let QMatMul::QTensor(q) = m else { return None };
                let std::borrow::Cow::Borrowed(bytes) = q.data().ok()? else {
                    return None;
                };
                Some((Blocks::of(*dtype)?, bytes, *rows))
            })
            .collect()
    }

    /// x [.., cols] · selfᵀ → [.., rows], activations in f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let outs = self
            .parts
            .iter()
            .map(|(m, _, _)| x.apply(m))
            .collect::<Result<Vec<_>>>()?;
        if outs.len() == 1 {
            return Ok(outs.into_iter().next().expect("one part"));
        }
        Tensor::cat(&outs, D::Minus1)
    }

    /// Rows `ids` expanded to f32 (the embedding lookup).
    pub fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        if let [(m, _, _)] = self.parts.as_slice() {
            return m.embedding(ids);
        }
        let ids = ids.flatten_all()?.to_vec1::<u32>()?;
        let mut out = Vec::with_capacity(ids.len());
        for &id in &ids {
            let (mut row, mut start) = (id as usize, 0);
            let part = self.parts.iter().find(|p| {
                if row < p.2 {
                    return true;
                }
                row -= p.2;
                start += p.2;
                false
            });
            let Some((m, _, _)) = part else {
                candle_core::bail!("row {id} is outside a matrix of {} rows", start);
            };
            let one = Tensor::from_slice(&[row as u32], 1, &Device::Cpu)?;
            out.push(m.embedding(&one)?);
        }
        Tensor::cat(&out, 0)
    }

    /// The whole matrix expanded to f32.
    pub fn dequantize(&self) -> Result<Tensor> {
        let parts = self
            .parts
            .iter()
            .map(|(m, _, _)| match m {
                QMatMul::QTensor(q) => q.dequantize(&Device::Cpu),
                QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.to_dtype(DType::F32),
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)
    }
}

impl Weight {
    /// The tensor of a dense weight; norm weights and biases are always dense.
    pub fn dense(&self) -> Result<&Tensor> {
        match self {
            Weight::Dense(t) => Ok(t),
            Weight::Quant(_) => {
                candle_core::bail!("a quantized weight where a dense one is needed")
            }
        }
    }

    pub fn dims(&self) -> Vec<usize> {
        match self {
            Weight::Dense(t) => t.dims().to_vec(),
            Weight::Quant(q) => {
                let (r, c) = q.dims();
                vec![r, c]
            }
        }
    }

    /// x · selfᵀ.
    pub fn linear(&self, x: &Tensor) -> Result<Tensor> {
        self.linear_in(x, crate::config::ComputeDtype::F32)
    }

    /// x · selfᵀ, a training product in `compute`.
    pub fn linear_in(&self, x: &Tensor, compute: crate::config::ComputeDtype) -> Result<Tensor> {
        match self {
            Weight::Dense(w) => super::ops::linear_in(x, w, compute),
            Weight::Quant(q) => q.forward(x),
        }
    }

    /// Rows `ids` [B, T] as [B, T, cols].
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        let rows = match self {
            Weight::Dense(w) => w.index_select(&flat, 0)?,
            Weight::Quant(q) => q.rows(&flat)?,
        };
        let cols = rows.dim(1)?;
        rows.reshape((b, t, cols))
    }

    /// The weight as f32 (a quantized one expanded).
    pub fn to_dense(&self) -> Result<Tensor> {
        match self {
            Weight::Dense(t) => t.to_dtype(DType::F32),
            Weight::Quant(q) => q.dequantize(),
        }
    }
}
