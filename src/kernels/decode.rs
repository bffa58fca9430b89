//! The few-row kernels of a decoding pass on host slices (`model/host.rs`): a weight matrix,
//! f32 or in packed GGUF blocks, applied to every row of the pass in one read of the weight
//! (gemm for a prompt's many rows), and causal attention over a row's cached keys.

use super::core::{gemm_into, par_rows, Real};
use super::int8::{self, Rounded};
use super::quant::{self, Blocks};
use super::small_matmul::{matmul_into, MAX_ROWS};
use crate::config::Heads;
use crate::runtime::threads;

/// out [n, m] = x [n, k] · w [m, k]ᵀ: up to `MAX_ROWS` rows per weight pass, gemm beyond.
pub fn linear(
    x: &[f32],
    n: usize,
    k: usize,
    w: &[f32],
    m: usize,
    scratch: &mut [f32],
    out: &mut [f32],
) {
    if n > MAX_ROWS {
        // A prompt: compute-bound, where gemm's packing pays off.
        // SAFETY: x holds n·k, w m·k and out n·m elements.
        unsafe {
            gemm_into(
                (n, m, k),
                (out.as_mut_ptr(), m as isize, 1),
                false,
                (x.as_ptr(), k as isize, 1),
                (w.as_ptr(), 1, k as isize),
                gemm::Parallelism::Rayon(threads()),
            )
        };
        return;
    }
    matmul_into(x, n, k, w, m, scratch, out);
}

/// out [n, m] = x [n, k] · wᵀ for w in packed parts stacked by rows: `MAX_ROWS` input rows
/// per pass over the blocks; each part's columns land at its offset in out. With `int8`,
/// the parts the integer path takes multiply x rounded to 8 bits (into that buffer).
#[allow(clippy::too_many_arguments)]
pub fn linear_packed(
    x: &[f32],
    n: usize,
    k: usize,
    parts: &[(Blocks, &[u8], usize)],
    mut int8_rows: Option<&mut Rounded>,
    scratch: &mut [f32],
    part_out: &mut [f32],
    out: &mut [f32],
) {
    let m: usize = parts.iter().map(|p| p.2).sum();
    for r0 in (0..n).step_by(MAX_ROWS) {
        let rows = MAX_ROWS.min(n - r0);
        let xs = &x[r0 * k..(r0 + rows) * k];
        let mut rounded = false;
        let mut product = |kind: Blocks, bytes: &[u8], pn: usize, dst: &mut [f32]| match int8_rows {
            Some(ref mut r) if int8::takes(kind) && k.is_multiple_of(quant::BLOCK) => {
                if !rounded {
                    r.set(xs, rows, k);
                    rounded = true;
                }
                int8::matmul_into(r, kind, bytes, pn, scratch, dst)
            }
            _ => quant::matmul_into(xs, rows, k, kind, bytes, pn, scratch, dst),
        };
        if let [(kind, bytes, pn)] = parts {
            // One part: its columns are the output's, written in place.
            product(*kind, bytes, *pn, &mut out[r0 * m..(r0 + rows) * m]);
            continue;
        }
        let mut col = 0;
        for &(kind, bytes, pn) in parts {
            product(kind, bytes, pn, part_out);
            for i in 0..rows {
                let dst = &mut out[(r0 + i) * m + col..(r0 + i) * m + col + pn];
                dst.copy_from_slice(&part_out[i * pn..(i + 1) * pn]);
            }
            col += pn;
        }
    }
}

/// One packed row of a decoding pass: where its keys/values sit in its batch row's cache,
/// its RoPE position and which of the keys before it it sees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Query {
    pub row: usize,
    /// Its cache slot: it sees keys up to and including this one...
    pub slot: usize,
    /// Its RoPE position (the slot, in a chain).
    pub pos: usize,
    /// ...except, in a tree pass, the fed keys from slot `base` on that are not in the bit
    /// set `seen` (bit a: slot base + a).
    pub tree: Option<(usize, u64)>,
}

impl Query {
    /// A query of a causal chain: it sees every key up to its position.
    pub fn chain(row: usize, pos: usize) -> Self {
        Self {
            row,
            slot: pos,
            pos,
            tree: None,
        }
    }
}

/// Attention of every packed row's query heads over its batch row's cached keys 0..=slot
/// (those a tree query sees), spread over the pool by (row, head). The caches hold
/// [layer][row][kv head][position < cap][head_dim]; `block0` is the layer's first (layer,
/// row) block.
pub fn attend(
    rows: &[Query],
    qkv: &[f32],
    (k_cache, v_cache, cap): (&[f32], &[f32], usize),
    heads: Heads,
    block0: usize,
    scores: &mut [f32],
    att: &mut [f32],
) {
    let (nh, hd, width, d) = (heads.q, heads.dim, heads.qkv_width(), heads.q_width());
    let scale = 1.0 / (hd as f32).sqrt();
    let (s_ptr, a_ptr) = (scores.as_mut_ptr() as usize, att.as_mut_ptr() as usize);
    par_rows(rows.len() * nh, cap * hd, |unit| {
        let (i, hh) = (unit / nh, unit % nh);
        let Query { row: r, slot, .. } = rows[i];
        let keys = slot + 1;
        let base = ((block0 + r) * heads.kv + heads.kv_of(hh)) * cap * hd;
        let q = &qkv[i * width + hh * hd..i * width + (hh + 1) * hd];
        // SAFETY: unit (i, hh) alone uses its score segment and its output slice.
        let s =
            unsafe { std::slice::from_raw_parts_mut((s_ptr as *mut f32).add(unit * cap), keys) };
        let out =
            unsafe { std::slice::from_raw_parts_mut((a_ptr as *mut f32).add(i * d + hh * hd), hd) };
        for (j, sj) in s.iter_mut().enumerate() {
            *sj = f32::dot(q, &k_cache[base + j * hd..base + (j + 1) * hd]) * scale;
        }
        if let Some((first, seen)) = rows[i].tree {
            // The slot itself is always seen, so the softmax keeps a finite maximum.
            for (a, sj) in s[first..].iter_mut().enumerate() {
                if seen >> a & 1 == 0 {
                    *sj = f32::NEG_INFINITY;
                }
            }
        }
        let z = f32::exp_inplace_sum(s, f32::max_of(s));
        out.fill(0.0);
        for (j, &p) in s.iter().enumerate() {
            let vj = &v_cache[base + j * hd..base + (j + 1) * hd];
            let p = p / z;
            for (o, &x) in out.iter_mut().zip(vj) {
                *o += p * x;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::rng::test_values;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        test_values(n, seed).into_iter().map(|v| v as f32).collect()
    }

    /// x [n, k] · w [m, k]ᵀ in f64.
    fn reference(x: &[f32], n: usize, k: usize, w: &[f32], m: usize) -> Vec<f64> {
        let mut out = vec![0f64; n * m];
        for i in 0..n {
            for j in 0..m {
                out[i * m + j] = (0..k)
                    .map(|c| x[i * k + c] as f64 * w[j * k + c] as f64)
                    .sum();
            }
        }
        out
    }

    fn max_diff(a: &[f32], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .fold(0f64, |d, (&x, &y)| d.max((x as f64 - y).abs()))
    }

    #[test]
    fn linear_equals_the_plain_product_below_and_above_the_row_limit() {
        let (k, m) = (37, 29);
        let w = values(m * k, 1);
        for n in [1, 3, MAX_ROWS, MAX_ROWS + 5] {
            let x = values(n * k, 2 + n as u64);
            let (mut scratch, mut out) = (vec![0f32; n * m], vec![0f32; n * m]);
            linear(&x, n, k, &w, m, &mut scratch, &mut out);
            let d = max_diff(&out, &reference(&x, n, k, &w, m));
            assert!(d < 1e-4, "n {n}: {d}");
        }
    }

    #[test]
    fn stacked_packed_parts_equal_the_expanded_matrix() {
        // Two parts of a stacked matrix (as q/k/v rows from separate GGUF tensors).
        let k = 64;
        let parts: Vec<(Blocks, Vec<u8>, Vec<f32>, usize)> =
            [(GgmlDType::Q8_0, 7), (GgmlDType::Q4_1, 5)]
                .into_iter()
                .map(|(dtype, rows)| {
                    let w = Tensor::randn(0f32, 1.0, (rows, k), &Device::Cpu).unwrap();
                    let q = QTensor::quantize(&w, dtype).unwrap();
                    let dense = q.dequantize(&Device::Cpu).unwrap();
                    let dense = dense.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let bytes = q.data().unwrap().into_owned();
                    (Blocks::of(dtype).unwrap(), bytes, dense, rows)
                })
                .collect();
        let m: usize = parts.iter().map(|p| p.3).sum();
        let expanded: Vec<f32> = parts.iter().flat_map(|p| p.2.clone()).collect();
        let views: Vec<(Blocks, &[u8], usize)> =
            parts.iter().map(|p| (p.0, &p.1[..], p.3)).collect();
        for n in [1, 2, MAX_ROWS + 3] {
            let x = values(n * k, 9 + n as u64);
            let mut scratch = vec![0f32; MAX_ROWS * m];
            let mut part_out = vec![0f32; MAX_ROWS * m];
            let mut out = vec![0f32; n * m];
            linear_packed(
                &x,
                n,
                k,
                &views,
                None,
                &mut scratch,
                &mut part_out,
                &mut out,
            );
            let d = max_diff(&out, &reference(&x, n, k, &expanded, m));
            assert!(d < 1e-3, "n {n}: {d}");
        }
    }

    #[test]
    fn attend_equals_softmax_attention_over_the_visible_keys() {
        // Grouped-query heads, two batch rows of a two-layer cache, queries at ragged positions.
        let heads = Heads {
            q: 4,
            kv: 2,
            dim: 8,
        };
        let (layers, batch, cap) = (2, 2, 11);
        let size = layers * batch * heads.kv * cap * heads.dim;
        let (kc, vc) = (values(size, 3), values(size, 4));
        // The last query is a tree's: it sees slots 6 and 8 of the fed 6..=9, not 7.
        let mut rows: Vec<Query> = [(0, 4), (1, 0), (1, 10), (0, 5)]
            .into_iter()
            .map(|(r, p)| Query::chain(r, p))
            .collect();
        rows.push(Query {
            row: 1,
            slot: 9,
            pos: 7,
            tree: Some((6, 0b1101)),
        });
        let qkv = values(rows.len() * heads.qkv_width(), 5);
        let (layer, hd) = (1, heads.dim);
        let mut scores = vec![0f32; rows.len() * heads.q * cap];
        let mut att = vec![0f32; rows.len() * heads.q_width()];
        let block0 = layer * batch;
        attend(
            &rows,
            &qkv,
            (&kc, &vc, cap),
            heads,
            block0,
            &mut scores,
            &mut att,
        );
        let mut want = vec![0f64; att.len()];
        for (i, query) in rows.iter().enumerate() {
            let r = query.row;
            let seen = |j: usize| match query.tree {
                Some((first, bits)) if j >= first => bits >> (j - first) & 1 == 1,
                _ => true,
            };
            for h in 0..heads.q {
                let base = ((block0 + r) * heads.kv + heads.kv_of(h)) * cap * hd;
                let q = &qkv[i * heads.qkv_width() + h * hd..][..hd];
                let keys: Vec<usize> = (0..=query.slot).filter(|&j| seen(j)).collect();
                let s: Vec<f64> = keys
                    .iter()
                    .map(|&j| {
                        let kj = &kc[base + j * hd..][..hd];
                        q.iter()
                            .zip(kj)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let top = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|v| (v - top).exp()).sum();
                for (&j, v) in keys.iter().zip(&s) {
                    let p = (v - top).exp() / z;
                    for c in 0..hd {
                        want[i * heads.q_width() + h * hd + c] += p * vc[base + j * hd + c] as f64;
                    }
                }
            }
        }
        let d = max_diff(&att, &want);
        assert!(d < 1e-5, "{d}");
    }
}
