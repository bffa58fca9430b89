//! The f32 products of one SmolLM2-135M training step (batch 4 × 256 = 1,024 tokens) through
//! candle's matmul, which runs the gemm crate: forward x·wᵀ and the two backward products
//! dx = g·w and dw = gᵀ·x for each linear layer, and one 8,192-row block of the output head.
//! Prints ms and GFLOP/s per product (best of 7 rounds of 3); `scripts/gemm_shapes_torch.py`
//! times the same products in PyTorch (MKL), to tell how much of a training step's gap to
//! PyTorch is the product engine.
//!
//!     cargo run --release --example gemm_shapes      # threads: RAYON_NUM_THREADS
use candle_core::{Device, Result, Tensor};
use std::time::Instant;

/// (name, inner width k, output width n) of x [1024, k] · w [n, k]ᵀ.
const SHAPES: [(&str, usize, usize); 5] = [
    ("qkv", 576, 960),
    ("wo", 576, 576),
    ("gate_up", 576, 3072),
    ("down", 1536, 576),
    ("head", 576, 8192),
];
const TOKENS: usize = 1024;

fn best_of(f: &dyn Fn() -> Result<Tensor>) -> Result<f64> {
    f()?;
    let mut best = f64::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        for _ in 0..3 {
            drop(f()?);
        }
        best = best.min(t.elapsed().as_secs_f64() / 3.0);
    }
    Ok(best)
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    let mut total = 0.0;
    for (name, k, n) in SHAPES {
        let x = Tensor::randn(0f32, 1.0, (TOKENS, k), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        let g = Tensor::randn(0f32, 1.0, (TOKENS, n), &dev)?;
        let products: [(&str, &dyn Fn() -> Result<Tensor>); 3] = [
            ("fwd", &|| x.matmul(&w.t()?)),
            ("dx", &|| g.matmul(&w)),
            ("dw", &|| g.t()?.matmul(&x)),
        ];
        for (what, f) in products {
            let s = best_of(f)?;
            total += s;
            let gflops = 2.0 * (TOKENS * k * n) as f64 / s / 1e9;
            println!("{name:8} {what:3} {:7.2} ms {gflops:6.1} GFLOP/s", s * 1e3);
        }
    }
    println!("total {:.1} ms", total * 1e3);
    Ok(())
}
