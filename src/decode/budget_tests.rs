use super::*;

#[test]
fn drafts_that_stand_are_sent_and_drafts_that_fail_stop() {
    let s = DEFAULT_SLOPE;
    let mut b = Budget::new();
    // No evidence: a first draft at 1/2 pays (1.5 tokens for 1.25), a long run does not.
    assert_eq!(b.drafts(8, 0, s), 1);
    for _ in 0..20 {
        b.record(4, 4);
    }
    assert_eq!(
        b.drafts(4, 0, s),
        4,
        "drafts that always stand: send them all"
    );
    let mut b = Budget::new();
    for _ in 0..20 {
        b.record(1, 0);
    }
    assert_eq!(
        b.drafts(8, 0, s),
        0,
        "a first draft that never stands: none"
    );
    // Two drafts that always stood: a third, never sent, is tried.
    let mut b = Budget::new();
    for _ in 0..10 {
        b.record(2, 2);
    }
    assert!(b.drafts(8, 0, s) > 2);
    // Free positions: every draft offered goes.
    assert_eq!(Budget::new().drafts(8, 3, 0.0), 8);
}

#[test]
fn dearer_positions_send_fewer_drafts() {
    // Runs of 0 to 6 accepted drafts, equally often: acceptance falls with position.
    let mut b = Budget::new();
    for accepted in (0..=6).cycle().take(14) {
        b.record(6, accepted);
    }
    let cheap = b.drafts(6, 0, 0.05);
    let dear = b.drafts(6, 0, 0.6);
    assert!(cheap > dear, "{cheap} vs {dear}");
    // Other positions in the pass (mask slots) raise the bar for the first draft too.
    assert!(b.drafts(6, 8, 0.05) <= cheap);
}

#[test]
fn the_record_follows_the_recent_passes() {
    let mut b = Budget::new();
    for _ in 0..40 {
        b.record(1, 1);
    }
    assert!(b.chance(0) > 0.9);
    // A run of failures outweighs an older run of successes.
    for _ in 0..20 {
        b.record(1, 0);
    }
    assert!(b.chance(0) < 0.4, "{}", b.chance(0));
    // A pass that checked nothing records nothing.
    let before = b.chance(0);
    b.record(0, 0);
    assert_eq!(b.chance(0), before);
}

/// A simulated row over `passes` passes whose mask drafts stand with `stands(position)`
/// (asked in order, each given that every earlier draft stood): the modelled cost of its
/// passes per committed token, 1 for plain AR. A pass records the drafts it checked, as the
/// verifier does: up to the first that failed.
fn mask_cost_per_token(
    k: usize,
    slope: f64,
    passes: usize,
    mut stands: impl FnMut(usize) -> bool,
) -> f64 {
    let mut plan = MaskPlan::default();
    let (mut cost, mut tokens) = (0.0, 0usize);
    // Drafts the previous pass's slots made for this one.
    let mut drafts = 0;
    for _ in 0..passes {
        let slots = plan.slots(k, slope);
        let sent = plan.drafts(drafts, slots, slope);
        cost += 1.0 + slope * (sent + slots) as f64;
        let stood = (0..sent).take_while(|&i| stands(i)).count();
        plan.record.record(sent.min(stood + 1), stood);
        tokens += stood + 1;
        // Slots predicted from the right context only when every draft stood.
        drafts = if stood == sent { slots } else { 0 };
    }
    cost / tokens as f64
}

#[test]
fn drafts_that_never_stand_cost_no_more_than_ar_beyond_the_probes() {
    for k in [1, 2, 4, 8] {
        for slope in [0.1, DEFAULT_SLOPE, 0.6] {
            let c = mask_cost_per_token(k, slope, 2000, |_| false);
            // Warm-up and a probe every PROBE_EVERY passes: at most a few percent.
            assert!(c <= 1.03, "K={k} slope {slope}: {c:.3} per token");
        }
    }
}

#[test]
fn drafts_that_stand_are_kept_and_beat_ar() {
    for k in [1, 2, 4] {
        let c = mask_cost_per_token(k, DEFAULT_SLOPE, 500, |_| true);
        // Every pass: k drafts that stand and k slots, k + 1 tokens.
        let ideal = (1.0 + 2.0 * DEFAULT_SLOPE * k as f64) / (k + 1) as f64;
        assert!(
            c < ideal * 1.02,
            "K={k}: {c:.3} per token, {ideal:.3} at best"
        );
    }
    // A first slot that stands, a second that never does: one slot a pass pays at a low
    // slope.
    let c = mask_cost_per_token(2, 0.1, 500, |i| i == 0);
    assert!(c < 0.9, "{c:.3}");
}

#[test]
fn the_pass_cost_fit_recovers_a_linear_cost() {
    let mut fit = PassCost::default();
    assert_eq!(fit.slope(1), DEFAULT_SLOPE, "nothing timed");
    for _ in 0..10 {
        fit.observe(1, 0.010);
    }
    assert_eq!(fit.slope(1), DEFAULT_SLOPE, "one size only");
    // 8 ms + 2 ms per position: one more position costs 2/10 of a one-position pass.
    for n in [3, 5, 1, 2] {
        fit.observe(n, 0.008 + 0.002 * n as f64);
    }
    assert!((fit.slope(1) - 0.2).abs() < 1e-9, "{}", fit.slope(1));
    // Eight rows share the fixed part: a position weighs more against a row's share.
    let eight = 0.002 / (0.008 / 8.0 + 0.002);
    assert!((fit.slope(8) - eight).abs() < 1e-9);
}

#[test]
fn lookup_probes_a_source_the_prior_turned_off_and_keeps_it_when_it_stands() {
    // Positions dear enough that an untried draft at 1/2 does not pay.
    let slope = 0.8;
    assert_eq!(Budget::new().drafts(4, 0, slope), 0);
    // Always standing: 4 drafts a pass, 5 tokens for 1 + 4·slope, once learned.
    let learned = (1.0 + 4.0 * slope) / 5.0 * 1.02;
    for (always, most) in [(true, learned), (false, 1.04)] {
        let mut plan = LookupPlan::default();
        let (mut cost, mut tokens) = (0.0, 0);
        for _ in 0..2000 {
            let (sent, _) = plan.drafts(4, 0, slope);
            let stood = if always { sent } else { 0 };
            plan.record.record(sent, stood);
            cost += 1.0 + slope * sent as f64;
            tokens += stood + 1;
        }
        let c = cost / tokens as f64;
        assert!(
            c <= most,
            "drafts that always stand: {always}; {c:.3} per token"
        );
    }
}

/// `mask_cost_per_token` with draft i standing at random with chance `p[i]` (0 past the
/// list), from a fixed seed.
fn random_mask_cost(k: usize, slope: f64, p: &[f64], passes: usize) -> f64 {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_pcg::Pcg64::seed_from_u64(5);
    mask_cost_per_token(k, slope, passes, |i| {
        rng.random_bool(p.get(i).copied().unwrap_or(0.0))
    })
}

#[test]
fn more_slots_offered_never_cost_more_than_fewer() {
    // Measured acceptance by slot: prose on an adapted SmolLM2 (slot 1 ~40%, slot 2 never),
    // and probes (slot 1 85%, slot 2 41%). Offering a second slot must not make the row
    // slower than offering one (beyond its probes), nor slower than AR.
    for p in [&[0.4][..], &[0.85, 0.41]] {
        for slope in [0.05, 0.1, 0.2] {
            let one = random_mask_cost(1, slope, p, 20_000);
            let two = random_mask_cost(2, slope, p, 20_000);
            assert!(
                two <= one * 1.01,
                "{p:?} slope {slope}: K=2 {two:.3} vs K=1 {one:.3}"
            );
            assert!(
                two <= 1.01,
                "{p:?} slope {slope}: K=2 {two:.3} against AR's 1"
            );
        }
    }
}
