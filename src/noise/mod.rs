//! The forward noise process q(x_t | x_0) of every objective, in one place: noise levels t
//! ([`levels`]), where CARD's [MASK] tokens go ([`tail_mask`]), the diffusion baselines'
//! masking at a rate ([`uniform`]) and in count form ([`counts`]), and BD3LM's block layout
//! ([`blocks`]). Objectives decide which to use; this module only draws.

pub mod blocks;
pub mod counts;
pub mod levels;
pub mod tail_mask;
pub mod uniform;

pub use counts::mask_counts;
pub use levels::{levels, Spacing};
pub use tail_mask::tail_mask;
