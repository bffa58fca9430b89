//! bf16 products on AVX512_BF16's `vdpbf16ps` (16 lanes, each adding two bf16 products into
//! an f32 sum), for CPUs with the instruction but no AMX (AMD Zen 4 and later, Intel Cooper
//! Lake). It reads the operands packed as for the tiles (`pack.rs`): an 8-row micro-tile
//! broadcasts one k-pair of each A row against two 16-column B panels per step, and a task
//! runs its 32 packed rows over every panel pair while the pair is in L1.

use super::pack::{self, pack_a, pack_b, BLOCK, KC, TILE};
use super::round::Strided;
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// Rows of one micro-tile.
const MR: usize = 8;

/// C [m×n] = A [m×k] · B [k×n]. The caller checks `pack::available`.
pub fn matmul(a: Strided, b: Strided, (m, k, n): (usize, usize, usize)) -> Vec<f32> {
    if m * n == 0 || k == 0 {
        return vec![0f32; m * n];
    }
    let kpad = k.div_ceil(KC) * KC;
    let (pa, pb) = (pack_a(a, m, k, kpad), pack_b(b, k, n, kpad));
    let kp = kpad / 2;
    let panel_len = kp * TILE;
    let fill = |bi: usize, dst: &mut [MaybeUninit<f32>]| {
        let rows = (m - bi * BLOCK).min(BLOCK);
        let dst = dst.as_mut_ptr() as *mut f32;
        // A's bf16 pairs: row i of the block starts at u32 index i · kp.
        let a_block = pa[bi * BLOCK * kpad..].as_ptr() as *const u32;
        for pp in 0..n.div_ceil(BLOCK) {
            let cols = (n - pp * BLOCK).min(BLOCK);
            let b0 = &pb[2 * pp * panel_len..(2 * pp + 1) * panel_len];
            let b1 = &pb[(2 * pp + 1) * panel_len..(2 * pp + 2) * panel_len];
            for r in (0..rows).step_by(MR) {
                // SAFETY: the caller checked AVX512_BF16; the block holds BLOCK packed rows of
                // kp pairs (zero beyond m), the panels kp rows of 16, and C rows r.. of this
                // block at row stride n.
                unsafe {
                    tile(
                        a_block.add(r * kp),
                        kp,
                        (b0, b1),
                        dst.add(r * n + pp * BLOCK),
                        n,
                        ((rows - r).min(MR), cols),
                    )
                };
            }
        }
    };
    // SAFETY: the micro-tiles of block bi store every row and column of its rows of C.
    unsafe { pack::written(m * n, BLOCK * n, BLOCK * n * kpad / 8, fill) }
}

/// One MR × 32 tile of C at `c` (rows × cols of it stored) from MR packed A rows at `a`.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile(
    a: *const u32,
    kp: usize,
    (b0, b1): (&[u32], &[u32]),
    c: *mut f32,
    ldc: usize,
    (rows, cols): (usize, usize),
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for q in 0..kp {
        let x0: __m512bh =
            std::mem::transmute(_mm512_loadu_si512(b0.as_ptr().add(q * TILE) as *const _));
        let x1: __m512bh =
            std::mem::transmute(_mm512_loadu_si512(b1.as_ptr().add(q * TILE) as *const _));
        for (i, acc) in acc.iter_mut().enumerate() {
            let y: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(i * kp + q) as i32));
            acc[0] = _mm512_dpbf16_ps(acc[0], y, x0);
            acc[1] = _mm512_dpbf16_ps(acc[1], y, x1);
        }
    }
    let mut row = [0f32; BLOCK];
    for (i, acc) in acc.iter().enumerate().take(rows) {
        _mm512_storeu_ps(row.as_mut_ptr(), acc[0]);
        _mm512_storeu_ps(row.as_mut_ptr().add(TILE), acc[1]);
        std::ptr::copy_nonoverlapping(row.as_ptr(), c.add(i * ldc), cols);
    }
}
