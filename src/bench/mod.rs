//! Benchmarks as commands: throughput against a baseline run in the same process, with
//! medians over rounds.

pub mod decode;
pub mod train;

use anyhow::Result;
use candle_core::{Device, Tensor};
use std::time::Instant;

pub use decode::{bench_decode, DecodeBench, DecodeBenchConfig};
pub use train::{bench_distributed, bench_train, memory_probe, DistBench, MemoryProbe, TrainBench};

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

/// Median f32 matmul throughput (GFLOP/s) of an n×n×n product on `device`.
pub fn matmul_peak_gflops(device: &Device, n: usize, rounds: usize) -> Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (n, n), device)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), device)?;
    let _ = a.matmul(&b)?; // warm-up
    let mut times: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            let c = a.matmul(&b)?;
            device.synchronize()?;
            drop(c);
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

/// Cores other processes kept busy over `window`, where Linux says: the whole machine's busy
/// time (/proc/stat) less this process's own (/proc/self/stat), per second of the window.
pub fn other_load(window: std::time::Duration) -> Option<f64> {
    let sample = || -> Option<(u64, u64)> {
        let all = busy_jiffies(&std::fs::read_to_string("/proc/stat").ok()?)?;
        let own = own_jiffies(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
        Some((all, own))
    };
    let (a0, s0) = sample()?;
    let t = Instant::now();
    std::thread::sleep(window);
    let (a1, s1) = sample()?;
    // USER_HZ is 100 on every Linux the project runs on.
    let secs = t.elapsed().as_secs_f64();
    let other = (a1.saturating_sub(a0) as f64 - s1.saturating_sub(s0) as f64) / 100.0 / secs;
    Some(other.max(0.0))
}

/// A printed warning when other processes keep at least half a core busy (benchmark figures
/// are then low and noisy: two spinning thread pools on few cores slow each other badly).
pub fn busy_warning() -> Option<String> {
    let other = other_load(std::time::Duration::from_millis(300))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (other >= 0.5).then(|| {
        format!(
            "warning: the machine is busy: other processes kept {other:.1} of its {cores} cores busy as this benchmark started; its figures will be low and noisy (stop them, or compare only ratios measured in one run)"
        )
    })
}

/// Busy jiffies of all CPUs from /proc/stat's first line (everything but idle and iowait).
fn busy_jiffies(stat: &str) -> Option<u64> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice: already in user]
    let total: u64 = v.iter().take(8).sum();
    Some(total - v.get(3)? - v.get(4).unwrap_or(&0))
}

/// This process's user + system jiffies from /proc/self/stat (fields 14 and 15; the command
/// name in parentheses may hold spaces, so fields are counted after its closing parenthesis).
fn own_jiffies(stat: &str) -> Option<u64> {
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn proc_stat_lines_are_read() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
        assert_eq!(busy_jiffies(stat), Some(100 + 5 + 50 + 3 + 2 + 1));
        assert_eq!(busy_jiffies("intr 1 2"), None);
        let own = "4242 (card bench (x)) R 1 2 3 4 5 6 7 8 9 10 17 4 0 0 20 0 3";
        assert_eq!(own_jiffies(own), Some(21));
    }

    #[test]
    fn a_spinning_process_beside_us_is_seen() {
        if !Path::new("/proc/stat").exists() {
            return; // not Linux: the check reports nothing there, by design
        }
        let mut spin = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let other = other_load(std::time::Duration::from_millis(500));
        spin.kill().unwrap();
        let _ = spin.wait();
        let other = other.expect("Linux has /proc/stat");
        assert!(other >= 0.5, "a spinning shell used {other:.2} cores");
    }
}
