//! x · wᵀ with w in GGUF blocks (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) or bf16 and x in f32, for the host backend's
//! decoding steps. Each 32-value block is expanded once into registers and dotted with every
//! input row while there, so a step reads the packed weights once. Activations stay f32
//! (candle's quantized matmul rounds them to 8 bits, and its Q4_1 dot is scalar): the result
//! is the expanded matrix's product up to summation order, so quantized decoding differs
//! from its f32 reference only by the weights' own rounding.

use super::core::{avx2_fma_f16c, no_avx512};
use super::kquant;
use super::small_matmul::{by_weight_rows, MAX_ROWS};
use candle_core::quantized::GgmlDType;

/// Values per block (a K-quant super-block is read as eight such chunks).
pub const BLOCK: usize = 32;

/// The block types this kernel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocks {
    /// f16 scale d, 16 bytes of nibbles: (q − 8)·d.
    Q4_0,
    /// f16 scale d and minimum m, 16 bytes of nibbles: q·d + m.
    Q4_1,
    /// f16 scale d, 32 signed bytes: q·d.
    Q8_0,
    /// 32 bf16 values (`card bench decode --bf16`: half the bytes of f32, no scale).
    Bf16,
    /// 256 values: f16 d and dmin, 6-bit scales and minimums per 32, nibbles.
    Q4K,
    /// 256 values: 6-bit integers (nibbles and bit pairs), a signed scale per 16, f16 d.
    Q6K,
}

impl Blocks {
    pub fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_0 => Some(Blocks::Q4_0),
            GgmlDType::Q4_1 => Some(Blocks::Q4_1),
            GgmlDType::Q8_0 => Some(Blocks::Q8_0),
            GgmlDType::BF16 => Some(Blocks::Bf16),
            GgmlDType::Q4K => Some(Blocks::Q4K),
            GgmlDType::Q6K => Some(Blocks::Q6K),
            _ => None,
        }
    }

    /// Bytes of a row of `k` values: whole blocks, except that bf16 rows may end in a part
    /// block (k = 688, say).
    pub fn row_bytes(self, k: usize) -> usize {
        match self {
            Blocks::Bf16 => 2 * k,
            _ => k / self.values() * self.bytes(),
        }
    }

    /// Bytes per block (per super-block for the K-quants).
    pub fn bytes(self) -> usize {
        match self {
            Blocks::Q4_0 => 18,
            Blocks::Q4_1 => 20,
            Blocks::Q8_0 => 34,
            Blocks::Bf16 => 64,
            Blocks::Q4K => kquant::Q4K_BYTES,
            Blocks::Q6K => kquant::Q6K_BYTES,
        }
    }

    /// Values per block (per super-block for the K-quants).
    pub fn values(self) -> usize {
        match self {
            Blocks::Q4K | Blocks::Q6K => kquant::SUPER,
            _ => BLOCK,
        }
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// One block's values, 32 (256 for a K-quant super-block; the portable path, and the
/// reference the SIMD one is tested on).
pub fn unpack(kind: Blocks, blk: &[u8], out: &mut [f32]) {
    if matches!(kind, Blocks::Q4K | Blocks::Q6K) {
        return kquant::unpack(kind == Blocks::Q6K, blk, out);
    }
    if kind == Blocks::Bf16 {
        for (o, b) in out.iter_mut().zip(blk.chunks_exact(2)) {
            // A bf16 is the top half of an f32.
            *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
        }
        return;
    }
    let d = f16_at(blk, 0);
    match kind {
        Blocks::Q4_0 | Blocks::Q4_1 => {
            let (m, qs) = match kind {
                Blocks::Q4_1 => (f16_at(blk, 2), &blk[4..20]),
                _ => (-8.0 * d, &blk[2..18]),
            };
            for (j, &q) in qs.iter().enumerate() {
                out[j] = (q & 0x0F) as f32 * d + m;
                out[j + 16] = (q >> 4) as f32 * d + m;
            }
        }
        Blocks::Q8_0 => {
            for (o, &q) in out[..BLOCK].iter_mut().zip(&blk[2..34]) {
                *o = q as i8 as f32 * d;
            }
        }
        _ => unreachable!("handled above"),
    }
}

/// A row of `k` values (whole blocks but for bf16) expanded into `out`.
pub fn dequantize_row(kind: Blocks, row: &[u8], out: &mut [f32]) {
    for (blk, o) in row.chunks(kind.bytes()).zip(out.chunks_mut(kind.values())) {
        unpack(kind, blk, o);
    }
}

/// out [m, n] = x [m, k] · w [n, k]ᵀ, w as `n` rows of k/32 blocks, m ≤ `MAX_ROWS`, through
/// `out_t` [n, m] scratch, like the f32 small-row kernel. Allocates nothing.
#[allow(clippy::too_many_arguments)]
pub fn matmul_into(
    x: &[f32],
    m: usize,
    k: usize,
    kind: Blocks,
    w: &[u8],
    n: usize,
    out_t: &mut [f32],
    out: &mut [f32],
) {
    let row_bytes = kind.row_bytes(k);
    assert!(
        m <= MAX_ROWS
            && (k.is_multiple_of(kind.values()) || kind == Blocks::Bf16)
            && x.len() >= m * k
            && w.len() >= n * row_bytes,
        "quantized matmul: m {m} k {k} n {n}, x {} w {}",
        x.len(),
        w.len()
    );
    let x = &x[..m * k];
    let path = Path::best();
    by_weight_rows(n, m, row_bytes, out_t, out, |j, o| {
        dots(x, &w[j * row_bytes..(j + 1) * row_bytes], k, kind, o, path)
    });
}

/// The kernels a block product can run on, fastest first; every path expands each block
/// once and differs from the others only in summation order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// 16-wide AVX-512 (with F16C for the scales).
    Avx512,
    /// 8-wide AVX2 with FMA and F16C.
    Avx2,
    /// Plain Rust.
    Portable,
}

impl Path {
    pub const ALL: [Path; 3] = [Path::Avx512, Path::Avx2, Path::Portable];

    /// Whether this CPU can run the path.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => avx2_fma_f16c() && std::arch::is_x86_feature_detected!("avx512f"),
            Path::Avx2 => avx2_fma_f16c(),
            Path::Portable => true,
            #[cfg(not(target_arch = "x86_64"))]
            Path::Avx512 => false,
        }
    }

    /// The path products take on this machine (`CARD_NO_AVX512=1` keeps them on AVX2).
    pub fn best() -> Path {
        static BEST: std::sync::OnceLock<Path> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            let usable = |p: &&Path| p.available() && !(**p == Path::Avx512 && no_avx512());
            *Path::ALL.iter().find(usable).expect("portable")
        })
    }
}

/// o[i] = x row i · the packed weight row, for every input row, on `path` (the portable
/// path where the CPU lacks it).
pub(crate) fn dots(x: &[f32], wrow: &[u8], k: usize, kind: Blocks, o: &mut [f32], path: Path) {
    #[cfg(target_arch = "x86_64")]
    if path != Path::Portable && path.available() {
        // The K-quants' expansion is a separate instance (`KQ`), so the 32-value blocks'
        // loop holds no branch on it and keeps its expansion inlined.
        let kq = matches!(kind, Blocks::Q4K | Blocks::Q6K);
        macro_rules! by_rows {
            ($module:ident, $($m:literal $a:literal)*) => {
                match (o.len(), kq) {
                    // SAFETY (every arm): `available` checked the path's features.
                    $(($m, false) => unsafe { $module::dots::<$m, $a, false>(x, wrow, k, kind, o) },
                      ($m, true) => unsafe { $module::dots::<$m, $a, true>(x, wrow, k, kind, o) },)*
                    _ => unreachable!("at most MAX_ROWS input rows"),
                }
            };
        }
        return match path {
            Path::Avx512 => {
                by_rows!(avx512, 1 2 2 2 3 2 4 2 5 1 6 1 7 1 8 1 9 1 10 1 11 1 12 1 13 1 14 1 15 1 16 1)
            }
            _ => {
                by_rows!(avx2, 1 4 2 2 3 2 4 1 5 1 6 1 7 1 8 1 9 1 10 1 11 1 12 1 13 1 14 1 15 1 16 1)
            }
        };
    }
    let _ = path;
    let (unit, mut vals) = (kind.values(), [0f32; kquant::SUPER]);
    o.fill(0.0);
    for (b, blk) in wrow.chunks(kind.bytes()).enumerate() {
        let w = (k - b * unit).min(unit);
        unpack(kind, blk, &mut vals[..w]);
        for (i, oi) in o.iter_mut().enumerate() {
            let xb = &x[i * k + b * unit..i * k + b * unit + w];
            *oi += xb.iter().zip(&vals).map(|(a, w)| a * w).sum::<f32>();
        }
    }
}

/// `dots::<M, A>` of a SIMD path: M input rows against one packed weight row with A
/// accumulators per row (several for a few rows, whose single FMA chains would wait on each
/// other; one for many, whose chains interleave and would not fit the registers otherwise).
/// Each block is expanded once by the path's `expand` and summed with its `hsum`; the paths
/// differ only in vector width.
#[cfg(target_arch = "x86_64")]
macro_rules! block_dots {
    ($features:literal, $vec:ty, $zero:ident, $fmadd:ident, $load:ident, $add:ident, $lanes:literal) => {
        /// # Safety
        /// The CPU must have the path's features.
        #[target_feature(enable = $features)]
        pub unsafe fn dots<const M: usize, const A: usize, const KQ: bool>(
            x: &[f32],
            wrow: &[u8],
            k: usize,
            kind: Blocks,
            o: &mut [f32],
        ) {
            let blocks = k / BLOCK;
            assert!(x.len() >= M * k && wrow.len() >= kind.row_bytes(k) && o.len() >= M);
            let mut acc: [[$vec; A]; M] = [[$zero(); A]; M];
            let xp = x.as_ptr();
            let per_block = kind.row_bytes(k) / blocks.max(1);
            for b in 0..blocks {
                // The weight stream prefetched ahead of the products (a prefetch never
                // faults, so running past the row into the next ones is fine).
                let ahead = wrow.as_ptr().wrapping_add(b * per_block + PREFETCH_BYTES);
                _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                // SAFETY: block b lies within wrow, and x row i's block b within x (asserted).
                let w = match KQ {
                    true => expand_k(kind, wrow.as_ptr(), b),
                    false => expand(kind, wrow.as_ptr().add(b * kind.bytes())),
                };
                for (i, a) in acc.iter_mut().enumerate() {
                    let at = xp.add(i * k + b * BLOCK);
                    for (v, wv) in w.iter().enumerate() {
                        let slot = &mut a[v % A];
                        *slot = $fmadd($load(at.add($lanes * v)), *wv, *slot);
                    }
                }
            }
            // A bf16 row's part block (the only kind that has one), value by value.
            let (tail0, mut tail) = (blocks * BLOCK, [0f32; BLOCK]);
            if tail0 < k {
                super::unpack(kind, &wrow[2 * tail0..2 * k], &mut tail[..k - tail0]);
            }
            for (i, a) in acc.iter().enumerate() {
                let mut s = a[0];
                for v in a.iter().skip(1) {
                    s = $add(s, *v);
                }
                let rest: f32 = (tail0..k).map(|c| x[i * k + c] * tail[c - tail0]).sum();
                o[i] = hsum(s) + rest;
            }
        }
    };
}
#[cfg(target_arch = "x86_64")]
use block_dots;

/// How far ahead of the products the packed weights are prefetched: on a 2-core Emerald
/// Rapids guest a three-position pass of SmolLM2 went from 21.5 to 13.5 ms in bf16 and from
/// 14.5–15.9 to 12.8 ms in Q4_1/Q8_0 with 8 KiB (the hardware prefetcher alone left the loads
/// waiting); 2–4 KiB measured between the two. The int8 kernel (`int8.rs`) streams the same
/// blocks and prefetches as far.
pub(super) const PREFETCH_BYTES: usize = 8192;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Blocks, BLOCK, PREFETCH_BYTES};
    use std::arch::x86_64::*;

    /// The f16 at `p` (F16C: `half`'s portable conversion cost more than the block's math).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16(p: *const u8) -> f32 {
        let bits = u16::from_le_bytes([*p, *p.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// Values 32b..32b+32 of a row of K-quant super-blocks in four vectors.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn expand_k(kind: Blocks, row: *const u8, b: usize) -> [__m256; 4] {
        let sb = row.add(b / 8 * kind.bytes());
        let (q, halves) = super::kquant::chunk_avx2(kind == Blocks::Q6K, sb, b % 8);
        let v = |j: usize| {
            let (s, o) = halves[j / 2];
            let bytes = _mm_loadl_epi64((&q as *const __m256i as *const u8).add(8 * j) as _);
            let f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
            _mm256_fmadd_ps(f, _mm256_set1_ps(s), _mm256_set1_ps(o))
        };
        [v(0), v(1), v(2), v(3)]
    }

    /// A 32-value block's values in four vectors.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn expand(kind: Blocks, blk: *const u8) -> [__m256; 4] {
        if kind == Blocks::Bf16 {
            // Widen 8 bf16 to 32 bits and shift them into the top half of an f32.
            let v = |at: usize| {
                let h = _mm_loadu_si128(blk.add(2 * at) as *const __m128i);
                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
            };
            return [v(0), v(8), v(16), v(24)];
        }
        let scale = f16(blk);
        let d = _mm256_set1_ps(scale);
        match kind {
            Blocks::Q4_0 | Blocks::Q4_1 => {
                let (m, qs) = match kind {
                    Blocks::Q4_1 => (_mm256_set1_ps(f16(blk.add(2))), blk.add(4)),
                    _ => (_mm256_set1_ps(-8.0 * scale), blk.add(2)),
                };
                let q = _mm_loadu_si128(qs as *const __m128i);
                let mask = _mm_set1_epi8(0x0F);
                let lo = _mm_and_si128(q, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
                let a = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
                let b = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
                let c = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
                let e = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
                [
                    _mm256_fmadd_ps(a, d, m),
                    _mm256_fmadd_ps(b, d, m),
                    _mm256_fmadd_ps(c, d, m),
                    _mm256_fmadd_ps(e, d, m),
                ]
            }
            Blocks::Q8_0 => {
                let q = blk.add(2);
                let v = |at: usize| {
                    let b = _mm_loadl_epi64(q.add(at) as *const __m128i);
                    _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), d)
                };
                [v(0), v(8), v(16), v(24)]
            }
            _ => unreachable!("handled above"),
        }
    }

    /// The lanes' sum, in lane order.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(s: __m256) -> f32 {
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), s);
        lanes.iter().sum::<f32>()
    }

    super::block_dots!(
        "avx2,fma,f16c",
        __m256,
        _mm256_setzero_ps,
        _mm256_fmadd_ps,
        _mm256_loadu_ps,
        _mm256_add_ps,
        8
    );
}

/// The AVX2 kernel's shape at 16 lanes: a block is two vectors, A ≤ 2 accumulators per row.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Blocks, BLOCK, PREFETCH_BYTES};
    use std::arch::x86_64::*;

    /// Values 32b..32b+32 of a row of K-quant super-blocks in two vectors.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn expand_k(kind: Blocks, row: *const u8, b: usize) -> [__m512; 2] {
        let sb = row.add(b / 8 * kind.bytes());
        let (q, halves) = super::kquant::chunk_avx2(kind == Blocks::Q6K, sb, b % 8);
        let v = |j: usize| {
            let (s, o) = halves[j];
            let bytes = match j {
                0 => _mm256_extracti128_si256::<0>(q),
                _ => _mm256_extracti128_si256::<1>(q),
            };
            let f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
            _mm512_fmadd_ps(f, _mm512_set1_ps(s), _mm512_set1_ps(o))
        };
        [v(0), v(1)]
    }

    /// A 32-value block's values in two vectors.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn expand(kind: Blocks, blk: *const u8) -> [__m512; 2] {
        if kind == Blocks::Bf16 {
            let v = |at: usize| {
                let h = _mm256_loadu_si256(blk.add(2 * at) as *const __m256i);
                _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
            };
            return [v(0), v(16)];
        }
        let bits = u16::from_le_bytes([*blk, *blk.add(1)]);
        let scale = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)));
        let d = _mm512_set1_ps(scale);
        match kind {
            Blocks::Q4_0 | Blocks::Q4_1 => {
                let (m, qs) = match kind {
                    Blocks::Q4_1 => {
                        let mb = u16::from_le_bytes([*blk.add(2), *blk.add(3)]);
                        let min = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(mb as i32)));
                        (_mm512_set1_ps(min), blk.add(4))
                    }
                    _ => (_mm512_set1_ps(-8.0 * scale), blk.add(2)),
                };
                // Low nibbles are values 0..16, high nibbles 16..32.
                let q = _mm_loadu_si128(qs as *const __m128i);
                let mask = _mm_set1_epi8(0x0F);
                let lo = _mm_and_si128(q, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
                let f = |b: __m128i| _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b));
                [_mm512_fmadd_ps(f(lo), d, m), _mm512_fmadd_ps(f(hi), d, m)]
            }
            Blocks::Q8_0 => {
                let q = blk.add(2);
                let v = |at: usize| {
                    let b = _mm_loadu_si128(q.add(at) as *const __m128i);
                    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)), d)
                };
                [v(0), v(16)]
            }
            _ => unreachable!("handled above"),
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn hsum(s: __m512) -> f32 {
        _mm512_reduce_add_ps(s)
    }

    super::block_dots!(
        "avx512f,avx2,fma,f16c",
        __m512,
        _mm512_setzero_ps,
        _mm512_fmadd_ps,
        _mm512_loadu_ps,
        _mm512_add_ps,
        16
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    #[test]
    fn the_machine_takes_the_best_path_its_cpu_has() {
        let flags = crate::kernels::core::cpuinfo_flags();
        if flags.is_empty() {
            eprintln!("no /proc/cpuinfo: the dispatch is not checked");
            return;
        }
        let has = |f: &str| flags.iter().any(|x| x == f);
        let avx2 = has("avx2") && has("fma") && has("f16c");
        let want = match (avx2 && has("avx512f"), avx2) {
            (true, _) if !crate::kernels::core::no_avx512() => Path::Avx512,
            (_, true) => Path::Avx2,
            _ => Path::Portable,
        };
        assert_eq!(Path::best(), want, "the flags say {want:?}");
        eprintln!("block products on this CPU: {want:?}");
    }

    /// Every path the CPU has against candle's own dequantization of the same blocks.
    #[test]
    fn every_path_equals_the_expanded_product() {
        let paths: Vec<Path> = Path::ALL.into_iter().filter(|p| p.available()).collect();
        for p in Path::ALL.iter().filter(|p| !p.available()) {
            eprintln!("block products: this CPU lacks the {p:?} path (not tested here)");
        }
        for (dtype, k) in [
            (GgmlDType::Q4_0, 96),
            (GgmlDType::Q4_1, 96),
            (GgmlDType::Q8_0, 96),
            (GgmlDType::BF16, 96),
            // bf16 rows need not be whole blocks (the FFN's 688 columns).
            (GgmlDType::BF16, 75),
            // K-quant rows are whole super-blocks of 256.
            (GgmlDType::Q4K, 512),
            (GgmlDType::Q6K, 256),
        ] {
            let n = 37;
            let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let bytes = q.data().unwrap().into_owned();
            let dense = q.dequantize(&Device::Cpu).unwrap();
            let kind = Blocks::of(dtype).unwrap();
            let mut row = vec![0f32; k];
            dequantize_row(kind, &bytes[..kind.row_bytes(k)], &mut row);
            assert_eq!(
                row,
                dense.get(0).unwrap().to_vec1::<f32>().unwrap(),
                "{dtype:?}"
            );
            for m in [1, 3, 16] {
                let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
                let want = x
                    .matmul(&dense.t().unwrap())
                    .unwrap()
                    .flatten_all()
                    .unwrap();
                let want = want.to_vec1::<f32>().unwrap();
                let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for &path in &paths {
                    let row_bytes = kind.row_bytes(k);
                    let mut out = vec![0f32; m * n];
                    for j in 0..n {
                        let mut o = vec![0f32; m];
                        dots(
                            &xs,
                            &bytes[j * row_bytes..(j + 1) * row_bytes],
                            k,
                            kind,
                            &mut o,
                            path,
                        );
                        for i in 0..m {
                            out[i * n + j] = o[i];
                        }
                    }
                    let diff = out
                        .iter()
                        .zip(&want)
                        .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
                    assert!(diff < 1e-3, "{dtype:?} m {m} {path:?}: {diff}");
                }
                let (mut t, mut out) = (vec![0f32; n * m], vec![0f32; m * n]);
                matmul_into(&xs, m, k, kind, &bytes, n, &mut t, &mut out);
                let diff = out
                    .iter()
                    .zip(&want)
                    .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
                assert!(diff < 1e-3, "{dtype:?} m {m} matmul_into: {diff}");
            }
        }
    }
}
