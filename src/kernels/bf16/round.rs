//! The operand form every bf16 path reads, and the rounding they all share.

/// An operand as (data, row stride, column stride): element (i, j) is `data[i*rs + j*cs]`.
pub type Strided<'a> = (&'a [f32], usize, usize);

/// f32 → bf16 bits, rounding to nearest even (NaN stays NaN).
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// `x` rounded to the nearest bf16 value, as f32.
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits((bf16_bits(x) as u32) << 16)
}
