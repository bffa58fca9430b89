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
