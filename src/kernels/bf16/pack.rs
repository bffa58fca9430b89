//! Operands rounded to bf16 and laid out for the hardware paths (AMX tiles and `vdpbf16ps`),
//! on AVX-512 with AVX512_BF16, whose `vcvtneps2bf16` rounds 16 values to nearest even per
//! instruction (every AMX CPU has it).
//!
//! A tile of A is 16 rows of 32 consecutive k values; a tile of B is 16 k-pairs of 16 columns,
//! each column's two k values side by side. When an operand's k runs across memory rows (A
//! stored transposed — the weight gradient's gᵀ — or B = wᵀ of the forward), 16 × 16 blocks of
//! bf16 pairs are transposed in registers. Every element of a packed buffer is written,
//! padding included (zeros beyond m, n and k), so buffers need no zeroing first.

use super::super::core::{par_rows, Out};
use super::round::{bf16_bits, Strided};
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// Rows of a tile; f32 columns of an accumulator tile; k pairs of a B tile; columns of a B panel.
pub(super) const TILE: usize = 16;
/// bf16 values of k one AMX tile product consumes; `kpad` is a multiple of it.
pub(super) const KC: usize = 32;
/// Rows of a packed A block, and columns of a pair of B panels: 2 × 2 tiles.
pub(super) const BLOCK: usize = 2 * TILE;

/// Whether this CPU runs the packing (AVX-512 F/BW/VL and AVX512_BF16).
pub(super) fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512bf16")
}

/// `total` values written in parallel, `len` at a time: `fill(i, slot)` writes the whole of
/// slot i (values `i·len..`; the last slot may be shorter), and costs about `cost` each for
/// [`par_rows`]. Nothing is zeroed first: a large buffer's memset was a single-threaded stretch
/// on the step's critical path.
///
/// # Safety
/// `fill` must write every element of each slot it is given.
pub(super) unsafe fn written<T: Send + Sync>(
    total: usize,
    len: usize,
    cost: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let mut v: Vec<MaybeUninit<T>> = Vec::with_capacity(total);
    // SAFETY: MaybeUninit elements need no initialisation.
    v.set_len(total);
    if total > 0 {
        let slots = Out::new(&mut v, len);
        par_rows(total.div_ceil(len), cost, |i| {
            // SAFETY: slot i is disjoint from every other and lies within the buffer.
            fill(i, slots.row_prefix(i, len.min(total - i * len)))
        });
    }
    // SAFETY: the caller's fill wrote every slot, and the slots cover the buffer.
    let mut v = std::mem::ManuallyDrop::new(v);
    Vec::from_raw_parts(v.as_mut_ptr() as *mut T, v.len(), v.capacity())
}

/// Lanes `0..n` set (n ≤ 16).
fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        !0
    } else {
        (1u16 << n) - 1
    }
}

/// 16 f32 at `p` (lanes under `mask`, zero elsewhere) rounded to bf16, each in the low half of
/// a u32 lane. `p` is only dereferenced where the mask is set.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn bf16_lanes(p: *const f32, mask: __mmask16) -> __m512i {
    if mask == 0 {
        return _mm512_setzero_si512();
    }
    let h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, p));
    _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(h))
}

/// Lane j = (even[j], odd[j]) as a bf16 pair.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn pairs(even: *const f32, me: __mmask16, odd: *const f32, mo: __mmask16) -> __m512i {
    _mm512_or_si512(
        bf16_lanes(even, me),
        _mm512_slli_epi32::<16>(bf16_lanes(odd, mo)),
    )
}

/// 32 f32 at `p` (the first `n` of them, zero beyond) as 16 bf16 pairs in order.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn pairs_along(p: *const f32, n: usize) -> __m512i {
    let (m0, m1) = (lanes(n), lanes(n.saturating_sub(16)));
    let lo = if m0 == 0 {
        _mm512_setzero_ps()
    } else {
        _mm512_maskz_loadu_ps(m0, p)
    };
    let hi = if m1 == 0 {
        _mm512_setzero_ps()
    } else {
        _mm512_maskz_loadu_ps(m1, p.wrapping_add(16))
    };
    std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo))
}

/// Transpose a 16 × 16 block of u32: out[j] lane i = r[i] lane j.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn transpose(r: &[__m512i; 16]) -> [__m512i; 16] {
    // Within 128-bit lanes: 2 × 2 blocks of u32, then of u64 — u[4g + c], lane l holds rows
    // 4g..4g+4 at column 4l + c.
    let mut t = [_mm512_setzero_si512(); 16];
    for p in 0..8 {
        t[2 * p] = _mm512_unpacklo_epi32(r[2 * p], r[2 * p + 1]);
        t[2 * p + 1] = _mm512_unpackhi_epi32(r[2 * p], r[2 * p + 1]);
    }
    let mut u = [_mm512_setzero_si512(); 16];
    for g in 0..4 {
        let (a, b) = (4 * g, 4 * g + 2);
        u[4 * g] = _mm512_unpacklo_epi64(t[a], t[b]);
        u[4 * g + 1] = _mm512_unpackhi_epi64(t[a], t[b]);
        u[4 * g + 2] = _mm512_unpacklo_epi64(t[a + 1], t[b + 1]);
        u[4 * g + 3] = _mm512_unpackhi_epi64(t[a + 1], t[b + 1]);
    }
    // Across 128-bit lanes: output row 4l + c gathers lane l of u[c], u[4 + c], u[8 + c],
    // u[12 + c].
    let mut out = [_mm512_setzero_si512(); 16];
    for c in 0..4 {
        let x0 = _mm512_shuffle_i32x4::<0x88>(u[c], u[4 + c]);
        let x1 = _mm512_shuffle_i32x4::<0xdd>(u[c], u[4 + c]);
        let y0 = _mm512_shuffle_i32x4::<0x88>(u[8 + c], u[12 + c]);
        let y1 = _mm512_shuffle_i32x4::<0xdd>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_i32x4::<0x88>(x0, y0);
        out[8 + c] = _mm512_shuffle_i32x4::<0xdd>(x0, y0);
        out[4 + c] = _mm512_shuffle_i32x4::<0x88>(x1, y1);
        out[12 + c] = _mm512_shuffle_i32x4::<0xdd>(x1, y1);
    }
    out
}

/// A as blocks of 32 rows of `kpad` bf16 values.
pub(super) fn pack_a(a: Strided, m: usize, k: usize, kpad: usize) -> Vec<u16> {
    let len = BLOCK * kpad;
    // SAFETY: block bi writes all its BLOCK · kpad values, padding included; the caller
    // checked `available`.
    unsafe {
        written(m.div_ceil(BLOCK) * len, len, len, |bi, dst| {
            pack_a_block(a, (m, k, kpad), bi * BLOCK, dst.as_mut_ptr() as *mut u16)
        })
    }
}

#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn pack_a_block(
    (d, rs, cs): Strided,
    (m, k, kpad): (usize, usize, usize),
    row0: usize,
    dst: *mut u16,
) {
    let rows = (m - row0).min(BLOCK);
    let src = d.as_ptr();
    if cs == 1 {
        for i in 0..BLOCK {
            for c in (0..kpad).step_by(16) {
                let mask = if i < rows {
                    lanes(k.saturating_sub(c))
                } else {
                    0
                };
                let p = src.wrapping_add((row0 + i) * rs + c);
                let h = if mask == 0 {
                    _mm256_setzero_si256()
                } else {
                    std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(
                        _mm512_maskz_loadu_ps(mask, p),
                    ))
                };
                _mm256_storeu_si256(dst.add(i * kpad + c) as *mut __m256i, h);
            }
        }
    } else if rs == 1 {
        // k runs across memory rows: pair two k rows of 16 A rows, then transpose.
        for sub in (0..BLOCK).step_by(TILE) {
            let mask = lanes(rows.saturating_sub(sub));
            for chunk in 0..kpad / KC {
                let mut r = [_mm512_setzero_si512(); 16];
                for (q, r) in r.iter_mut().enumerate() {
                    let kk = chunk * KC + 2 * q;
                    let at = |kk: usize| src.wrapping_add(row0 + sub + kk * cs);
                    let me = if kk < k { mask } else { 0 };
                    let mo = if kk + 1 < k { mask } else { 0 };
                    *r = pairs(at(kk), me, at(kk + 1), mo);
                }
                for (i, t) in transpose(&r).iter().enumerate() {
                    _mm512_storeu_si512(dst.add((sub + i) * kpad + chunk * KC) as *mut _, *t);
                }
            }
        }
    } else {
        for i in 0..BLOCK {
            for kk in 0..kpad {
                let v = if i < rows && kk < k {
                    d[(row0 + i) * rs + kk * cs]
                } else {
                    0.0
                };
                *dst.add(i * kpad + kk) = bf16_bits(v);
            }
        }
    }
}

/// B as panels of 16 columns, each `kpad / 2` rows of 16 (even k, odd k) bf16 pairs; the
/// panels cover `n` rounded up to whole 32-column blocks.
pub(super) fn pack_b(b: Strided, k: usize, n: usize, kpad: usize) -> Vec<u32> {
    let len = kpad / 2 * TILE;
    // SAFETY: panel p writes all its values, padding included; the caller checked `available`.
    unsafe {
        written(n.div_ceil(BLOCK) * 2 * len, len, len, |p, dst| {
            pack_b_panel(b, (k, n, kpad), p * TILE, dst.as_mut_ptr() as *mut u32)
        })
    }
}

#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn pack_b_panel(
    (d, rs, cs): Strided,
    (k, n, kpad): (usize, usize, usize),
    col0: usize,
    dst: *mut u32,
) {
    let cols = n.saturating_sub(col0).min(TILE);
    let src = d.as_ptr();
    if cs == 1 {
        let mask = lanes(cols);
        for q in 0..kpad / 2 {
            let at = |kk: usize| src.wrapping_add(kk * rs + col0);
            let me = if 2 * q < k { mask } else { 0 };
            let mo = if 2 * q + 1 < k { mask } else { 0 };
            _mm512_storeu_si512(
                dst.add(q * TILE) as *mut _,
                pairs(at(2 * q), me, at(2 * q + 1), mo),
            );
        }
    } else if rs == 1 {
        // Each column's k values are contiguous: 32 of them make 16 pairs; transpose.
        for chunk in 0..kpad / KC {
            let mut r = [_mm512_setzero_si512(); 16];
            for (j, r) in r.iter_mut().enumerate().take(cols) {
                let p = src.wrapping_add((col0 + j) * cs + chunk * KC);
                *r = pairs_along(p, k.saturating_sub(chunk * KC));
            }
            for (q, t) in transpose(&r).iter().enumerate() {
                _mm512_storeu_si512(dst.add((chunk * TILE + q) * TILE) as *mut _, *t);
            }
        }
    } else {
        let at = |kk: usize, j: usize| {
            if kk < k && j < cols {
                bf16_bits(d[kk * rs + (col0 + j) * cs]) as u32
            } else {
                0
            }
        };
        for q in 0..kpad / 2 {
            for j in 0..TILE {
                *dst.add(q * TILE + j) = at(2 * q, j) | at(2 * q + 1, j) << 16;
            }
        }
    }
}
