//! Turning one position's logits into a token and a confidence: temperature, top-k, top-p,
//! repetition penalty, banned ids. Computed in f64 on the CPU side.

use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// 0 = greedy (argmax).
    pub temperature: f64,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set with cumulative probability ≥ top_p (1 = all).
    pub top_p: f64,
    /// > 1 discourages tokens already in the context (CTRL-style; 1 = off).
    pub repetition_penalty: f64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
        }
    }
}

impl Sampling {
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            anyhow::bail!("temperature must be ≥ 0, got {}", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            anyhow::bail!("top-p must be in (0, 1], got {}", self.top_p);
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            anyhow::bail!(
                "repetition penalty must be > 0, got {}",
                self.repetition_penalty
            );
        }
        Ok(())
    }

    /// Pick a token from `logits`. Confidence is the chosen token's probability under the
    /// distribution it was drawn from (greedy: the softmax maximum at temperature 1).
    /// `context` is the text so far in pieces (prompt, generated, ...), for the repetition penalty.
    pub fn pick(
        &self,
        logits: &[f32],
        context: &[&[u32]],
        banned: &[u32],
        rng: &mut impl Rng,
    ) -> (u32, f32) {
        if self.is_greedy() && self.repetition_penalty == 1.0 {
            return greedy(logits, banned);
        }
        if self.is_greedy() {
            let l = self.adjusted(logits, context, banned);
            let (best, max) = argmax(&l);
            let z: f64 = l.iter().map(|x| (x - max).exp()).sum();
            return (best as u32, (1.0 / z) as f32);
        }
        let probs = self.distribution(logits, context, banned);
        let (tok, p) = draw(&probs, rng);
        (tok, p as f32)
    }

    /// The distribution a sampled pick draws from (temperature > 0): (token, probability)
    /// pairs, most likely first, after the repetition penalty, banned ids, top-k and top-p,
    /// normalised. Speculative verification compares two of these.
    pub fn distribution(&self, logits: &[f32], context: &[&[u32]], banned: &[u32]) -> Dist {
        debug_assert!(!self.is_greedy(), "greedy picks have no distribution");
        let l = self.adjusted(logits, context, banned);
        let t = self.temperature;
        let (_, max) = argmax(&l);
        let mut probs: Vec<(u32, f64)> = l
            .iter()
            .enumerate()
            .map(|(i, &x)| (i as u32, ((x - max) / t).exp()))
            .filter(|(_, p)| *p > 0.0)
            .collect();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
        if self.top_k > 0 {
            probs.truncate(self.top_k);
        }
        let total: f64 = probs.iter().map(|p| p.1).sum();
        if self.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p.1 / total;
                if acc >= self.top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().map(|p| p.1).sum();
        for p in &mut probs {
            p.1 /= total;
        }
        probs
    }

    /// Logits in f64 after the repetition penalty and banned ids.
    fn adjusted(&self, logits: &[f32], context: &[&[u32]], banned: &[u32]) -> Vec<f64> {
        let mut l: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
        if self.repetition_penalty != 1.0 {
            let mut seen = vec![false; l.len()];
            for &c in context.iter().flat_map(|p| p.iter()) {
                if let Some(s) = seen.get_mut(c as usize) {
                    if !*s {
                        *s = true;
                        let x = &mut l[c as usize];
                        *x = if *x > 0.0 {
                            *x / self.repetition_penalty
                        } else {
                            *x * self.repetition_penalty
                        };
                    }
                }
            }
        }
        for &b in banned {
            if let Some(x) = l.get_mut(b as usize) {
                *x = f64::NEG_INFINITY;
            }
        }
        l
    }
}

/// A normalised distribution over a subset of the vocabulary: (token, probability) pairs.
pub type Dist = Vec<(u32, f64)>;

/// Draw a token from a distribution (non-empty, normalised); returns it with its probability.
pub fn draw(probs: &[(u32, f64)], rng: &mut impl Rng) -> (u32, f64) {
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.random::<f64>() * total;
    for &(i, p) in probs {
        if u < p {
            return (i, p / total);
        }
        u -= p;
    }
    let (i, p) = *probs.last().expect("at least one token survives filtering");
    (i, p / total)
}

/// Argmax and its softmax probability straight from the logits (the decode loop's common
/// case: no copy of the vocabulary-sized row).
fn greedy(logits: &[f32], banned: &[u32]) -> (u32, f32) {
    let allowed = |i: usize| !banned.contains(&(i as u32));
    let (mut best, mut max) = (0, f64::NEG_INFINITY);
    for (i, &x) in logits.iter().enumerate() {
        if (x as f64) > max && allowed(i) {
            (best, max) = (i, x as f64);
        }
    }
    let z: f64 = logits
        .iter()
        .enumerate()
        .filter(|&(i, _)| allowed(i))
        .map(|(_, &x)| (x as f64 - max).exp())
        .sum();
    (best as u32, (1.0 / z) as f32)
}

/// Index and value of the maximum (first on ties).
fn argmax(l: &[f64]) -> (usize, f64) {
    let mut best = 0;
    for (i, &x) in l.iter().enumerate() {
        if x > l[best] {
            best = i;
        }
    }
    (best, l[best])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn greedy_confidence_is_the_softmax_max() {
        let s = Sampling::default();
        let mut rng = rand_pcg::Pcg64::seed_from_u64(0);
        let (tok, conf) = s.pick(&[0.0, 2.0f32.ln(), 0.0], &[], &[], &mut rng);
        assert_eq!(tok, 1);
        assert!((conf - 0.5).abs() < 1e-6);
        // A banned id is never chosen, however likely.
        let (tok, _) = s.pick(&[9.0, 1.0, 0.0], &[], &[0], &mut rng);
        assert_eq!(tok, 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_penalty_discourages_repeats() {
        let s = Sampling {
            temperature: 1.0,
            top_k: 1,
            ..Default::default()
        };
        let mut rng = rand_pcg::Pcg64::seed_from_u64(1);
        for _ in 0..20 {
            assert_eq!(s.pick(&[0.1, 0.3, 0.2], &[], &[], &mut rng), (1, 1.0));
        }
        let p = Sampling {
            repetition_penalty: 10.0,
            ..Default::default()
        };
        assert_eq!(p.pick(&[1.0, 0.9, 0.0], &[&[0]], &[], &mut rng).0, 1);
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let s = Sampling {
            temperature: 1.0,
            ..Default::default()
        };
        let mut rng = rand_pcg::Pcg64::seed_from_u64(2);
        let logits = [0.0f32, 1.0f32.ln() + 3.0f32.ln()]; // probabilities 1/4, 3/4
        let ones = (0..4000)
            .filter(|_| s.pick(&logits, &[], &[], &mut rng).0 == 1)
            .count();
        assert!((ones as f64 / 4000.0 - 0.75).abs() < 0.03, "{ones}");
        // top-p 0.5 keeps only the most likely token.
        let s = Sampling {
            temperature: 1.0,
            top_p: 0.5,
            ..Default::default()
        };
        assert!((0..100).all(|_| s.pick(&logits, &[], &[], &mut rng).0 == 1));
    }
}
