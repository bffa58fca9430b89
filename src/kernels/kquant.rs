//! The K-quant super-blocks Q4_K and Q6_K (256 values each) for the exact block products of
//! `quant.rs`, which read them 32 values at a time: a chunk's values as 32 small integers
//! with a scale and an offset per half of 16 (value = scale·q + offset). The portable
//! expansion follows GGML's layout and is what the SIMD one is tested against.

/// Values per super-block.
pub const SUPER: usize = 256;
/// Bytes per super-block.
pub const Q4K_BYTES: usize = 144;
pub const Q6K_BYTES: usize = 210;

fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Q4_K's 6-bit scale and minimum of sub-block j (0..8), packed in 12 bytes.
fn scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Chunk `c` (values 32c..32c+32) of a super-block: the 32 integers, and (scale, offset)
/// for its first and its second 16 values.
pub fn chunk(q6: bool, sb: &[u8], c: usize, q: &mut [i8; 32]) -> [(f32, f32); 2] {
    if !q6 {
        // d, dmin, 12 bytes of scales and minimums, 128 bytes of nibbles: chunks 2g and
        // 2g + 1 are the low and high nibbles of bytes 32g..32g+32.
        let (d, dmin) = (f16_at(sb, 0), f16_at(sb, 2));
        let (sc, m) = scale_min(c, &sb[4..16]);
        let bytes = &sb[16 + 32 * (c / 2)..16 + 32 * (c / 2 + 1)];
        for (qi, &b) in q.iter_mut().zip(bytes) {
            *qi = if c.is_multiple_of(2) {
                b & 0x0F
            } else {
                b >> 4
            } as i8;
        }
        let half = (d * sc as f32, -dmin * m as f32);
        return [half, half];
    }
    // 128 bytes of low nibbles, 64 of high bit pairs, 16 signed scales, d. Each half of 128
    // values is four quarters: quarter t takes the low (t < 2) or high nibbles of ql bytes
    // 32(t % 2).., bit pair t of the qh bytes, and scales 2t and 2t + 1.
    let (h, t) = (c / 4, c % 4);
    let ql = &sb[64 * h + 32 * (t % 2)..64 * h + 32 * (t % 2) + 32];
    let qh = &sb[128 + 32 * h..128 + 32 * h + 32];
    for l in 0..32 {
        let lo = if t < 2 { ql[l] & 0x0F } else { ql[l] >> 4 };
        let hi = (qh[l] >> (2 * t)) & 3;
        q[l] = (lo | (hi << 4)) as i8 - 32;
    }
    let d = f16_at(sb, 208);
    let sc = |i: usize| d * sb[192 + 8 * h + 2 * t + i] as i8 as f32;
    [(sc(0), 0.0), (sc(1), 0.0)]
}

/// A super-block's 256 values.
pub fn unpack(q6: bool, sb: &[u8], out: &mut [f32]) {
    let mut q = [0i8; 32];
    for c in 0..SUPER / 32 {
        let halves = chunk(q6, sb, c, &mut q);
        for (l, &v) in q.iter().enumerate() {
            let (s, o) = halves[l / 16];
            out[32 * c + l] = s * v as f32 + o;
        }
    }
}

/// Chunk `c` of the super-block at `sb` with AVX2: the 32 integers as bytes and the halves'
/// (scale, offset), as [`chunk`] gives them.
///
/// # Safety
/// AVX2 must be available and `sb` must point at a whole super-block.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn chunk_avx2(
    q6: bool,
    sb: *const u8,
    c: usize,
) -> (std::arch::x86_64::__m256i, [(f32, f32); 2]) {
    use std::arch::x86_64::*;
    let f16 = |p: *const u8| {
        let bits = u16::from_le_bytes([*p, *p.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    };
    let low = _mm256_set1_epi8(0x0F);
    if !q6 {
        let s = std::slice::from_raw_parts(sb.add(4), 12);
        let (sc, m) = scale_min(c, s);
        let bytes = _mm256_loadu_si256(sb.add(16 + 32 * (c / 2)) as *const __m256i);
        let nib = match c % 2 {
            0 => _mm256_and_si256(bytes, low),
            _ => _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low),
        };
        let half = (f16(sb) * sc as f32, -f16(sb.add(2)) * m as f32);
        return (nib, [half, half]);
    }
    let (h, t) = (c / 4, c % 4);
    let ql = _mm256_loadu_si256(sb.add(64 * h + 32 * (t % 2)) as *const __m256i);
    let qh = _mm256_loadu_si256(sb.add(128 + 32 * h) as *const __m256i);
    let lo = match t < 2 {
        true => _mm256_and_si256(ql, low),
        false => _mm256_and_si256(_mm256_srli_epi16(ql, 4), low),
    };
    // Bit pair t of each qh byte, moved to bits 4..6 (shifts by a run-time count).
    let shift = _mm_cvtsi32_si128(2 * t as i32);
    let hi = _mm256_and_si256(_mm256_srl_epi16(qh, shift), _mm256_set1_epi8(3));
    let q = _mm256_sub_epi8(
        _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)),
        _mm256_set1_epi8(32),
    );
    let d = f16(sb.add(208));
    let sc = |i: usize| d * *sb.add(192 + 8 * h + 2 * t + i) as i8 as f32;
    (q, [(sc(0), 0.0), (sc(1), 0.0)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    /// candle's own dequantization of the same super-blocks is the independent reference.
    #[test]
    fn unpack_equals_candles_expansion() {
        for (dtype, q6, size) in [
            (GgmlDType::Q4K, false, Q4K_BYTES),
            (GgmlDType::Q6K, true, Q6K_BYTES),
        ] {
            let vals: Vec<f32> = crate::runtime::rng::test_values(3 * SUPER, 5)
                .into_iter()
                .map(|v| v as f32 * 3.0)
                .collect();
            let w = Tensor::from_vec(vals, (3, SUPER), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let bytes = q.data().unwrap().into_owned();
            assert_eq!(bytes.len(), 3 * size, "{dtype:?}");
            let want = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap();
            let want = want.to_vec1::<f32>().unwrap();
            let mut got = vec![0f32; 3 * SUPER];
            for (sb, out) in bytes.chunks(size).zip(got.chunks_mut(SUPER)) {
                unpack(q6, sb, out);
            }
            assert_eq!(got, want, "{dtype:?}");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                for c in 0..SUPER / 32 {
                    let mut q = [0i8; 32];
                    let halves = chunk(q6, &bytes[..size], c, &mut q);
                    // SAFETY: AVX2 checked; the slice holds a whole super-block.
                    let (v, h) = unsafe { chunk_avx2(q6, bytes.as_ptr(), c) };
                    let v: [i8; 32] = unsafe { std::mem::transmute(v) };
                    assert_eq!((v, h), (q, halves), "{dtype:?} chunk {c}");
                }
            }
        }
    }
}
