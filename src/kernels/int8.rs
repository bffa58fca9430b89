//! x · wᵀ for weights in Q4_0, Q4_1 or Q8_0 blocks with the activations rounded to 8 bits
//! (`--int8`): one integer dot product per 32-value block (AVX-512 VNNI `vpdpbusd`, AVX2
//! `vpmaddubsw`), one f32 scale per [`GROUP`] activations. The result is the product of the
//! expanded weights with the rounded activations, up to summation order, so it differs from
//! the exact path of `quant.rs` (the reference, and the default) only by the activations'
//! rounding: at most half a scale step per value (see [`Rounded::error_bound`]).
//!
//! A block's weights become 32 small integers u with w = dw·u + mw (Q4_0: u the nibble,
//! mw = −8·dw; Q4_1: mw its minimum; Q8_0: u = q + 128, mw = −128·dw), so a row's product is
//! Σ_g s_g Σ_{b∈g} dw_b Σ u·q + Σ_b mw_b · s_g Σ_{b} q, the second sum from block sums
//! computed once per input row.

use super::core::{avx2_fma_f16c, no_avx512};
use super::quant::{Blocks, BLOCK, PREFETCH_BYTES};
use super::small_matmul::{by_weight_rows, MAX_ROWS};

/// Activations per scale (llama.cpp's Q8_K groups 256 too). Scales per block would add a
/// multiply per block and input row; one per row lets a single outlier coarsen every value.
pub const GROUP: usize = 256;

/// Input rows rounded to 8 bits: `q` [m][k] in −127..=127, a scale per row and group of
/// `GROUP` values, and each block's sum scale·Σq.
#[derive(Default, Debug)]
pub struct Rounded {
    q: Vec<i8>,
    scale: Vec<f32>,
    sums: Vec<f32>,
    m: usize,
    k: usize,
}

impl Rounded {
    /// Round `m` rows of `k` values (k a multiple of 32), reusing the buffers.
    pub fn set(&mut self, x: &[f32], m: usize, k: usize) {
        assert!(
            k.is_multiple_of(BLOCK) && x.len() >= m * k,
            "int8 rows: m {m} k {k}"
        );
        let (groups, blocks) = (k.div_ceil(GROUP), k / BLOCK);
        self.q.resize(m * k, 0);
        self.scale.resize(m * groups, 0.0);
        self.sums.resize(m * blocks, 0.0);
        (self.m, self.k) = (m, k);
        for i in 0..m {
            for g in 0..groups {
                let span = i * k + g * GROUP..i * k + ((g + 1) * GROUP).min(k);
                let xs = &x[span.clone()];
                let d = xs.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                let q = &mut self.q[span.clone()];
                for (q, &v) in q.iter_mut().zip(xs) {
                    // |v·inv| ≤ 127 but for rounding in the last bit; `as` saturates.
                    *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
                }
                self.scale[i * groups + g] = d;
                for (b, qb) in q.chunks(BLOCK).enumerate() {
                    let s: i32 = qb.iter().map(|&v| v as i32).sum();
                    self.sums[i * blocks + (span.start - i * k) / BLOCK + b] = d * s as f32;
                }
            }
        }
    }

    /// Rows rounded so far.
    pub fn rows(&self) -> usize {
        self.m
    }

    /// The rounded values the kernels multiply, as f32 (the tests' reference).
    pub fn values(&self) -> Vec<f32> {
        let groups = self.k.div_ceil(GROUP);
        (0..self.m * self.k)
            .map(|c| {
                let (i, col) = (c / self.k, c % self.k);
                self.q[c] as f32 * self.scale[i * groups + col / GROUP]
            })
            .collect()
    }

    /// |int8 product − exact product| of row i with a weight row `w` (expanded) is at most
    /// Σ_c |w_c|·s_g(c)/2 (each value moved by at most half its step), plus f32 rounding.
    pub fn error_bound(&self, i: usize, w: &[f32]) -> f32 {
        let groups = self.k.div_ceil(GROUP);
        w.iter()
            .enumerate()
            .map(|(c, wc)| wc.abs() * self.scale[i * groups + c / GROUP] / 2.0)
            .sum()
    }
}

/// The block types the integer path takes (bf16 and the K-quants stay exact).
pub fn takes(kind: Blocks) -> bool {
    matches!(kind, Blocks::Q4_0 | Blocks::Q4_1 | Blocks::Q8_0)
}

/// out [m, n] = x · w [n, k]ᵀ for the rows of `x` (m ≤ `MAX_ROWS`), w in `kind` blocks,
/// through `out_t` [n, m] scratch like the exact kernels.
pub fn matmul_into(
    x: &Rounded,
    kind: Blocks,
    w: &[u8],
    n: usize,
    out_t: &mut [f32],
    out: &mut [f32],
) {
    let row_bytes = kind.row_bytes(x.k);
    assert!(
        takes(kind) && x.m <= MAX_ROWS && w.len() >= n * row_bytes,
        "int8 matmul: {kind:?} m {} k {} n {n}, w {}",
        x.m,
        x.k,
        w.len()
    );
    let path = Path::best();
    by_weight_rows(n, x.m, row_bytes, out_t, out, |j, o| {
        dots(x, &w[j * row_bytes..(j + 1) * row_bytes], kind, o, path)
    });
}

/// The integer kernels, fastest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// `vpdpbusd` on 256-bit vectors (AVX-512 VNNI and VL).
    Vnni,
    /// `vpmaddubsw` + `vpmaddwd` (AVX2, FMA, F16C).
    Avx2,
    /// Plain Rust (signed weights, no offsets: an independent form of the same sums).
    Portable,
}

impl Path {
    pub const ALL: [Path; 3] = [Path::Vnni, Path::Avx2, Path::Portable];

    /// Whether this CPU can run the path.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Path::Vnni => {
                use std::arch::is_x86_feature_detected as has;
                avx2_fma_f16c() && has!("avx512vnni") && has!("avx512vl")
            }
            Path::Avx2 => avx2_fma_f16c(),
            Path::Portable => true,
            #[cfg(not(target_arch = "x86_64"))]
            Path::Vnni => false,
        }
    }

    /// The path on this machine (`CARD_NO_AVX512=1` keeps it on AVX2).
    pub fn best() -> Path {
        static BEST: std::sync::OnceLock<Path> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            let usable = |p: &&Path| p.available() && !(**p == Path::Vnni && no_avx512());
            *Path::ALL.iter().find(usable).expect("portable")
        })
    }
}

/// o[i] = rounded row i · the packed weight row, on `path` (the portable one where the CPU
/// lacks it).
pub(crate) fn dots(x: &Rounded, wrow: &[u8], kind: Blocks, o: &mut [f32], path: Path) {
    #[cfg(target_arch = "x86_64")]
    if path != Path::Portable && path.available() {
        macro_rules! by_rows {
            ($module:ident, $($m:literal $a:literal)*) => {
                match o.len() {
                    // SAFETY (every arm): `available` checked the path's features.
                    $($m => unsafe { $module::dots::<$m, $a>(x, wrow, kind, o) },)*
                    _ => unreachable!("at most MAX_ROWS input rows"),
                }
            };
        }
        return match path {
            Path::Vnni => {
                by_rows!(vnni, 1 1 2 1 3 1 4 1 5 1 6 1 7 1 8 1 9 1 10 1 11 1 12 1 13 1 14 1 15 1 16 1)
            }
            _ => {
                by_rows!(avx2, 1 1 2 1 3 1 4 1 5 1 6 1 7 1 8 1 9 1 10 1 11 1 12 1 13 1 14 1 15 1 16 1)
            }
        };
    }
    let _ = path;
    let (k, blocks, groups) = (x.k, x.k / BLOCK, x.k.div_ceil(GROUP));
    let mut w = [0i32; BLOCK];
    o.fill(0.0);
    for (i, oi) in o.iter_mut().enumerate() {
        for (b, blk) in wrow.chunks(kind.bytes()).take(blocks).enumerate() {
            let (d, m) = signed_block(kind, blk, &mut w);
            let q = &x.q[i * k + b * BLOCK..i * k + (b + 1) * BLOCK];
            let dot: i32 = w.iter().zip(q).map(|(&a, &c)| a * c as i32).sum();
            let s = x.scale[i * groups + b * BLOCK / GROUP];
            *oi += d * s * dot as f32 + m * x.sums[i * blocks + b];
        }
    }
}

/// A block's weights as signed integers w with value d·w + m (the portable path's form).
fn signed_block(kind: Blocks, blk: &[u8], w: &mut [i32; BLOCK]) -> (f32, f32) {
    let f16 = |at: usize| half::f16::from_bits(u16::from_le_bytes([blk[at], blk[at + 1]])).to_f32();
    let d = f16(0);
    match kind {
        Blocks::Q4_0 | Blocks::Q4_1 => {
            let (shift, m, qs) = match kind {
                Blocks::Q4_1 => (0, f16(2), &blk[4..20]),
                _ => (8, 0.0, &blk[2..18]),
            };
            for (j, &q) in qs.iter().enumerate() {
                w[j] = (q & 0x0F) as i32 - shift;
                w[j + 16] = (q >> 4) as i32 - shift;
            }
            (d, m)
        }
        Blocks::Q8_0 => {
            for (wj, &q) in w.iter_mut().zip(&blk[2..34]) {
                *wj = q as i8 as i32;
            }
            (d, 0.0)
        }
        _ => unreachable!("bf16 and the K-quants stay on the exact path"),
    }
}

/// `dots::<M, A>` of a SIMD path: M rounded rows against one packed weight row, A
/// accumulators per row within a group (one measured fastest at every M on Zen 4). Each block is expanded once to 32 bytes and
/// multiplied with every row's bytes by the path's `product`. The block type is a constant
/// of `rows` (`KIND`: 0 Q4_0, 1 Q4_1, 2 Q8_0), so the loop holds no branch on it, and the
/// accumulators' indices are constants, so they stay in registers.
#[cfg(target_arch = "x86_64")]
macro_rules! int_dots {
    ($features:literal) => {
        /// # Safety
        /// The CPU must have the path's features.
        #[target_feature(enable = $features)]
        pub unsafe fn dots<const M: usize, const A: usize>(
            x: &super::Rounded,
            wrow: &[u8],
            kind: Blocks,
            o: &mut [f32],
        ) {
            assert!(
                x.m >= M && wrow.len() >= kind.row_bytes(x.k) && o.len() >= M,
                "int8 dots: rows {} of {M}, k {}",
                x.m,
                x.k
            );
            match kind {
                Blocks::Q4_0 => rows::<M, A, 0>(x, wrow.as_ptr(), o),
                Blocks::Q4_1 => rows::<M, A, 1>(x, wrow.as_ptr(), o),
                _ => rows::<M, A, 2>(x, wrow.as_ptr(), o),
            }
        }

        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn rows<const M: usize, const A: usize, const KIND: u8>(
            x: &super::Rounded,
            w: *const u8,
            o: &mut [f32],
        ) {
            const PER_GROUP: usize = super::GROUP / BLOCK;
            let (k, blocks, groups) = (x.k, x.k / BLOCK, x.k.div_ceil(super::GROUP));
            let bytes = [18, 20, 34][KIND as usize];
            let (xq, sums) = (x.q.as_ptr(), x.sums.as_ptr());
            let mut acc = [_mm256_setzero_ps(); M];
            let mut macc = [_mm256_setzero_ps(); M];
            let mut mins = [0f32; M];
            for g in 0..groups {
                let (b0, b1) = (g * PER_GROUP, ((g + 1) * PER_GROUP).min(blocks));
                let mut gacc = [[_mm256_setzero_ps(); A]; M];
                let mut ms = [0f32; PER_GROUP];
                let mut b = b0;
                while b < b1 {
                    for a in 0..A.min(b1 - b) {
                        // The weight stream prefetched ahead, as `quant.rs` does (a prefetch
                        // never faults, so running past the row is fine).
                        let ahead = w.wrapping_add((b + a) * bytes + PREFETCH_BYTES);
                        _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                        // SAFETY: block b + a lies within the weight row, and row i's block
                        // within x (asserted by `dots`).
                        let (u, d, m) = expand::<KIND>(w.add((b + a) * bytes));
                        ms[b + a - b0] = m;
                        let dv = _mm256_set1_ps(d);
                        for i in 0..M {
                            let at = xq.add(i * k + (b + a) * BLOCK) as *const __m256i;
                            let p = _mm256_cvtepi32_ps(product::<KIND>(u, _mm256_loadu_si256(at)));
                            gacc[i][a] = _mm256_fmadd_ps(p, dv, gacc[i][a]);
                        }
                    }
                    b += A;
                }
                for i in 0..M {
                    let mut s = gacc[i][0];
                    for v in gacc[i].iter().skip(1) {
                        s = _mm256_add_ps(s, *v);
                    }
                    let scale = _mm256_set1_ps(x.scale[i * groups + g]);
                    acc[i] = _mm256_fmadd_ps(s, scale, acc[i]);
                }
                if KIND == 2 {
                    continue; // Q8_0: no minimum
                }
                // Σ m_b · (block sum of row i), eight blocks a vector.
                if b1 - b0 == PER_GROUP {
                    let mv = _mm256_loadu_ps(ms.as_ptr());
                    for i in 0..M {
                        let sv = _mm256_loadu_ps(sums.add(i * blocks + b0));
                        macc[i] = _mm256_fmadd_ps(mv, sv, macc[i]);
                    }
                } else {
                    for i in 0..M {
                        for c in b0..b1 {
                            mins[i] += ms[c - b0] * *sums.add(i * blocks + c);
                        }
                    }
                }
            }
            for i in 0..M {
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc[i], macc[i]));
                o[i] = lanes.iter().sum::<f32>() + mins[i];
            }
        }
    };
}

/// A block as 32 bytes u, its scale d and the minimum m of w = d·u + m: a Q4 block's nibbles
/// in value order (low nibbles are values 0..16), or a Q8_0 block's signed bytes (m = 0,
/// `product` takes their signs). `KIND`: 0 Q4_0, 1 Q4_1, 2 Q8_0.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn expand<const KIND: u8>(blk: *const u8) -> (std::arch::x86_64::__m256i, f32, f32) {
    use std::arch::x86_64::*;
    // Both f16 (scale, and Q4_1's minimum) in one conversion.
    let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const i32).read_unaligned()));
    let d = _mm_cvtss_f32(dm);
    if KIND == 2 {
        return (_mm256_loadu_si256(blk.add(2) as *const __m256i), d, 0.0);
    }
    let (m, qs) = match KIND {
        1 => (_mm_cvtss_f32(_mm_movehdup_ps(dm)), blk.add(4)),
        _ => (-8.0 * d, blk.add(2)),
    };
    let q = _mm_loadu_si128(qs as *const __m128i);
    let both = _mm256_set_m128i(_mm_srli_epi16(q, 4), q);
    (_mm256_and_si256(both, _mm256_set1_epi8(0x0F)), d, m)
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{expand, Blocks, BLOCK, PREFETCH_BYTES};
    use std::arch::x86_64::*;

    /// Σ u·q by groups of four bytes, in 8 lanes; a Q8_0 block's signed bytes as
    /// |w|·(q·sign w) (shifting them by 128 instead would cancel two large sums in f32).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    unsafe fn product<const KIND: u8>(u: __m256i, q: __m256i) -> __m256i {
        let (u, q) = match KIND {
            2 => (_mm256_sign_epi8(u, u), _mm256_sign_epi8(q, u)),
            _ => (u, q),
        };
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, q)
    }

    int_dots!("avx2,fma,f16c,avx512vnni,avx512vl");
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{expand, Blocks, BLOCK, PREFETCH_BYTES};
    use std::arch::x86_64::*;

    /// Σ u·q by groups of four bytes, in 8 lanes, through 16-bit pair sums: u ≤ 15 for the
    /// Q4 blocks, and a Q8_0 block's signed bytes as |w|·(q·sign w) (|w| ≤ 128 and |q| ≤ 127
    /// keep a pair's sum below 2¹⁵, where Q8_0 shifted by 128 would saturate).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn product<const KIND: u8>(u: __m256i, q: __m256i) -> __m256i {
        let (u, q) = match KIND {
            2 => (_mm256_sign_epi8(u, u), _mm256_sign_epi8(q, u)),
            _ => (u, q),
        };
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, q), _mm256_set1_epi16(1))
    }

    int_dots!("avx2,fma,f16c");
}

#[cfg(test)]
#[path = "int8_tests.rs"]
mod tests;
