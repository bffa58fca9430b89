//! f32 row kernels written so the compiler vectorises them: a branch-free exp and reductions
//! over eight fixed lanes (a fixed summation order, so results are reproducible). On x86-64
//! they are compiled a second time for AVX2 and picked at run time.

const LOG2E: f32 = std::f32::consts::LOG2_E;
// ln 2 split so k·LN2_HI is exact for the |k| ≤ 128 used here.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// 1.5·2²³: adding it rounds to an integer held in the low mantissa bits.
const ROUND: f32 = 12_582_912.0;
/// Below this exp underflows f32's normal range: the result is 0.
const LOW: f32 = -87.0;
const HIGH: f32 = 88.0;

/// e^x to about 2 ulp for f32: 2^k · e^r with |r| ≤ ln2/2 and a degree-7 Taylor polynomial.
/// exp(−∞) = 0 and NaN stays NaN; x > 88 saturates to e^88 (f32's limit is e^88.7).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    // Branch-free (clamp and selects) so loops over it vectorise.
    let xc = x.clamp(LOW, HIGH);
    let t = xc * LOG2E + ROUND;
    let k = t - ROUND;
    let ki = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = xc - k * LN2_HI - k * LN2_LO;
    let mut p = 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    let scale = f32::from_bits(((ki + 127) as u32) << 23);
    let y = if x < LOW { 0.0 } else { p * scale };
    // Keep a NaN a NaN.
    if x.is_nan() {
        x
    } else {
        y
    }
}

#[inline(always)]
fn lanes_sum(acc: [f32; 8], tail: f32) -> f32 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[inline(always)]
fn sum_impl(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..8 {
            acc[j] += c[j];
        }
    }
    lanes_sum(acc, rest.iter().sum())
}

#[inline(always)]
fn exp_inplace_sum_impl(buf: &mut [f32], shift: f32) -> f32 {
    for v in buf.iter_mut() {
        *v = exp_f32(*v - shift);
    }
    sum_impl(buf)
}

#[inline(always)]
fn exp_sum_impl(x: &[f32], shift: f32) -> f32 {
    // Exps into a small buffer (a plain loop the vectoriser handles), then lane sums.
    let mut acc = [0f32; 8];
    let mut buf = [0f32; 64];
    let chunks = x.chunks_exact(64);
    let rest = chunks.remainder();
    for c in chunks {
        for (b, &v) in buf.iter_mut().zip(c) {
            *b = exp_f32(v - shift);
        }
        for l in buf.chunks_exact(8) {
            for j in 0..8 {
                acc[j] += l[j];
            }
        }
    }
    let mut tail = 0f32;
    for &v in rest {
        tail += exp_f32(v - shift);
    }
    lanes_sum(acc, tail)
}

#[inline(always)]
fn exp_shift_scale_impl(x: &[f32], shift: f32, scale: f32, out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = exp_f32(v - shift) * scale;
    }
}

#[inline(always)]
fn max_impl(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..8 {
            acc[j] = if c[j] > acc[j] { c[j] } else { acc[j] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in acc.iter().chain(rest) {
        if v > m {
            m = v;
        }
    }
    m
}

#[inline(always)]
fn dot_impl(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    lanes_sum(acc, tail)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    #[target_feature(enable = "avx2")]
    pub unsafe fn exp_inplace_sum(buf: &mut [f32], shift: f32) -> f32 {
        super::exp_inplace_sum_impl(buf, shift)
    }
    #[target_feature(enable = "avx2")]
    pub unsafe fn exp_sum(x: &[f32], shift: f32) -> f32 {
        super::exp_sum_impl(x, shift)
    }
    #[target_feature(enable = "avx2")]
    pub unsafe fn exp_shift_scale(x: &[f32], shift: f32, scale: f32, out: &mut [f32]) {
        super::exp_shift_scale_impl(x, shift, scale, out)
    }
    #[target_feature(enable = "avx2")]
    pub unsafe fn max_of(x: &[f32]) -> f32 {
        super::max_impl(x)
    }
    #[target_feature(enable = "avx2")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        super::dot_impl(a, b)
    }
}

#[inline]
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

macro_rules! pick {
    ($f:ident, $imp:ident ( $($a:expr),* )) => {{
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU supports AVX2 (checked at run time).
            return unsafe { avx2::$f($($a),*) };
        }
        $imp($($a),*)
    }};
}

/// buf[j] ← exp(buf[j] − shift); returns their sum in a fixed order.
pub fn exp_inplace_sum(buf: &mut [f32], shift: f32) -> f32 {
    pick!(exp_inplace_sum, exp_inplace_sum_impl(buf, shift))
}

/// Σ_j exp(x[j] − shift) in a fixed order.
pub fn exp_sum(x: &[f32], shift: f32) -> f32 {
    pick!(exp_sum, exp_sum_impl(x, shift))
}

/// out[j] = exp(x[j] − shift) · scale.
pub fn exp_shift_scale(x: &[f32], shift: f32, scale: f32, out: &mut [f32]) {
    pick!(exp_shift_scale, exp_shift_scale_impl(x, shift, scale, out))
}

/// Largest element, ignoring NaN (−∞ for an empty slice).
pub fn max_of(x: &[f32]) -> f32 {
    pick!(max_of, max_impl(x))
}

/// Σ a[j]·b[j] over the common length, in a fixed order.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    pick!(dot, dot_impl(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_and_handles_the_edges() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let rel = ((exp_f32(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(f32::NAN).is_nan());
    }

    #[test]
    fn reductions_match_plain_loops() {
        let x: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 101) as f32 * 0.1 - 3.0)
            .collect();
        let y: Vec<f32> = (0..37)
            .map(|i| ((i * 31) % 17) as f32 * 0.2 - 1.0)
            .collect();
        let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(max_of(&x), m);
        let d: f64 = x.iter().zip(&y).map(|(a, b)| (a * b) as f64).sum();
        assert!((dot(&x, &y) as f64 - d).abs() < 1e-4);
        let mut out = x.clone();
        let s = exp_inplace_sum(&mut out, m);
        let want: f64 = x.iter().map(|&v| ((v - m) as f64).exp()).sum();
        assert!((s as f64 - want).abs() < 1e-5 * want);
        assert!((max_of(&[]) == f32::NEG_INFINITY) && dot(&[], &[]) == 0.0);
    }
}
