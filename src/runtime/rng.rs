//! Named random streams. Every random draw of a run comes from `rng(seed, stream, index)`: a
//! PCG generator seeded from the run's seed, the use it serves and a position within that
//! use (an epoch, a step, a batch). Nothing random is carried between steps, so the seed is
//! the whole RNG state of a run, and two uses never share a stream.

use rand::SeedableRng;

/// One use of randomness. The numbers are part of the checkpoint format: changing one
/// changes every run that draws from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Training data order: each epoch's shift and permutation (index: the epoch).
    DataOrder,
    /// Training noise: t levels and masks (index: the micro-batch).
    TrainNoise,
    /// The loss at fixed noise levels in evaluation (index: level << 32 | batch).
    LossVsT,
    /// Decoders' token sampling (index: the batch row).
    Sampling,
    /// Noise draws of the held-out likelihood bound (index: draw, length group, batch).
    HeldOutBound,
    /// Noise draws of the zero-shot continuation bound (index: a hash of the text).
    ContinuationBound,
    /// Where self-distillation cuts its corpus prefixes (index 0).
    DistillPrefixes,
}

impl Stream {
    fn id(self) -> u64 {
        match self {
            Stream::DataOrder => 1,
            Stream::TrainNoise => 2,
            Stream::LossVsT => 7,
            Stream::Sampling => 11,
            Stream::HeldOutBound => 13,
            Stream::ContinuationBound => 17,
            Stream::DistillPrefixes => 19,
        }
    }
}

/// The generator for one use at one point of the run.
pub fn rng(seed: u64, stream: Stream, index: u64) -> rand_pcg::Pcg64 {
    let mix = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(stream.id().wrapping_mul(0xD1B5_4A32_D192_ED03))
        .wrapping_add(index.wrapping_mul(0x94D0_49BB_1331_11EB));
    rand_pcg::Pcg64::seed_from_u64(mix)
}

/// `n` values in [−1, 1] for unit tests' operands: a fixed xorshift stream per seed, so that
/// test data stays the same whatever version of `rand` is in the lock file.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 20_001) as f64 / 10_000.0 - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn streams_are_distinct_and_reproducible() {
        let all = [
            Stream::DataOrder,
            Stream::TrainNoise,
            Stream::LossVsT,
            Stream::Sampling,
            Stream::HeldOutBound,
            Stream::ContinuationBound,
            Stream::DistillPrefixes,
        ];
        let mut ids: Vec<u64> = all.iter().map(|s| s.id()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), all.len(), "two uses share a stream id");
        let first: Vec<u64> = all.iter().map(|&s| rng(3, s, 5).random()).collect();
        let again: Vec<u64> = all.iter().map(|&s| rng(3, s, 5).random()).collect();
        assert_eq!(first, again);
        let mut sorted = first.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "two streams gave the same draws");
    }
}
