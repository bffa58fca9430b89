//! How many drafts a pass should carry: as many as maximise the expected tokens committed per
//! unit of pass cost, from a row's running acceptance by draft position and the cost of a
//! pass of n positions. A draft that is rarely accepted costs more than it saves, so when no
//! number of drafts beats a plain AR step the row sends none, and a decoder whose drafts are
//! always wrong falls back to AR's passes.
//!
//! The cost is relative to a 1-position pass, linear in the positions: 1 + `slope`·(n − 1).
//! The default slope is what `card bench decode --cost-curve` measured at batch 1 on a
//! 2-core Zen 4 for SmolLM2 (0.2–0.27 for Q4_1 blocks up to 8 positions, 0.06–0.22 in f32;
//! docs/results.md). It changes how fast a row decodes, never what it outputs.

/// Extra cost of one more position in a pass, relative to a 1-position pass.
pub const DEFAULT_SLOPE: f64 = 0.25;

/// One row's draft statistics.
#[derive(Debug, Clone)]
pub struct Budget {
    slope: f64,
    /// Per draft position: passes that checked it, and that accepted it.
    checked: Vec<u32>,
    accepted: Vec<u32>,
}

impl Budget {
    pub fn new(slope: f64) -> Self {
        Self {
            slope,
            checked: Vec::new(),
            accepted: Vec::new(),
        }
    }

    /// The estimated chance that draft i stands given that every draft before it did: its
    /// record, pulled towards the previous position's chance (1/2 for the first) as if that
    /// had been seen twice. A position never sent thus inherits its predecessor's chance, so
    /// a row whose drafts stand keeps trying longer runs (copied text tends to go on).
    fn chance(&self, i: usize) -> f64 {
        let prior = if i == 0 { 0.5 } else { self.chance(i - 1) };
        let (c, a) = (
            self.checked.get(i).copied().unwrap_or(0),
            self.accepted.get(i).copied().unwrap_or(0),
        );
        (a as f64 + 2.0 * prior) / (c as f64 + 2.0)
    }

    /// Of up to `offered` drafts, in a pass that also feeds `fixed` other positions besides
    /// the row's next token, how many to send: the m maximising expected committed tokens
    /// (1 + Σ_{j ≤ m} Π_{i < j} chance(i)) over the pass's cost (0 when none pays).
    pub fn drafts(&self, offered: usize, fixed: usize) -> usize {
        let cost = |m: usize| 1.0 + self.slope * (m + fixed) as f64;
        let (mut best, mut best_rate) = (0, 1.0 / cost(0));
        let (mut expected, mut reach) = (1.0, 1.0);
        for m in 1..=offered {
            reach *= self.chance(m - 1);
            expected += reach;
            let rate = expected / cost(m);
            if rate > best_rate {
                (best, best_rate) = (m, rate);
            }
        }
        best
    }

    /// After a pass that checked `checked` drafts, of which the first `accepted` stood.
    pub fn record(&mut self, checked: usize, accepted: usize) {
        if self.checked.len() < checked {
            self.checked.resize(checked, 0);
            self.accepted.resize(checked, 0);
        }
        for i in 0..checked {
            self.checked[i] += 1;
            self.accepted[i] += u32::from(i < accepted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafts_that_stand_are_sent_and_drafts_that_fail_stop() {
        let mut b = Budget::new(DEFAULT_SLOPE);
        // No evidence: a first draft at 1/2 pays (1.5 tokens for 1.25), a long run does not.
        assert_eq!(b.drafts(8, 0), 1);
        for _ in 0..20 {
            b.record(4, 4);
        }
        assert_eq!(b.drafts(4, 0), 4, "drafts that always stand: send them all");
        let mut b = Budget::new(DEFAULT_SLOPE);
        for _ in 0..20 {
            b.record(1, 0);
        }
        assert_eq!(b.drafts(8, 0), 0, "a first draft that never stands: none");
        // Two drafts that always stood: a third, never sent, is tried.
        let mut b = Budget::new(DEFAULT_SLOPE);
        for _ in 0..10 {
            b.record(2, 2);
        }
        assert!(b.drafts(8, 0) > 2);
    }

    #[test]
    fn dearer_positions_send_fewer_drafts() {
        // Runs of 0 to 6 accepted drafts, equally often: acceptance falls with position.
        let mut b = Budget::new(0.05);
        for accepted in (0..=6).cycle().take(14) {
            b.record(6, accepted);
        }
        let cheap = b.drafts(6, 0);
        let dear = Budget {
            slope: 0.6,
            ..b.clone()
        }
        .drafts(6, 0);
        assert!(cheap > dear, "{cheap} vs {dear}");
        // Other positions in the pass (mask slots) raise the bar for the first draft too.
        assert!(b.drafts(6, 8) <= cheap);
    }
}
