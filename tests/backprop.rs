//! The vendored candle-core's backward pass (vendor/README.md): a node's first gradient is
//! stored instead of added into fresh zeros. What that must keep: sums where a tensor feeds
//! several nodes, a tensor used twice by one node, and contiguous gradients for the fused
//! optimizer (which falls back to the slow path on strided ones).

use candle_core::{Device, Tensor, Var};

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn fan_in_gradients_add_up() {
    let x = Var::new(&[1f32, -2.0, 3.0], &Device::Cpu).unwrap();
    // x feeds a product, itself and a scaled copy: d/dx (x² + x + 3x) = 2x + 4.
    let y = ((x.mul(&x).unwrap() + x.as_tensor()).unwrap() + (x.as_tensor() * 3.0).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let g = y.backward().unwrap();
    assert_eq!(values(g.get(&x).unwrap()), vec![6.0, 0.0, 10.0]);
}

#[test]
fn a_tensor_used_twice_by_one_node_gets_both_gradients() {
    let x = Var::new(&[0.5f32, 1.5], &Device::Cpu).unwrap();
    let r = x.reshape((2, 1)).unwrap();
    let y = (&r + &r).unwrap().sum_all().unwrap();
    let g = y.backward().unwrap();
    assert_eq!(values(g.get(&x).unwrap()), vec![2.0, 2.0]);
}

#[test]
fn gradients_through_views_are_contiguous_and_right() {
    let dev = Device::Cpu;
    let w = Var::from_tensor(
        &Tensor::arange(0f32, 6.0, &dev)
            .unwrap()
            .reshape((2, 3))
            .unwrap(),
    )
    .unwrap();
    let x = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &dev).unwrap();
    // y = Σ x · w: the gradient reaches w through a matmul only, dL/dw = xᵀ · 1.
    let y = x.matmul(w.as_tensor()).unwrap().sum_all().unwrap();
    let g = y.backward().unwrap();
    let gw = g.get(&w).unwrap();
    assert_eq!(values(gw), vec![4.0, 4.0, 4.0, 6.0, 6.0, 6.0]);
    // Through a transpose, whose first gradient is a strided view until stored.
    let y = x
        .matmul(&w.t().unwrap().t().unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let g = y.backward().unwrap();
    let gw = g.get(&w).unwrap();
    assert!(gw.is_contiguous(), "a stored gradient must be contiguous");
    assert_eq!(values(gw), vec![4.0, 4.0, 4.0, 6.0, 6.0, 6.0]);
    let wt = Var::from_tensor(&w.as_tensor().t().unwrap().contiguous().unwrap()).unwrap();
    let y = x.matmul(&wt.t().unwrap()).unwrap().sum_all().unwrap();
    let g = y.backward().unwrap();
    let gwt = g.get(&wt).unwrap();
    assert!(gwt.is_contiguous(), "a stored gradient must be contiguous");
    assert_eq!(values(gwt), vec![4.0, 6.0, 4.0, 6.0, 4.0, 6.0]);
}
