//! The `card` binary: the allocator, then the command line (`card::cli`).

use std::process::ExitCode;

// glibc malloc returns large tensor buffers to the kernel and re-faults them every step.
// Counted, so `card bench decode` can report allocations per token.
#[global_allocator]
static GLOBAL: card::runtime::alloc::Counting<mimalloc::MiMalloc> =
    card::runtime::alloc::Counting(mimalloc::MiMalloc);

fn main() -> ExitCode {
    card::runtime::alloc::keep_freed_memory();
    card::cli::main()
}
