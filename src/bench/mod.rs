//! Benchmarks as commands: throughput against a baseline run in the same process, with
//! medians over rounds.

pub mod cost_curve;
pub mod decode;
pub mod plan;
pub mod train;

use anyhow::Result;
use candle_core::{Device, Tensor};
use std::time::Instant;

pub use cost_curve::{CostCurve, CostPlan, CostPoint};
pub use decode::{bench_decode, DecodeBench, DecodeBenchConfig};
pub use plan::{DecodePlan, DecodeReport, Lengths};
pub use train::{
    bench_distributed, bench_train, memory_probe, DistBench, MemoryProbe, StartFrom, TrainBench,
};

pub fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).expect("no NaN timings"));
    let n = xs.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        0.5 * (xs[n / 2 - 1] + xs[n / 2])
    }
}

/// Median matmul throughput (GFLOP/s) of an n×n×n product on `device`: candle's f32 matmul,
/// or with `bf16` on CPU the bf16 product training's linear layers run (`kernels::bf16`, on
/// the fastest path this CPU has).
pub fn matmul_peak_gflops(device: &Device, n: usize, rounds: usize, bf16: bool) -> Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (n, n), device)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), device)?;
    let host_bf16 = bf16 && device.is_cpu();
    let (ha, hb) = if host_bf16 {
        (
            a.flatten_all()?.to_vec1::<f32>()?,
            b.flatten_all()?.to_vec1::<f32>()?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let product = || -> Result<()> {
        if host_bf16 {
            drop(crate::kernels::bf16::matmul(
                (&ha, n, 1),
                (&hb, n, 1),
                (n, n, n),
            ));
        } else {
            drop(a.matmul(&b)?);
            device.synchronize()?;
        }
        Ok(())
    };
    product()?; // warm-up
    let mut times: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            product()?;
            Ok(t.elapsed().as_secs_f64())
        })
        .collect::<Result<_>>()?;
    Ok(2.0 * (n * n * n) as f64 / median(&mut times) / 1e9)
}

/// A `/proc/self/status` field in MiB (Linux), 0 elsewhere.
fn status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Resident-set high-water mark of this process in MiB.
pub fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// Current resident set of this process in MiB.
pub fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

/// A printed warning when other processes keep at least half a core busy (benchmark figures
/// are then low and noisy: two spinning thread pools on few cores slow each other badly).
pub fn busy_warning() -> Option<String> {
    let other = crate::runtime::machine_load::other_load(std::time::Duration::from_millis(300))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (other >= 0.5).then(|| {
        format!(
            "warning: the machine is busy: other processes kept {other:.1} of its {cores} cores busy as this benchmark started; its figures will be low and noisy (stop them, or compare only ratios measured in one run)"
        )
    })
}
