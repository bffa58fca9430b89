//! A global-allocator wrapper that counts allocations, so benchmarks can report how many
//! allocations (and bytes) a decoded token costs. The `card` binary installs it around
//! mimalloc; where it is not installed the counters stay at zero.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

static COUNT: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

pub struct Counting<A>(pub A);

// SAFETY: every call forwards to the wrapped allocator unchanged; counting has no effect on
// the memory handed out.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        COUNT.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        self.0.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        COUNT.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        self.0.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.0.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        COUNT.fetch_add(1, Relaxed);
        BYTES.fetch_add(new_size as u64, Relaxed);
        self.0.realloc(ptr, layout, new_size)
    }
}

/// Allocations and bytes requested so far by the whole process (all threads).
pub fn allocations() -> (u64, u64) {
    (COUNT.load(Relaxed), BYTES.load(Relaxed))
}

// mimalloc itself still hands freed pages back to the kernel after a short delay (its "purge"),
// so a training step's multi-megabyte activations were re-faulted and zeroed by the kernel every
// step (~15% of a bench-5m step). Never purging keeps them in the process.
// The symbol comes from the mimalloc crate, linked by this use.
use mimalloc as _;
extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}
/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (the same index in v2 and v3).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Tell mimalloc (the binary's allocator) never to return freed pages to the kernel; the
/// user's own `MIMALLOC_PURGE_DELAY` wins.
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mimalloc's option setter takes plain integers and is safe to call at any time.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}
