//! bf16 matrix products on Intel AMX tiles (`tdpbf16ps`), the fastest of `bf16.rs`'s paths
//! where the CPU and the kernel offer it (Sapphire Rapids and later).
//!
//! A tile holds 16 rows of 64 bytes: 16 × 32 bf16 of A, 16 k-pairs × 16 columns of B (each
//! column's two k values side by side, "VNNI" order), or 16 × 16 f32 sums of C. One
//! instruction adds a 16×32 by 32×16 product into a C tile. A task computes 32×32 blocks of C
//! in four accumulator tiles, loading two A and two B tiles per 32 values of k; its A rows
//! stay in L1 while it runs over every column panel. Operands are rounded to bf16 (nearest
//! even) while packed, as on the other paths; AMX flushes denormal inputs and outputs to
//! zero, which only values below 1e-38 notice.

use super::pack::{self, pack_a, pack_b, BLOCK, KC, TILE};
use super::round::Strided;
use std::arch::asm;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

/// Whether this CPU has AMX-BF16 and Linux has granted this process the tile state (asked
/// once: the kernel keeps the large tile registers off until a process requests them).
pub fn available() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        if std::env::var_os("CARD_NO_AMX").is_some() {
            return false;
        }
        // The packing rounds with AVX512_BF16, which every AMX CPU has.
        pack::available() && cpu_has_amx_bf16() && request_tile_state()
    })
}

fn cpu_has_amx_bf16() -> bool {
    use std::arch::x86_64::__cpuid_count;
    if __cpuid_count(0, 0).eax < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    // AMX-BF16 is bit 22, AMX-TILE bit 24.
    edx & (1 << 22) != 0 && edx & (1 << 24) != 0
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: 0 on success; kernels before 5.16
/// or without AMX support refuse, and then the other paths run.
fn request_tile_state() -> bool {
    const SYS_ARCH_PRCTL: usize = 158;
    const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
    const XFEATURE_XTILEDATA: usize = 18;
    let ret: isize;
    // SAFETY: a plain Linux syscall with integer arguments; it touches no memory of ours.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL as isize => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

/// Palette 1 with all eight tiles 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64; // bytes per row (u16, little-endian)
        c[48 + t] = TILE as u8; // rows
        t += 1;
    }
    TileConfig(c)
};

/// C [m×n] = A [m×k] · B [k×n] on AMX tiles. The caller checks [`available`].
pub fn matmul(a: Strided, b: Strided, (m, k, n): (usize, usize, usize)) -> Vec<f32> {
    if m * n == 0 || k == 0 {
        return vec![0f32; m * n];
    }
    let kpad = k.div_ceil(KC) * KC;
    let (pa, pb) = (pack_a(a, m, k, kpad), pack_b(b, k, n, kpad));
    let panel_len = kpad / 2 * TILE;
    let fill = |bi: usize, dst: &mut [MaybeUninit<f32>]| {
        let rows = (m - bi * BLOCK).min(BLOCK);
        let a_block = &pa[bi * BLOCK * kpad..(bi + 1) * BLOCK * kpad];
        // SAFETY: `available()` was checked by the caller (AMX present, tile state granted);
        // this thread loads its own tile configuration before the products.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly));
            for pp in 0..n.div_ceil(BLOCK) {
                let b0 = &pb[2 * pp * panel_len..(2 * pp + 1) * panel_len];
                let b1 = &pb[(2 * pp + 1) * panel_len..(2 * pp + 2) * panel_len];
                let cols = (n - pp * BLOCK).min(BLOCK);
                let c0 = dst.as_mut_ptr().add(pp * BLOCK) as *mut f32;
                block(a_block, kpad, b0, b1, c0, n, (rows, cols));
            }
            asm!("tilerelease", options(nostack, nomem));
        }
    };
    // SAFETY: block bi stores every row and column of its rows of C (the last is shorter).
    unsafe { pack::written(m * n, BLOCK * n, BLOCK * n * kpad / 8, fill) }
}

/// One 32×32 block of C at `c` (rows × cols of it stored): `a` is 32 packed rows, `b0`/`b1`
/// the two 16-column panels.
///
/// # Safety
/// AMX must be usable and the tile configuration loaded on this thread; `c` must address
/// `rows` rows of `cols` values at row stride `ldc`.
unsafe fn block(
    a: &[u16],
    kpad: usize,
    b0: &[u32],
    b1: &[u32],
    c: *mut f32,
    ldc: usize,
    (rows, cols): (usize, usize),
) {
    let lda = kpad * 2; // bytes per packed A row
    let a0 = a.as_ptr();
    let a1 = a0.add(TILE * kpad);
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        options(nostack, nomem)
    );
    for chunk in 0..kpad / KC {
        asm!(
            "tileloadd tmm4, [{a0} + {lda} * 1]",
            "tileloadd tmm5, [{a1} + {lda} * 1]",
            "tileloadd tmm6, [{b0} + {ldb} * 1]",
            "tileloadd tmm7, [{b1} + {ldb} * 1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a0.add(chunk * KC),
            a1 = in(reg) a1.add(chunk * KC),
            b0 = in(reg) b0.as_ptr().add(chunk * TILE * TILE),
            b1 = in(reg) b1.as_ptr().add(chunk * TILE * TILE),
            lda = in(reg) lda,
            ldb = in(reg) TILE * 4,
            options(nostack, readonly)
        );
    }
    if rows == BLOCK && cols == BLOCK {
        store(c, ldc * 4);
    } else {
        let mut tmp = [0f32; BLOCK * BLOCK];
        store(tmp.as_mut_ptr(), BLOCK * 4);
        for i in 0..rows {
            std::ptr::copy_nonoverlapping(tmp.as_ptr().add(i * BLOCK), c.add(i * ldc), cols);
        }
    }
}

/// The four accumulator tiles to a 32×32 f32 block at `c` (row stride `ldc` bytes).
///
/// # Safety
/// As [`block`]; `c` must hold 32 rows of 32 values at that stride.
unsafe fn store(c: *mut f32, ldc: usize) {
    asm!(
        "tilestored [{c00} + {ldc} * 1], tmm0",
        "tilestored [{c01} + {ldc} * 1], tmm1",
        "tilestored [{c10} + {ldc} * 1], tmm2",
        "tilestored [{c11} + {ldc} * 1], tmm3",
        c00 = in(reg) c,
        c01 = in(reg) c.add(TILE),
        c10 = in(reg) c.byte_add(TILE * ldc),
        c11 = in(reg) c.byte_add(TILE * ldc).add(TILE),
        ldc = in(reg) ldc,
        options(nostack)
    );
}
