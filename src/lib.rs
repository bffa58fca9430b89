//! `card`: Causal Autoregressive Diffusion language models in Rust, on candle.
//!
//! The model knows nothing about diffusion ([`model`]); an [`objective`] is the whole
//! difference between ARM and CARD; one [`train`]er, one [`eval`]uation.

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod decode;
pub mod dist;
pub mod eval;
pub mod experiment;
pub mod import;
pub mod kernels;
pub mod model;
pub mod noise;
pub mod objective;
pub mod runtime;
pub mod serve;
pub mod train;
