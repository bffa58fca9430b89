use super::*;
use crate::kernels::quant::dequantize_row;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

fn values(seed: u64, len: usize) -> Vec<f32> {
    crate::runtime::rng::test_values(len, seed)
        .into_iter()
        .map(|v| v as f32)
        .collect()
}

/// n weight rows of k values in `dtype` blocks: the bytes and their expansion.
fn weights(dtype: GgmlDType, n: usize, k: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let w = Tensor::from_vec(values(seed, n * k), (n, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, dtype).unwrap();
    let bytes = q.data().unwrap().into_owned();
    let kind = Blocks::of(dtype).unwrap();
    let mut dense = vec![0f32; n * k];
    for (row, out) in bytes.chunks(kind.row_bytes(k)).zip(dense.chunks_mut(k)) {
        dequantize_row(kind, row, out);
    }
    (bytes, dense)
}

/// Each path's products against f64 sums of the expanded weights times the rounded values.
fn check(kind: Blocks, bytes: &[u8], dense: &[f32], x: &Rounded, n: usize, what: &str) {
    let (m, k) = (x.rows(), dense.len() / n);
    let xr = x.values();
    for path in Path::ALL.into_iter().filter(|p| p.available()) {
        for j in 0..n {
            let mut o = vec![0f32; m];
            let row = &bytes[j * kind.row_bytes(k)..(j + 1) * kind.row_bytes(k)];
            dots(x, row, kind, &mut o, path);
            for (i, &got) in o.iter().enumerate() {
                let want: f64 = (0..k)
                    .map(|c| xr[i * k + c] as f64 * dense[j * k + c] as f64)
                    .sum();
                let scale: f64 = (0..k)
                    .map(|c| (xr[i * k + c] * dense[j * k + c]).abs() as f64)
                    .sum();
                assert!(
                    (got as f64 - want).abs() <= 1e-5 * scale + 1e-6,
                    "{what} {path:?} m {m} row {i} weight {j}: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn every_path_multiplies_the_rounded_rows_by_the_expanded_blocks() {
    for p in Path::ALL.iter().filter(|p| !p.available()) {
        eprintln!("int8 products: this CPU lacks the {p:?} path (not tested here)");
    }
    // Sizes below a group, a group and a part, and SmolLM2's width; 1 to 16 rows.
    for (dtype, k) in [
        (GgmlDType::Q4_0, 32),
        (GgmlDType::Q4_1, 288),
        (GgmlDType::Q8_0, 96),
        (GgmlDType::Q4_0, 576),
        (GgmlDType::Q4_1, 576),
        (GgmlDType::Q8_0, 576),
    ] {
        let n = 13;
        let kind = Blocks::of(dtype).unwrap();
        let (bytes, dense) = weights(dtype, n, k, 7 + k as u64);
        for m in [1, 2, 3, 5, 8, 16] {
            let mut x = Rounded::default();
            x.set(&values(m as u64, m * k), m, k);
            check(kind, &bytes, &dense, &x, n, &format!("{dtype:?} k {k}"));
        }
    }
}

#[test]
fn q8_0_blocks_holding_minus_128_keep_their_sign() {
    // quantize() never writes −128, but a GGUF file may: |−128| must read as 128.
    let k = 64;
    let mut bytes = Vec::new();
    for b in 0..2 {
        bytes.extend(half::f16::from_f32(0.01 * (b + 1) as f32).to_le_bytes());
        bytes.extend((0..32).map(|c: i32| {
            if c % 3 == 0 {
                128u8
            } else {
                (c * 7 - 100) as u8
            }
        }));
    }
    let mut dense = vec![0f32; k];
    dequantize_row(Blocks::Q8_0, &bytes, &mut dense);
    assert!(dense.iter().filter(|v| **v < -1.27).count() >= 20);
    let mut x = Rounded::default();
    x.set(&values(3, 2 * k), 2, k);
    check(Blocks::Q8_0, &bytes, &dense, &x, 1, "Q8_0 with −128");
}

#[test]
fn rounding_moves_each_value_by_at_most_half_a_step() {
    let (m, k) = (3, 544);
    let mut xs = values(11, m * k);
    xs[5] = 40.0; // an outlier coarsens its group only
    xs[k..2 * k].fill(0.0); // an all-zero row stays zero
    let mut x = Rounded::default();
    x.set(&xs, m, k);
    let r = x.values();
    for (c, (a, b)) in xs.iter().zip(&r).enumerate() {
        let step = x.scale[(c / k) * k.div_ceil(GROUP) + (c % k) / GROUP];
        assert!((a - b).abs() <= step / 2.0 * 1.0001, "value {c}: {a} → {b}");
    }
    assert!(r[k..2 * k].iter().all(|v| *v == 0.0));
    assert!(
        x.scale[0] > 10.0 * x.scale[1],
        "the outlier's group has its own scale"
    );
    // Block sums are the rounded values' sums.
    for (b, s) in x.sums.iter().enumerate() {
        let want: f32 = r[b * BLOCK..(b + 1) * BLOCK].iter().sum();
        assert!((s - want).abs() <= 1e-4 * (1.0 + want.abs()), "block {b}");
    }
}

#[test]
fn the_int8_product_stays_within_the_rounding_bound_of_the_exact_one() {
    let (m, k, n) = (4, 576, 9);
    for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
        let kind = Blocks::of(dtype).unwrap();
        let (bytes, dense) = weights(dtype, n, k, 21);
        let xs = values(22, m * k);
        let mut x = Rounded::default();
        x.set(&xs, m, k);
        let (mut t, mut out) = (vec![0f32; n * m], vec![0f32; m * n]);
        matmul_into(&x, kind, &bytes, n, &mut t, &mut out);
        let mut exact = vec![0f32; m * n];
        crate::kernels::quant::matmul_into(&xs, m, k, kind, &bytes, n, &mut t, &mut exact);
        let mut moved = 0f32;
        for i in 0..m {
            for j in 0..n {
                let bound = x.error_bound(i, &dense[j * k..(j + 1) * k]) + 1e-3;
                let diff = (out[i * n + j] - exact[i * n + j]).abs();
                assert!(diff <= bound, "{dtype:?} ({i}, {j}): {diff} > {bound}");
                moved = moved.max(diff);
            }
        }
        // The two paths differ (the rounding is real), so the bound is what holds them close.
        assert!(moved > 1e-5, "{dtype:?}: int8 equals exact");
    }
}

#[test]
fn the_machine_takes_the_best_integer_path_its_cpu_has() {
    let flags = crate::kernels::core::cpuinfo_flags();
    if flags.is_empty() {
        eprintln!("no /proc/cpuinfo: the dispatch is not checked");
        return;
    }
    let has = |f: &str| flags.iter().any(|x| x == f);
    let avx2 = has("avx2") && has("fma") && has("f16c");
    let vnni = avx2 && has("avx512_vnni") && has("avx512vl");
    let want = match (vnni && !crate::kernels::core::no_avx512(), avx2) {
        (true, _) => Path::Vnni,
        (_, true) => Path::Avx2,
        _ => Path::Portable,
    };
    assert_eq!(Path::best(), want, "the flags say {want:?}");
    eprintln!("int8 products on this CPU: {want:?}");
}
