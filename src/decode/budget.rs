//! How many drafts and `[MASK]` slots a pass should carry: as many as maximise the expected
//! tokens committed per unit of pass cost, from a row's running acceptance by draft position
//! (per draft source) and the measured cost of a pass of n positions. A draft that is rarely
//! accepted costs more than it saves, so when nothing beats a plain AR step the row sends
//! none, and a decoder whose drafts are always wrong falls back to AR's passes, probing its
//! masks again now and then in case the text changed.
//!
//! Cost is relative to a pass where every row feeds one position: 1 + `slope`·(extra
//! positions). [`PassCost`] fits the slope from the passes' own timings; until it has seen
//! passes of different sizes it uses [`DEFAULT_SLOPE`], what `card bench decode --cost-curve`
//! measured at batch 1 on a 2-core Zen 4 for SmolLM2 (0.16–0.27 for Q4_1 blocks up to 8
//! positions, 0.06–0.22 in f32; docs/results.md). Costs change how fast a row decodes, never
//! what it outputs.

/// Extra cost of one more position in a pass, before any pass was timed.
pub const DEFAULT_SLOPE: f64 = 0.25;

/// Recency: each new record weighs the old ones down by this factor, so a row's estimate
/// follows the text (a copied passage starts or ends) over about the last 1/(1−FADE) passes.
const FADE: f64 = 0.95;
/// A position a pass does not check keeps its verdict longer: had it faded as fast, the
/// verdict on a second draft that fails would be gone after a few dozen passes sending one,
/// the prior would send two again, and the row would swing between them. This one halves
/// in ~140 passes, so a stale verdict is still retried now and then.
const IDLE_FADE: f64 = 0.995;

/// Passes a row tries a source before its record decides. A try is the cheapest that teaches
/// something: one `[MASK]` slot (and its draft in the next pass), or one lookup draft; a
/// position never sent inherits its predecessor's chance, so a first draft that stands
/// opens longer runs.
const WARMUP: usize = 3;
/// A row that stopped using a source probes it again often enough to notice the text
/// changed, rarely enough that probes cost this share of its passes.
const PROBE_SHARE: f64 = 0.015;

/// One draft source's record for one row, by draft position.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    /// Per draft position: (faded) passes that checked it, and that accepted it.
    checked: Vec<f64>,
    accepted: Vec<f64>,
}

impl Budget {
    pub fn new() -> Self {
        Self::default()
    }

    /// The estimated chance that draft i stands given that every draft before it did: its
    /// record, pulled towards the previous position's chance (1/2 for the first) as if that
    /// had been seen twice. A position never sent thus inherits its predecessor's chance, so
    /// a row whose drafts stand keeps trying longer runs (copied text tends to go on).
    fn chance(&self, i: usize) -> f64 {
        let prior = if i == 0 { 0.5 } else { self.chance(i - 1) };
        let (c, a) = (
            self.checked.get(i).copied().unwrap_or(0.0),
            self.accepted.get(i).copied().unwrap_or(0.0),
        );
        (a + 2.0 * prior) / (c + 2.0)
    }

    /// Expected tokens a pass commits with m of this source's drafts: AR's token, plus draft
    /// j when every draft up to it stands.
    pub fn expected(&self, m: usize) -> f64 {
        let mut reach = 1.0;
        1.0 + (0..m)
            .map(|i| {
                reach *= self.chance(i);
                reach
            })
            .sum::<f64>()
    }

    /// Of m drafts, the one most likely to be the first that fails, and that chance.
    pub fn likeliest_miss(&self, m: usize) -> (usize, f64) {
        let (mut reach, mut best) = (1.0, (0, 0.0));
        for i in 0..m {
            let c = self.chance(i);
            if reach * (1.0 - c) > best.1 {
                best = (i, reach * (1.0 - c));
            }
            reach *= c;
        }
        best
    }

    /// The chance that the first draft fails.
    pub fn first_fails(&self) -> f64 {
        1.0 - self.chance(0)
    }

    /// The chance that all of the first m drafts stand.
    fn all_stand(&self, m: usize) -> f64 {
        (0..m).map(|i| self.chance(i)).product()
    }

    /// Of up to `offered` drafts, in a pass that also feeds `fixed` other positions besides
    /// the row's next token, how many to send: the m maximising expected committed tokens
    /// over the pass's cost (0 when none pays).
    pub fn drafts(&self, offered: usize, fixed: usize, slope: f64) -> usize {
        best_count(offered, |m| {
            self.expected(m) / (1.0 + slope * (m + fixed) as f64)
        })
    }

    /// Tokens per unit cost of decoding with m mask drafts and k `[MASK]` slots a pass, in
    /// the steady state: such a pass costs 1 + (m + k)·slope and commits `expected(m)`;
    /// when a draft fails the next pass has none (its slots predicted from a wrong context),
    /// costs 1 + k·slope and commits one token. Plain AR (m = k = 0) scores 1. A draft that
    /// often fails thus also costs the next pass's drafts, which one pass's count misses.
    fn steady_rate(&self, m: usize, k: usize, slope: f64) -> f64 {
        let miss = 1.0 - self.all_stand(m);
        let drafted = 1.0 + slope * (m + k) as f64;
        let fresh = 1.0 + slope * k as f64;
        (self.expected(m) + miss) / (drafted + miss * fresh)
    }

    /// After a pass that checked `checked` drafts, of which the first `accepted` stood.
    pub fn record(&mut self, checked: usize, accepted: usize) {
        if checked == 0 {
            return;
        }
        if self.checked.len() < checked {
            self.checked.resize(checked, 0.0);
            self.accepted.resize(checked, 0.0);
        }
        for (i, (c, a)) in self.checked.iter_mut().zip(&mut self.accepted).enumerate() {
            let fade = if i < checked { FADE } else { IDLE_FADE };
            *c *= fade;
            *a *= fade;
        }
        for i in 0..checked {
            self.checked[i] += 1.0;
            self.accepted[i] += f64::from(u8::from(i < accepted));
        }
    }
}

/// Of the counts 0..=most, the smallest with the highest `score` (count 0 is plain AR's).
fn best_count(most: usize, score: impl Fn(usize) -> f64) -> usize {
    (0..=most)
        .map(|n| (n, score(n)))
        .fold((0, f64::MIN), |best, x| if x.1 > best.1 { x } else { best })
        .0
}

/// When a row tries a source its record has turned off: its first `WARMUP` uses, then once
/// enough passes went by without it that a probe costs `PROBE_SHARE` of them.
#[derive(Debug, Clone, Default)]
struct Explore {
    used: usize,
    idle: usize,
}

impl Explore {
    /// Whether to try the source now, a try costing `probe` (relative to a one-position pass).
    fn due(&self, probe: f64) -> bool {
        self.used < WARMUP || (self.idle >= 8 && self.idle as f64 * PROBE_SHARE >= probe)
    }

    fn note(&mut self, used: bool) {
        if used {
            (self.used, self.idle) = (self.used + 1, 0);
        } else {
            self.idle += 1;
        }
    }
}

/// A row's plan for its `[MASK]` slots: the mask drafts' record, when to explore, and
/// whether the slots of the last two passes were fed to explore.
#[derive(Debug, Clone, Default)]
pub struct MaskPlan {
    pub record: Budget,
    explore: Explore,
    exploring: bool,
    /// Whether this pass's drafts come from exploring slots (send them all).
    explored: bool,
}

impl MaskPlan {
    /// How many of up to `k` slots the next pass feeds: the count with the best steady-state
    /// rate (0 when plain AR beats every count), or one to try them when that is 0 and a try
    /// is due (a slot, then its draft).
    pub fn slots(&mut self, k: usize, slope: f64) -> usize {
        self.explored = self.exploring;
        let best = best_count(k, |n| self.record.steady_rate(n, n, slope));
        self.exploring = k > 0 && best == 0 && self.explore.due(2.0 * slope);
        let chosen = if self.exploring { 1 } else { best };
        self.explore.note(chosen > 0);
        chosen
    }

    /// Of up to `offered` mask drafts (made by the last pass's slots), in a pass that also
    /// feeds `slots` `[MASK]` slots (call after `slots`), how many to send: all when the
    /// slots that made them were exploring, so the record learns, else the count with the
    /// best steady-state rate.
    pub fn drafts(&self, offered: usize, slots: usize, slope: f64) -> usize {
        if self.explored {
            return offered;
        }
        best_count(offered, |m| self.record.steady_rate(m, slots, slope))
    }
}

/// A row's plan for prompt-lookup drafts: their record, and when to explore.
#[derive(Debug, Clone, Default)]
pub struct LookupPlan {
    pub record: Budget,
    explore: Explore,
}

impl LookupPlan {
    /// Of `offered` lookup drafts, in a pass that also feeds `fixed` other positions, how many
    /// to send, and whether that is a probe: what pays, or one when none pays and a try is
    /// due.
    pub fn drafts(&mut self, offered: usize, fixed: usize, slope: f64) -> (usize, bool) {
        if offered == 0 {
            return (0, false);
        }
        let pays = self.record.drafts(offered, fixed, slope);
        let probe = pays == 0 && self.explore.due(slope);
        let sent = if probe { 1 } else { pays };
        self.explore.note(sent > 0);
        (sent, probe)
    }
}

/// A row's plan for the alternatives of a draft tree (`tree.rs`): how often one stood where
/// the main chain's first draft failed, and when to explore.
#[derive(Debug, Clone, Default)]
pub struct TreePlan {
    pub record: Budget,
    explore: Explore,
}

impl TreePlan {
    /// Whether to send `offered` alternative positions beside a main chain whose first draft
    /// fails with chance `miss`: when the token they are expected to add pays for them, or
    /// to try them when a try is due. A token that stands on a branch keeps no keys/values:
    /// the next pass feeds it again with AR's token after it, two positions.
    pub fn send(&mut self, offered: usize, miss: f64, slope: f64) -> bool {
        if offered == 0 {
            return false;
        }
        let cost = slope * offered as f64;
        let gain = miss * (self.record.expected(1) - 1.0) * (1.0 - 2.0 * slope);
        let pays = gain >= cost;
        let sent = pays || self.explore.due(cost);
        self.explore.note(sent);
        sent
    }
}

/// The cost of a pass against the positions it fed, fitted by least squares to the passes
/// timed so far: seconds ≈ a + b·positions.
#[derive(Debug, Clone, Default)]
pub struct PassCost {
    n: f64,
    sx: f64,
    sy: f64,
    sxx: f64,
    sxy: f64,
}

impl PassCost {
    /// A pass that fed `positions` in all took `secs`.
    pub fn observe(&mut self, positions: usize, secs: f64) {
        let x = positions as f64;
        self.n += 1.0;
        self.sx += x;
        self.sy += secs;
        self.sxx += x * x;
        self.sxy += x * secs;
    }

    /// The extra cost of one more position, relative to a pass where each of `rows` rows
    /// feeds one: b / (a/rows + b); until passes of at least two sizes were timed, what
    /// [`DEFAULT_SLOPE`] (a one-row figure) means for `rows` rows sharing a pass's fixed
    /// cost. Clamped to a sane range, as a few noisy timings can fit anything.
    pub fn slope(&self, rows: usize) -> f64 {
        let spread = self.n * self.sxx - self.sx * self.sx;
        if self.n < 4.0 || spread < self.n * 0.5 {
            let (s, b) = (DEFAULT_SLOPE, rows.max(1) as f64);
            return b * s / (1.0 - s + b * s);
        }
        let b = (self.n * self.sxy - self.sx * self.sy) / spread;
        let a = (self.sy - b * self.sx) / self.n;
        let per_row = a / rows.max(1) as f64 + b;
        if per_row <= 0.0 {
            return DEFAULT_SLOPE;
        }
        (b / per_row).clamp(0.02, 2.0)
    }
}

#[cfg(test)]
#[path = "budget_tests.rs"]
mod tests;
