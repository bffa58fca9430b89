//! Tree passes on both backends: every fed token of a tree gets the logits its own path would
//! get fed as a chain after the cached prefix, beside a chain row in the same batch; and a
//! cache kept up to a prefix of the tree and fed on equals a recomputation.

mod common;

use candle_core::{DType, Device};
use card::model::{Backend, Params, Session, Transformer, Tree};
use common::{max_slice_diff, random_ids};

const VOCAB: usize = 80;

fn model(seed: u64) -> Transformer {
    let cfg = common::gguf::cfg(VOCAB, true);
    let params = Params::init(&cfg, DType::F32, &Device::Cpu, seed).unwrap();
    let map = params.to_map().unwrap();
    Transformer::from_tensors(&cfg, |n| Ok(map[n].clone())).unwrap()
}

/// The logits after the last of `tokens`, fed as one chain on a fresh session.
fn chain(model: &Transformer, backend: Backend, tokens: &[u32]) -> Vec<f32> {
    let mut s = Session::new(model, backend, 1, 64, 0, 0).unwrap();
    s.forward(&[tokens.to_vec()]).unwrap();
    s.logits(0, tokens.len() - 1).to_vec()
}

/// Fed token i's path from the cached prefix: its ancestors, then itself.
fn path(parents: &[Option<usize>], fed: &[u32], mut i: usize) -> Vec<u32> {
    let mut out = vec![fed[i]];
    while let Some(p) = parents[i] {
        out.push(fed[p]);
        i = p;
    }
    out.reverse();
    out
}

#[test]
fn every_tree_node_gets_the_logits_of_its_path_fed_as_a_chain() {
    // 0 ← 1 ← 2 (the main chain); 3 beside 1, 4 after 3; 5 beside 0, off the cache.
    let parents = [None, Some(0), Some(1), Some(0), Some(3), None];
    let tree = Tree::new(&parents).unwrap();
    let m = model(5);
    for backend in [Backend::Host, Backend::Candle] {
        let (p0, p1) = (random_ids(9, VOCAB, 1), random_ids(4, VOCAB, 2));
        let (fed, more) = (random_ids(6, VOCAB, 3), random_ids(3, VOCAB, 4));
        let mut s = Session::new(&m, backend, 2, 64, 8, 0).unwrap();
        // Ragged prefixes; row 1 feeds a plain chain beside row 0's tree.
        s.forward(&[p0.clone(), p1.clone()]).unwrap();
        s.forward_tree(&[fed.clone(), more.clone()], &[Some(&tree), None])
            .unwrap();
        for i in 0..fed.len() {
            let want = chain(&m, backend, &[p0.clone(), path(&parents, &fed, i)].concat());
            let d = max_slice_diff(s.logits(0, i), &want);
            assert!(d < 1e-4, "{backend:?} node {i}: {d}");
        }
        for i in 0..more.len() {
            let want = chain(&m, backend, &[p1.clone(), more[..=i].to_vec()].concat());
            let d = max_slice_diff(s.logits(1, i), &want);
            assert!(d < 1e-4, "{backend:?} chain row, token {i}: {d}");
        }
        // Keep the main chain's first two nodes (cache slots in feeding order), go on.
        s.truncate_row(0, p0.len() + 2);
        s.truncate_row(1, p1.len());
        let next = random_ids(2, VOCAB, 6);
        s.forward(&[next.clone(), vec![]]).unwrap();
        let want = chain(&m, backend, &[p0.clone(), fed[..2].to_vec(), next].concat());
        let d = max_slice_diff(s.logits(0, 1), &want);
        assert!(d < 1e-4, "{backend:?} after keeping a prefix: {d}");
    }
}

#[test]
fn a_tree_must_match_the_tokens_fed() {
    let m = model(1);
    let tree = Tree::new(&[None, Some(0)]).unwrap();
    for backend in [Backend::Host, Backend::Candle] {
        let mut s = Session::new(&m, backend, 1, 64, 8, 0).unwrap();
        s.forward(&[vec![1, 2]]).unwrap();
        let e = s
            .forward_tree(&[vec![3, 4, 5]], &[Some(&tree)])
            .unwrap_err();
        assert!(e.to_string().contains("one node per fed token"), "{e}");
    }
}
