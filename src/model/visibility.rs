//! Which keys each query may see: what a caller asks for ([`Attention`]), what one forward
//! pass resolves that to ([`Visibility`]), and every attention mask the objectives and
//! decoders build, in one place. Masks are additive biases: 0 visible, −∞ hidden.

use candle_core::{DType, Device, Result, Tensor};

/// Which keys each query may see, as a caller asks for it.
#[derive(Debug, Clone, Copy)]
pub enum Attention<'a> {
    /// Query i sees keys ≤ i (offset by any cached prefix).
    Causal,
    /// Every query sees every key.
    Bidirectional,
    /// An additive bias [Tq, Tk] or [B, 1, Tq, Tk] in the model's dtype.
    Mask(&'a Tensor),
}

/// Visibility resolved for one forward pass.
#[derive(Debug, Clone)]
pub enum Visibility {
    /// Query i sees keys 0..=offset+i (offset: a cached prefix shared by every row).
    Causal { offset: usize },
    /// Every query sees every key.
    Full,
    /// An additive bias [Tq, Tk] shared by rows and heads, or [B, 1, Tq, Tk] per row.
    Bias(Tensor),
}

impl Visibility {
    /// A caller's request when every row continues a prefix of `offset` cached tokens.
    pub fn uniform(attn: Attention, offset: usize) -> Self {
        match attn {
            Attention::Causal => Visibility::Causal { offset },
            Attention::Bidirectional => Visibility::Full,
            Attention::Mask(m) => Visibility::Bias(m.clone()),
        }
    }
}

/// A bias tensor of `shape` from visibility flags in row-major order.
fn bias(
    visible: impl Iterator<Item = bool>,
    shape: &[usize],
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    let data: Vec<f32> = visible
        .map(|v| if v { 0.0 } else { f32::NEG_INFINITY })
        .collect();
    Tensor::from_vec(data, shape, dev)?.to_dtype(dtype)
}

/// Bias [B, 1, t, max(lens) + t] for rows with cached lengths `lens`: row r's query i sits at
/// position lens[r] + i and sees the keys before `keys(r, i)`.
fn per_row(
    lens: &[usize],
    t: usize,
    keys: impl Fn(usize, usize) -> usize,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    per_key(lens, t, |r, i, j| j < keys(r, i), dtype, dev)
}

/// Bias [B, 1, t, max(lens) + t] where row r's query i sees key j when `sees(r, i, j)`.
fn per_key(
    lens: &[usize],
    t: usize,
    sees: impl Fn(usize, usize, usize) -> bool,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    let tk = lens.iter().max().copied().unwrap_or(0) + t;
    let visible = (0..lens.len())
        .flat_map(|r| (0..t).map(move |i| (r, i)))
        .flat_map(|(r, i)| (0..tk).map(move |j| (r, i, j)))
        .map(|(r, i, j)| sees(r, i, j));
    bias(visible, &[lens.len(), 1, t, tk], dtype, dev)
}

/// Causal bias [t, offset + t] for queries at positions offset..offset+t.
pub fn causal_bias(t: usize, offset: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let tk = offset + t;
    let visible = (0..t).flat_map(|i| (0..tk).map(move |j| j <= offset + i));
    bias(visible, &[t, tk], dtype, dev)
}

/// Rows with their own cached lengths, each feeding `valid[r]` real tokens then padding.
/// Causally a query sees keys up to itself; bidirectionally every real key of its row
/// (padding queries see up to themselves, so no row is all −∞).
pub fn ragged_bias(
    lens: &[usize],
    valid: &[usize],
    t: usize,
    causal: bool,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    let keys = |r: usize, i: usize| {
        if causal {
            lens[r] + i + 1
        } else {
            lens[r] + valid[r].max(i + 1)
        }
    };
    per_row(lens, t, keys, dtype, dev)
}

/// BD3LM's training mask over x_t ⊕ x_0 (2L tokens; position p < L is the noised token p,
/// L + p the clean token p), as flags [2L, 2L] (row = query, column = key):
/// 1. a noised token sees the noised tokens of its own block (block-diagonal);
/// 2. a noised token sees the clean tokens of strictly earlier blocks (offset block-causal);
/// 3. a clean token sees the clean tokens of its own and earlier blocks (block-causal).
///
/// Clean tokens never see noised ones.
pub fn bd3lm_mask(len: usize, block: usize) -> Vec<bool> {
    assert!(block >= 1, "block size must be at least 1");
    let n = 2 * len;
    let mut out = Vec::with_capacity(n * n);
    for q in 0..n {
        let (q_clean, qb) = (q >= len, (q % len) / block);
        for k in 0..n {
            let (k_clean, kb) = (k >= len, (k % len) / block);
            out.push(match (q_clean, k_clean) {
                (false, false) => kb == qb,
                (false, true) => kb < qb,
                (true, true) => kb <= qb,
                (true, false) => false,
            });
        }
    }
    out
}

/// [`bd3lm_mask`] as a bias [2L, 2L].
pub fn bd3lm_bias(len: usize, block: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let n = 2 * len;
    bias(bd3lm_mask(len, block).into_iter(), &[n, n], dtype, dev)
}

/// BD3LM's sampling mask over absolute positions: row r's query i (position lens[r] + i)
/// sees the keys before min(end of its block, lens[r] + valid[r]) — a clean token the clean
/// blocks up to its own, a noised one the clean blocks before it and its own block, as in
/// training; padding queries see up to themselves.
pub fn block_causal_bias(
    lens: &[usize],
    valid: &[usize],
    t: usize,
    block: usize,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    let keys = |r: usize, i: usize| {
        let p = lens[r] + i;
        if i < valid[r] {
            ((p / block + 1) * block).min(lens[r] + valid[r])
        } else {
            p + 1
        }
    };
    per_row(lens, t, keys, dtype, dev)
}

/// The most tokens one row may feed as a tree: a tree query's visible fed keys are a bit set.
pub const TREE_MAX: usize = 64;

/// How one row's fed tokens hang together in a pass. A chain (every token after the one
/// before it) is the causal pass; a tree lets a verifier check several alternative drafts at
/// once: each token sits one position after its parent and sees the cached prefix, its
/// ancestors and itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    /// Each fed token's position after the cached prefix (0: right after it).
    pub depth: Vec<usize>,
    /// Bit a of entry i: fed token a is i itself or one of its ancestors.
    pub seen: Vec<u64>,
}

impl Tree {
    /// The tree whose token i hangs off fed token `parents[i]` (an earlier one), or directly
    /// off the cached prefix when None. Refuses a parent that is not earlier and more than
    /// [`TREE_MAX`] tokens.
    pub fn new(parents: &[Option<usize>]) -> anyhow::Result<Self> {
        if parents.len() > TREE_MAX {
            anyhow::bail!("a tree pass feeds at most {TREE_MAX} tokens per row");
        }
        let mut tree = Tree::default();
        for (i, p) in parents.iter().enumerate() {
            let (depth, seen) = match *p {
                None => (0, 0),
                Some(p) if p < i => (tree.depth[p] + 1, tree.seen[p]),
                Some(p) => anyhow::bail!("tree token {i} hangs off token {p}, not an earlier one"),
            };
            tree.depth.push(depth);
            tree.seen.push(seen | 1 << i);
        }
        Ok(tree)
    }

    /// Whether fed token i sees fed token j (never one past the tree).
    pub fn sees(&self, i: usize, j: usize) -> bool {
        j < self.depth.len() && self.seen[i] >> j & 1 == 1
    }
}

/// Bias [B, 1, t, max(lens) + t] for rows feeding trees (`None`: a chain of `valid[r]`
/// tokens) after their cached lengths: a query sees its row's cached prefix and the fed
/// tokens its tree lets it see; padding queries see up to themselves.
pub fn tree_bias(
    lens: &[usize],
    trees: &[Option<&Tree>],
    t: usize,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    let sees = |r: usize, i: usize, j: usize| {
        let tree = trees[r].filter(|tr| i < tr.depth.len());
        match (tree, j.checked_sub(lens[r])) {
            (_, None) => true,
            (Some(tr), Some(a)) => tr.sees(i, a),
            (None, Some(a)) => a <= i,
        }
    };
    per_key(lens, t, sees, dtype, dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(t: &Tensor) -> Vec<bool> {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v.iter().map(|&x| x == 0.0).collect()
    }

    #[test]
    fn causal_and_ragged_biases_agree_on_one_row() {
        let dev = Device::Cpu;
        let c = causal_bias(3, 2, DType::F32, &dev).unwrap();
        assert_eq!(c.dims(), &[3, 5]);
        let r = ragged_bias(&[2], &[3], 3, true, DType::F32, &dev).unwrap();
        assert_eq!(flags(&c), flags(&r));
        // Bidirectional: a real query sees all real keys; padding sees up to itself.
        let b = ragged_bias(&[1], &[2], 3, false, DType::F32, &dev).unwrap();
        let want = [
            true, true, true, false, //
            true, true, true, false, //
            true, true, true, true,
        ];
        assert_eq!(flags(&b), want);
    }

    #[test]
    fn block_causal_bias_stops_at_the_block_end() {
        // One row, 3 cached tokens, 4 fed (block 4): positions 3 | 4 5 6 (block 1 ends at 8).
        let b = block_causal_bias(&[3], &[4], 4, 4, DType::F32, &Device::Cpu).unwrap();
        let rows: Vec<usize> = flags(&b)
            .chunks(7)
            .map(|r| r.iter().filter(|&&x| x).count())
            .collect();
        assert_eq!(rows, vec![4, 7, 7, 7]);
    }

    #[test]
    fn a_tree_sees_its_ancestors_only() {
        // 0 ← 1 ← 2, and 3 beside 1 (off 0); 4 off the cache.
        let tree = Tree::new(&[None, Some(0), Some(1), Some(0), None]).unwrap();
        assert_eq!(tree.depth, vec![0, 1, 2, 1, 0]);
        let seen = |i: usize| (0..5).filter(|&j| tree.sees(i, j)).collect::<Vec<_>>();
        assert_eq!(seen(2), vec![0, 1, 2]);
        assert_eq!(seen(3), vec![0, 3]);
        assert_eq!(seen(4), vec![4]);
        assert!(Tree::new(&[None, Some(1)]).is_err());
        assert!(Tree::new(&vec![None; TREE_MAX + 1]).is_err());
        // As a bias after 2 cached tokens, beside a chain row of 2 tokens (padded to 5).
        let b = tree_bias(&[2, 1], &[Some(&tree), None], 5, DType::F32, &Device::Cpu).unwrap();
        let f = flags(&b);
        let row = |r: usize, i: usize| f[(r * 5 + i) * 7..][..7].to_vec();
        let (y, n) = (true, false);
        assert_eq!(row(0, 3), vec![y, y, y, n, n, y, n]);
        assert_eq!(row(0, 4), vec![y, y, n, n, n, n, y]);
        // A chain row: causal over its own keys; its padding sees up to itself.
        assert_eq!(row(1, 1), vec![y, y, y, n, n, n, n]);
        assert_eq!(row(1, 4), vec![y, y, y, y, y, y, n]);
    }
}
