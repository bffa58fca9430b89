//! BD3LM's block layout: blocks of `size` positions cut from absolute position 0 (the last
//! one shorter when `size` does not divide the length), shared by training, the bound and
//! the sampler.

use std::ops::Range;

/// Blocks of a sequence of `len` tokens.
pub fn count(len: usize, size: usize) -> usize {
    len.div_ceil(size)
}

/// The block that holds position `p`.
pub fn of(p: usize, size: usize) -> usize {
    p / size
}

/// The end of the block that holds position `p`.
pub fn end_of(p: usize, size: usize) -> usize {
    (of(p, size) + 1) * size
}

/// Positions start..end cut at block boundaries (the first and last pieces may be partial).
pub fn pieces(start: usize, end: usize, size: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut a = start;
    while a < end {
        let b = end_of(a, size).min(end);
        out.push(a..b);
        a = b;
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn pieces_follow_absolute_block_boundaries() {
        assert_eq!(super::pieces(0, 10, 4), vec![0..4, 4..8, 8..10]);
        assert_eq!(super::pieces(6, 13, 4), vec![6..8, 8..12, 12..13]);
        assert!(super::pieces(3, 3, 4).is_empty());
        assert_eq!(super::count(10, 4), 3);
    }
}
