//! The base every kernel stands on: the float types they run on (`Real`), row access to
//! strided layouts, output buffers written from several threads, the worker-pool split
//! (`par_rows`, `par_blocks`), the gemm call and the f32/f64 dispatch.

use super::simd;
use candle_core::{CpuStorage, DType, Layout, Result, Tensor, WithDType};
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// Whether the fused kernels handle this tensor (CPU, f32 or f64).
pub fn supported(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// The float types the kernels run on; the f32 hot loops dispatch to SIMD code.
pub trait Real:
    WithDType
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INF: Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    /// buf[j] ← exp(buf[j] − shift); returns their sum in a fixed order.
    fn exp_inplace_sum(buf: &mut [Self], shift: Self) -> Self {
        let mut s = Self::ZERO;
        for v in buf.iter_mut() {
            *v = (*v - shift).exp();
            s += *v;
        }
        s
    }
    /// Σ_j exp(x[j] − shift) in a fixed order.
    fn exp_sum(x: &[Self], shift: Self) -> Self {
        let mut s = Self::ZERO;
        for &v in x {
            s += (v - shift).exp();
        }
        s
    }
    /// out[j] = exp(x[j] − shift) · scale.
    fn exp_shift_scale(x: &[Self], shift: Self, scale: Self, out: &mut [Self]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = (v - shift).exp() * scale;
        }
    }
    /// Largest element (−∞ for an empty or all −∞ slice).
    fn max_of(x: &[Self]) -> Self {
        let mut m = Self::NEG_INF;
        for &v in x {
            if v > m {
                m = v;
            }
        }
        m
    }
    /// Σ a[j]·b[j] in a fixed order.
    fn dot(a: &[Self], b: &[Self]) -> Self {
        let mut s = Self::ZERO;
        for (&x, &y) in a.iter().zip(b) {
            s += x * y;
        }
        s
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INF: Self = f64::NEG_INFINITY;
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INF: Self = f32::NEG_INFINITY;
    fn exp(self) -> Self {
        simd::exp_f32(self)
    }
    fn ln(self) -> Self {
        f32::ln(self)
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    fn exp_inplace_sum(buf: &mut [Self], shift: Self) -> Self {
        simd::exp_inplace_sum(buf, shift)
    }
    fn exp_sum(x: &[Self], shift: Self) -> Self {
        simd::exp_sum(x, shift)
    }
    fn exp_shift_scale(x: &[Self], shift: Self, scale: Self, out: &mut [Self]) {
        simd::exp_shift_scale(x, shift, scale, out)
    }
    fn max_of(x: &[Self]) -> Self {
        simd::max_of(x)
    }
    fn dot(a: &[Self], b: &[Self]) -> Self {
        simd::dot(a, b)
    }
}

/// Start offsets of the rows (last dimension) of a layout whose last stride is 1.
pub(crate) struct Rows {
    pub n: usize,
    pub len: usize,
    /// None: rows are contiguous from `start`.
    offsets: Option<Vec<usize>>,
    start: usize,
}

impl Rows {
    pub fn new(l: &Layout) -> Result<Self> {
        let dims = l.dims();
        let Some((&len, lead)) = dims.split_last() else {
            candle_core::bail!("fused op on a scalar");
        };
        let n: usize = lead.iter().product();
        if l.is_contiguous() {
            return Ok(Self {
                n,
                len,
                offsets: None,
                start: l.start_offset(),
            });
        }
        let stride = l.stride();
        if len > 1 && stride[dims.len() - 1] != 1 {
            candle_core::bail!("fused op needs a unit stride in the last dimension");
        }
        let mut offsets = Vec::with_capacity(n);
        let mut idx = vec![0usize; lead.len()];
        for _ in 0..n {
            let off: usize = idx.iter().zip(stride).map(|(i, s)| i * s).sum();
            offsets.push(l.start_offset() + off);
            for d in (0..lead.len()).rev() {
                idx[d] += 1;
                if idx[d] < lead[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Ok(Self {
            n,
            len,
            offsets: Some(offsets),
            start: l.start_offset(),
        })
    }

    #[inline]
    pub fn row<'a, T>(&self, data: &'a [T], i: usize) -> &'a [T] {
        let o = match &self.offsets {
            None => self.start + i * self.len,
            Some(v) => v[i],
        };
        &data[o..o + self.len]
    }
}

/// A contiguous slice of `l.shape().elem_count()` elements of a storage.
pub(crate) fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let data = T::cpu_storage_as_slice(s)?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("fused op needs a contiguous operand"),
    }
}

/// Output buffer written row by row from several threads.
pub(crate) struct Out<T> {
    ptr: usize,
    row_len: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T> Out<T> {
    pub fn new(v: &mut [T], row_len: usize) -> Self {
        Self {
            ptr: v.as_mut_ptr() as usize,
            row_len,
            _t: std::marker::PhantomData,
        }
    }

    /// The `i`-th row.
    ///
    /// # Safety
    /// Each row index must be handed out to at most one caller at a time, and `i` must be
    /// within the buffer the `Out` was made from.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    pub unsafe fn row(&self, i: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut((self.ptr as *mut T).add(i * self.row_len), self.row_len)
    }

    /// The first `len` elements of the `i`-th row (a last row the buffer holds only part of).
    ///
    /// # Safety
    /// As [`Out::row`], and `i * row_len + len` must lie within the buffer.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn row_prefix(&self, i: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut((self.ptr as *mut T).add(i * self.row_len), len)
    }
}

/// (rows, in, out) of a product x [.., in] · w [out, in]ᵀ, or an error naming `op` when the
/// shapes do not agree.
pub(crate) fn product_dims(op: &str, x: &[usize], w: &[usize]) -> Result<(usize, usize, usize)> {
    let (Some((&k, lead)), [n, kw]) = (x.split_last(), w) else {
        candle_core::bail!("{op}: {x:?} and {w:?} must be [.., in] and [out, in]");
    };
    if k != *kw {
        candle_core::bail!("{op}: {x:?} does not match {w:?}");
    }
    Ok((lead.iter().product(), k, *n))
}

/// A zero-initialised vector of `n` elements.
pub(crate) fn zeros<T: Real>(n: usize) -> Vec<T> {
    vec![T::ZERO; n]
}

/// An f32 CPU tensor's elements in layout order (contiguous), without a copy.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(CpuStorage::F32(v)) = &*storage else {
        candle_core::bail!("this fused kernel takes f32 CPU tensors");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("this fused kernel takes contiguous tensors");
    };
    f(&v[start..end])
}

/// Run `f(row)` for every row in 0..n, spread over candle's worker pool in fixed units when
/// the work (`n · cost` elements) is large enough to pay for the dispatch.
pub(crate) fn par_rows(n: usize, cost: usize, f: impl Fn(usize) + Sync) {
    const MIN_WORK: usize = 32 * 1024;
    const UNIT_WORK: usize = 16 * 1024;
    if n * cost < MIN_WORK || n < 2 {
        (0..n).for_each(f);
        return;
    }
    let per_unit = (UNIT_WORK / cost.max(1)).max(1);
    let units = n.div_ceil(per_unit);
    candle_core::utils::barrier_pool().execute_chunked(units, |r| {
        for u in r {
            for i in u * per_unit..n.min((u + 1) * per_unit) {
                f(i);
            }
        }
    });
}

/// Run `f(block, rows)` over fixed blocks of `block` rows, collecting one result per block in
/// block order (for deterministic reductions across rows).
pub(crate) fn par_blocks<R: Send + Sync + Default + Clone>(
    n: usize,
    block: usize,
    f: impl Fn(std::ops::Range<usize>) -> R + Sync,
) -> Vec<R> {
    let units = n.div_ceil(block);
    let mut out = vec![R::default(); units];
    let slots = Out::new(&mut out, 1);
    par_rows(units, block * 64, |u| {
        let r = f(u * block..n.min((u + 1) * block));
        // SAFETY: unit u writes only slot u.
        unsafe { slots.row(u)[0] = r };
    });
    out
}

/// dst[m×n] (+)= lhs[m×k] · rhs[k×n] with gemm, each operand given as (pointer, row stride,
/// column stride); `accumulate` adds to dst instead of overwriting it.
///
/// # Safety
/// Every addressed element must lie within its allocation; dst must not alias the inputs.
pub(crate) unsafe fn gemm_into<T: 'static + Real>(
    (m, n, k): (usize, usize, usize),
    dst: (*mut T, isize, isize),
    accumulate: bool,
    lhs: (*const T, isize, isize),
    rhs: (*const T, isize, isize),
    parallelism: gemm::Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst.0,
        dst.2,
        dst.1,
        accumulate,
        lhs.0,
        lhs.2,
        lhs.1,
        rhs.0,
        rhs.2,
        rhs.1,
        T::ONE,
        T::ONE,
        false,
        false,
        false,
        parallelism,
    )
}

/// Dispatch a storage to a generic kernel over f32 / f64.
macro_rules! dispatch {
    ($s:expr, $name:expr, |$t:ident| $body:expr) => {
        match $s {
            candle_core::CpuStorage::F32(_) => {
                type $t = f32;
                $body
            }
            candle_core::CpuStorage::F64(_) => {
                type $t = f64;
                $body
            }
            _ => candle_core::bail!("{}: only f32 and f64 are supported", $name),
        }
    };
}
pub(crate) use dispatch;

/// Whether the CPU has AVX2 with FMA and F16C, the base of the packed-block kernels' SIMD
/// paths.
pub(crate) fn avx2_fma_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        has!("avx2") && has!("fma") && has!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `CARD_NO_AVX512=1`: keep the packed-block kernels off their AVX-512 paths.
pub(crate) fn no_avx512() -> bool {
    std::env::var_os("CARD_NO_AVX512").is_some_and(|v| v != "0")
}

/// CPU flags as Linux reports them, independent of the detection code under test (empty
/// where there is no /proc/cpuinfo).
#[cfg(test)]
pub(crate) fn cpuinfo_flags() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let line = info.lines().find(|l| l.starts_with("flags")).unwrap_or("");
    line.split_whitespace().map(str::to_string).collect()
}
