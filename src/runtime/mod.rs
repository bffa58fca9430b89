//! What the whole process shares, below every other module: the compute device, the thread
//! count, the allocator's counters and settings, the stop flag set by signals, named RNG
//! streams and durable file writes. Nothing here knows about models or training.

pub mod alloc;
pub mod fsutil;
pub mod machine_load;
pub mod rng;

use anyhow::Result;
use candle_core::Device;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the signal handler: the trainer checkpoints and stops at its next step, the server
/// drains and exits.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Whether a stop was requested (Ctrl-C, SIGTERM).
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Ctrl-C / SIGTERM: for a command that stops cleanly (`cooperative`: it checks
/// [`stop_requested`]) the first sets [`STOP`] and a second exits at once; any other command
/// exits at once (its outputs are written atomically, so nothing half-written stays).
pub fn install_signal_handler(cooperative: bool) {
    let _ = ctrlc::set_handler(move || {
        if !cooperative || STOP.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
}

/// The device `--device` asked for; unset means `auto`.
static DEVICE: std::sync::OnceLock<DeviceChoice> = std::sync::OnceLock::new();

/// Where tensors live: `auto` takes the GPU when the binary has CUDA and one is present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

/// Fix the device for the whole process (the global `--device`), once, before any tensor.
/// `cuda` in a binary built without it is refused here, so the error comes before any work.
pub fn set_device(name: &str) -> Result<(), String> {
    let choice = match name {
        "auto" => DeviceChoice::Auto,
        "cpu" => DeviceChoice::Cpu,
        "cuda" if cfg!(feature = "cuda") => DeviceChoice::Cuda,
        "cuda" => {
            return Err(
                "--device cuda: this binary was built without CUDA (cargo build --release --features cuda)".into(),
            )
        }
        other => return Err(format!("unknown --device '{other}' (known: auto, cpu, cuda)")),
    };
    DEVICE
        .set(choice)
        .map_err(|_| "the device is already chosen".to_string())
}

/// The compute device `--device` chose: by default CPU, unless built with `cuda` and a GPU is
/// present.
pub fn device() -> Result<Device> {
    let choice = *DEVICE.get().unwrap_or(&DeviceChoice::Auto);
    #[cfg(feature = "cuda")]
    {
        match choice {
            DeviceChoice::Auto => return Ok(Device::cuda_if_available(cuda_ordinal())?),
            DeviceChoice::Cuda => return Ok(Device::new_cuda(cuda_ordinal())?),
            DeviceChoice::Cpu => {}
        }
    }
    let _ = choice;
    Ok(Device::Cpu)
}

/// Which GPU `device()` opens: set once for a rank of a multi-GPU job (its local rank).
static CUDA_ORDINAL: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

pub fn set_cuda_ordinal(ordinal: usize) {
    let _ = CUDA_ORDINAL.set(ordinal);
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn cuda_ordinal() -> usize {
    *CUDA_ORDINAL.get().unwrap_or(&0)
}

pub const MAX_THREADS: usize = 1024;

/// Fix the compute thread count once, through the variable candle and rayon read. candle
/// otherwise recomputes its default, reading /proc/cpuinfo, on every CPU matmul: measured at
/// ~15% of a batch-1 decoding step. Call before any thread pool exists (both are built
/// lazily) and before other threads start.
pub fn set_threads(threads: Option<usize>) -> Result<(), String> {
    if threads.is_some() || std::env::var_os("RAYON_NUM_THREADS").is_some() {
        THREADS_CHOSEN.store(true, Ordering::SeqCst);
    }
    let n = match threads {
        Some(n) if !(1..=MAX_THREADS).contains(&n) => {
            return Err(format!("--threads must be in [1, {MAX_THREADS}], got {n}"))
        }
        Some(n) => n,
        None => candle_core::utils::get_num_threads(),
    };
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    Ok(())
}

static THREADS_CHOSEN: AtomicBool = AtomicBool::new(false);

/// Whether the user chose the thread count (`--threads` or RAYON_NUM_THREADS) rather than
/// taking the default: child processes that pick their own share are told only then.
pub fn threads_chosen() -> bool {
    THREADS_CHOSEN.load(Ordering::SeqCst)
}

/// candle's thread count, read once: candle's own getter parses an environment variable (an
/// allocation) on every call, dozens of times per decoded token.
pub fn threads() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        // Said when the work starts, not before an input error (which stays one line).
        if let Some(note) = THREAD_NOTE.lock().ok().and_then(|mut n| n.take()) {
            eprintln!("{note}");
        }
        candle_core::utils::get_num_threads()
    })
}

static THREAD_NOTE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// A note on the thread count (see [`machine_load::shared_machine_threads`]) to print once compute
/// starts.
pub fn set_thread_note(note: String) {
    if let Ok(mut n) = THREAD_NOTE.lock() {
        *n = Some(note);
    }
}

/// A progress bar of `len` units drawn with `template` (indicatif's syntax), or a hidden one
/// when `visible` is false (`--quiet`, tests), so callers update it either way.
pub fn progress_bar(len: u64, visible: bool, template: &str) -> indicatif::ProgressBar {
    let bar = if visible {
        indicatif::ProgressBar::new(len)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(indicatif::ProgressStyle::with_template(template).expect("a valid template"));
    bar
}
