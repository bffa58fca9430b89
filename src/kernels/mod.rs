//! Every hand-written CPU kernel, each beside the plain path it is tested against: the fused
//! training ops with their own backward (attention, RMSNorm, RoPE, SwiGLU, softmax, NLL,
//! linear, the output head with its cross-entropy), bf16 products on AMX tiles or `vdpbf16ps` (`bf16/`), small-row and quantized
//! (GGUF block) products for decoding (`small_matmul.rs`, `quant.rs`), and the in-place
//! AdamW/EMA pass (`optim.rs`). `model/ops.rs` picks a kernel per call and falls back to
//! composite candle ops where none applies.
//!
//! Nothing here knows the model: kernels take slices, candle tensors and the attention
//! geometry (`config::Heads`), and describe their own masks ([`Mask`]).
//!
//! Every kernel works row by row over the last dimension; rows are spread over candle's
//! worker pool in fixed units, and every value is produced by one sequential loop, so
//! results do not depend on thread scheduling (bit-identical reruns). Reductions across
//! rows (an RMSNorm weight gradient) sum fixed blocks, then the blocks in order.
//! Only f32 and f64 CPU tensors are supported: see [`supported`].

mod attention;
pub mod bf16;
mod core;
pub(crate) mod decode;
mod head_loss;
pub mod int8;
mod kquant;
mod linear;
mod loss;
pub(crate) mod norm;
pub mod optim;
pub(crate) mod pointwise;
pub mod quant;
mod simd;
pub(crate) mod small_matmul;
mod softmax;

pub use self::core::supported;
pub use attention::{attention, Mask};
pub use head_loss::head_loss;
pub use linear::{linear, linear_bf16};
pub use loss::nll_rows;
pub use norm::rms_norm;
pub use pointwise::{rope, swiglu};
pub use small_matmul::{small_matmul, MAX_ROWS as SMALL_MATMUL_ROWS};
pub use softmax::softmax_last;
