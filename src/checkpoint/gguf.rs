//! Quantized checkpoint weights: `model.gguf` holds the model's tensors under their checkpoint
//! names in GGUF blocks (an imported model keeps the blocks it came with). A fused matrix whose
//! parts came in different block types is stored as `NAME#0`, `NAME#1`, … stacked by rows.

use crate::config::ModelConfig;
use crate::model::{tensor_specs, QMatrix, Weight, Weights};
use anyhow::{bail, Context, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;
use std::collections::HashMap;
use std::io::{Seek, SeekFrom};
use std::path::Path;

pub const FILE: &str = "model.gguf";

/// Named tensors in GGUF blocks.
pub type QTensors = Vec<(String, QTensor)>;

/// Write `tensors` as a GGUF file (no metadata: config and tokenizer live beside it).
pub fn write(path: &Path, tensors: &QTensors) -> Result<()> {
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    let list: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    gguf_file::write(&mut f, &[], &list)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let f = f.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    Ok(())
}

/// Every tensor of a GGUF file, after checking that each one's data lies inside the file (a
/// truncated download is named as such, not a read error deep inside).
pub fn read(path: &Path) -> Result<(gguf_file::Content, QTensors)> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let content = gguf_file::Content::read(&mut f)
        .map_err(|e| anyhow::anyhow!("not a readable GGUF file ({e})"))?;
    let size = f.seek(SeekFrom::End(0))?;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort_by_key(|n| content.tensor_infos[*n].offset);
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let info = &content.tensor_infos[name];
        let elems = info.shape.elem_count();
        let bytes = elems / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        let end = content.tensor_data_offset + info.offset + bytes as u64;
        if end > size {
            bail!("the file is truncated: tensor {name} ends at byte {end}, the file has {size}");
        }
        let t = content
            .tensor(&mut f, name, &Device::Cpu)
            .with_context(|| format!("cannot read tensor {name}"))?;
        out.push((name.clone(), t));
    }
    Ok((content, out))
}

fn is_float(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// The model's weights from checkpoint-named GGUF tensors: quantized matrices kept in their
/// blocks when `quantized` (float ones and every vector dense), else everything expanded
/// to dense f32.
pub fn weights(cfg: &ModelConfig, tensors: &QTensors, quantized: bool) -> Result<Weights<Weight>> {
    let by_name: HashMap<&str, &QTensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut list = Vec::new();
    for spec in tensor_specs(cfg) {
        let parts: Vec<&QTensor> = match by_name.get(spec.name.as_str()) {
            Some(t) => vec![*t],
            None => (0..)
                .map_while(|i| by_name.get(format!("{}#{i}", spec.name).as_str()).copied())
                .collect(),
        };
        if parts.is_empty() {
            bail!("the weights lack tensor {}", spec.name);
        }
        let keep = quantized && spec.shape.len() == 2 && parts.iter().all(|p| !is_float(p.dtype()));
        let w = if keep {
            let parts = parts.iter().map(|p| copy_of(p)).collect::<Result<_>>()?;
            Weight::Quant(std::sync::Arc::new(QMatrix::new(parts)?))
        } else {
            let dense = parts
                .iter()
                .map(|p| p.dequantize(&Device::Cpu))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Weight::Dense(candle_core::Tensor::cat(&dense, 0)?.reshape(spec.shape.clone())?)
        };
        list.push(w);
    }
    Weights::from_ordered(cfg, list).context("the weights do not fit the config")
}

/// A copy of a quantized tensor (QTensor is not Clone; its blocks are plain bytes).
pub fn copy_of(t: &QTensor) -> Result<QTensor> {
    let storage = candle_core::quantized::QStorage::from_data(t.data()?, &Device::Cpu, t.dtype())?;
    Ok(QTensor::new(storage, t.shape().clone())?)
}

/// `t` in `dtype` blocks. (candle's `QTensor::quantize` sizes a float target wrongly, so f32
/// and f16 go through their bytes.)
pub fn quantize(t: &candle_core::Tensor, dtype: GgmlDType) -> Result<QTensor> {
    use candle_core::DType;
    let bytes: Vec<u8> = match dtype {
        GgmlDType::F32 => t
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        GgmlDType::F16 => t
            .to_dtype(DType::F16)?
            .flatten_all()?
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        _ => return Ok(QTensor::quantize(t, dtype)?),
    };
    let storage = candle_core::quantized::QStorage::from_data(
        std::borrow::Cow::Owned(bytes),
        &Device::Cpu,
        dtype,
    )?;
    Ok(QTensor::new(storage, t.shape().clone())?)
}
