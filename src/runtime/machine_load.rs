//! How busy the machine is with other processes, and the thread count that shares it well.
//!
//! candle's CPU pool spins: a worker waits for work, and the caller for its workers, in a
//! busy loop. Two such pools on the same cores (a trainer and a server, two experiments)
//! spend their time slices spinning for a peer the scheduler has preempted (issue 17 measured
//! a bench-5m step at 20 s instead of 0.8 s beside a trainer on a 2-core Xeon). A process that starts on a busy
//! machine therefore takes only the cores left free (`back_off`); `card bench` warns instead,
//! since it measures.

use std::time::{Duration, Instant};

/// Cores other processes kept busy over `window`, where Linux says: the whole machine's busy
/// time (/proc/stat) less this process's own (/proc/self/stat), per second of the window.
pub fn other_load(window: Duration) -> Option<f64> {
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

/// The compute threads to use instead of `default` when other processes keep `other` of the
/// machine's `cores` busy: the cores they leave free, at least one; None when that is not
/// fewer than `default` (an idle machine, or one only lightly used).
pub fn back_off(default: usize, cores: usize, other: f64) -> Option<usize> {
    // A quarter of a core is noise (a shell, an editor); three quarters is a competitor.
    if other < 0.75 {
        return None;
    }
    let free = (cores as f64 - other).round().max(1.0) as usize;
    (free < default).then_some(free)
}

/// [`back_off`] for this machine now (a 150 ms look), with the note to print.
pub fn shared_machine_threads(default: usize) -> Option<(usize, String)> {
    let other = other_load(Duration::from_millis(150))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = back_off(default, cores, other)?;
    Some((
        n,
        format!(
            "note: other processes keep {other:.1} of this machine's {cores} cores busy: using {n} compute thread{} instead of {default}, so that spinning thread pools do not stall each other (--threads N overrides)",
            if n == 1 { "" } else { "s" }
        ),
    ))
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

    #[test]
    fn proc_stat_lines_are_read() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
        assert_eq!(busy_jiffies(stat), Some(100 + 5 + 50 + 3 + 2 + 1));
        assert_eq!(busy_jiffies("intr 1 2"), None);
        let own = "4242 (card bench (x)) R 1 2 3 4 5 6 7 8 9 10 17 4 0 0 20 0 3";
        assert_eq!(own_jiffies(own), Some(21));
    }

    #[test]
    fn threads_back_off_to_the_free_cores() {
        // Idle or lightly used: keep the default.
        assert_eq!(back_off(2, 2, 0.0), None);
        assert_eq!(back_off(2, 2, 0.6), None);
        // A 2-thread trainer on 2 cores: one thread, never zero.
        assert_eq!(back_off(2, 2, 1.9), Some(1));
        assert_eq!(back_off(2, 2, 3.5), Some(1));
        assert_eq!(back_off(2, 2, 0.8), Some(1));
        // 16 cores, 4 busy: 12 free, fewer than the default 16.
        assert_eq!(back_off(16, 16, 4.0), Some(12));
        // Already at or below what is free (an explicit small default): unchanged.
        assert_eq!(back_off(4, 16, 4.0), None);
        assert_eq!(back_off(1, 2, 1.9), None);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_spinning_process_beside_us_is_seen() {
        let mut spin = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let other = other_load(Duration::from_millis(500));
        spin.kill().unwrap();
        let _ = spin.wait();
        let other = other.expect("Linux has /proc/stat");
        assert!(other >= 0.5, "a spinning shell used {other:.2} cores");
    }
}
