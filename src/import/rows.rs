//! Row surgery on matrices in GGUF blocks: a row is a whole number of blocks, so reordering,
//! stacking and appending rows moves bytes and never re-quantizes what the file holds.

use crate::checkpoint::gguf::{quantize, QTensors};
use anyhow::{bail, Result};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Tensor};

fn row_bytes(t: &QTensor) -> Result<usize> {
    let (_, cols) = t.shape().dims2()?;
    let dtype = t.dtype();
    if !cols.is_multiple_of(dtype.block_size()) {
        bail!("rows of {cols} do not split into {dtype:?} blocks");
    }
    Ok(cols / dtype.block_size() * dtype.type_size())
}

fn from_bytes(bytes: Vec<u8>, dtype: GgmlDType, shape: (usize, usize)) -> Result<QTensor> {
    let storage = QStorage::from_data(std::borrow::Cow::Owned(bytes), &Device::Cpu, dtype)?;
    Ok(QTensor::new(storage, shape)?)
}

/// llama.cpp's RoPE row order of a q or k projection with `heads` heads, or (`interleave`
/// false) back from it: within each head, file row 2i + j holds original row j·(hd/2) + i.
pub fn permute_rope(t: &QTensor, heads: usize, interleave: bool) -> Result<QTensor> {
    let (n, cols) = t.shape().dims2()?;
    let hd = n / heads.max(1);
    if heads == 0 || !n.is_multiple_of(heads) || !hd.is_multiple_of(2) {
        bail!("a projection of {n} rows does not split into {heads} heads of even width");
    }
    let rb = row_bytes(t)?;
    let data = t.data()?;
    let mut out = Vec::with_capacity(data.len());
    let half = hd / 2;
    for h in 0..heads {
        for r in 0..hd {
            // Output row r of head h comes from:
            let src = if interleave {
                (r % 2) * half + r / 2
            } else {
                2 * (r % half) + r / half
            };
            let src = h * hd + src;
            out.extend_from_slice(&data[src * rb..(src + 1) * rb]);
        }
    }
    from_bytes(out, t.dtype(), (n, cols))
}

/// `t` cut into row blocks of `sizes` rows (bytes moved, blocks untouched).
pub fn split_rows(t: &QTensor, sizes: &[usize]) -> Result<Vec<QTensor>> {
    let (n, cols) = t.shape().dims2()?;
    if sizes.iter().sum::<usize>() != n {
        bail!("cannot cut {n} rows into {sizes:?}");
    }
    let rb = row_bytes(t)?;
    let data = t.data()?;
    let mut at = 0;
    sizes
        .iter()
        .map(|&r| {
            let part = data[at * rb..(at + r) * rb].to_vec();
            at += r;
            from_bytes(part, t.dtype(), (r, cols))
        })
        .collect()
}

/// Push the row-stack of `parts` as `name`, or as `name#0`, `name#1`, … when their block
/// types differ (each part then stays as the file has it).
pub fn push_stacked(out: &mut QTensors, name: String, parts: Vec<QTensor>) -> Result<()> {
    let dtype = parts[0].dtype();
    let cols = parts[0].shape().dims2()?.1;
    for p in &parts {
        if p.shape().dims2()?.1 != cols {
            bail!("{name}: parts of different widths");
        }
    }
    if parts.iter().any(|p| p.dtype() != dtype) {
        for (i, p) in parts.into_iter().enumerate() {
            out.push((format!("{name}#{i}"), p));
        }
        return Ok(());
    }
    let mut bytes = Vec::new();
    let mut rows = 0;
    for p in &parts {
        bytes.extend_from_slice(&p.data()?);
        rows += p.shape().dims2()?.0;
    }
    out.push((name, from_bytes(bytes, dtype, (rows, cols))?));
    Ok(())
}

/// Vectors joined end to end, as f32.
pub fn concat_vectors(parts: &[QTensor]) -> Result<QTensor> {
    let dense = parts
        .iter()
        .map(|p| p.dequantize(&Device::Cpu)?.flatten_all())
        .collect::<candle_core::Result<Vec<_>>>()?;
    quantize(&Tensor::cat(&dense, 0)?, GgmlDType::F32)
}

/// `t` with `extra` more rows, each the mean of its rows, in `t`'s own blocks: a new token's
/// embedding (and head row) starts at the average token rather than at noise.
pub fn append_mean_rows(t: &QTensor, extra: usize) -> Result<QTensor> {
    if extra == 0 {
        return crate::checkpoint::gguf::copy_of(t);
    }
    let (n, cols) = t.shape().dims2()?;
    let mean = t.dequantize(&Device::Cpu)?.mean_keepdim(0)?;
    let new = quantize(&mean.repeat((extra, 1))?, t.dtype())?;
    let mut bytes = t.data()?.into_owned();
    bytes.extend_from_slice(&new.data()?);
    from_bytes(bytes, t.dtype(), (n + extra, cols))
}

/// The 32-value type a K-quant falls back to for rows that are not whole super-blocks of
/// 256 (SmolLM2's 576 columns), as llama.cpp's quantizer falls back.
fn fallback(dtype: GgmlDType, cols: usize) -> GgmlDType {
    let whole = cols.is_multiple_of(dtype.block_size());
    match dtype {
        GgmlDType::Q4K if !whole => GgmlDType::Q4_1,
        GgmlDType::Q6K if !whole => GgmlDType::Q8_0,
        other => other,
    }
}

/// Every matrix re-quantized to `dtype` (vectors stay f32; a K-quant's rows that do not hold
/// whole super-blocks take its 32-value fallback, Q4_1 for Q4_K and Q8_0 for Q6_K).
pub fn requantize(tensors: &QTensors, dtype: GgmlDType) -> Result<QTensors> {
    tensors
        .iter()
        .map(|(name, t)| {
            let dense = t.dequantize(&Device::Cpu)?;
            let cols = t.shape().dims().last().copied().unwrap_or(0);
            let target = if t.shape().rank() == 2 {
                fallback(dtype, cols)
            } else {
                GgmlDType::F32
            };
            if !cols.is_multiple_of(target.block_size()) {
                bail!(
                    "{name} has rows of {cols} values, which do not split into {target:?} blocks of {}",
                    target.block_size()
                );
            }
            Ok((name.clone(), quantize(&dense, target)?))
        })
        .collect()
}
