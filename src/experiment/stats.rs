//! Statistics over seeds: mean ± sd, and paired comparisons: per-seed differences, a paired t-test and the verdict the
//! reports print, so that no sentence calls a difference real that the seeds do not support.

/// Mean and sample standard deviation (0 for one value).
pub fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = xs.iter().sum::<f64>() / n;
    let sd = if xs.len() > 1 {
        (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (m, sd)
}

/// "1.234 ± 0.010" (± over seeds; no ± for one seed).
pub fn fmt_mean_sd(xs: &[f64], digits: usize) -> String {
    let (m, sd) = mean_sd(xs);
    if xs.len() > 1 {
        format!("{m:.digits$} ± {sd:.digits$}")
    } else {
        format!("{m:.digits$}")
    }
}

/// Differences `b − a` of paired values (matched by seed) and what they support.
#[derive(Debug, Clone, PartialEq)]
pub struct Paired {
    pub diffs: Vec<f64>,
    pub mean: f64,
    pub sd: f64,
    /// Two-sided p-value of the paired t-test (NaN for fewer than two pairs or zero spread
    /// with a zero mean).
    pub p: f64,
}

impl Paired {
    pub fn new(diffs: Vec<f64>) -> Self {
        let (mean, sd) = mean_sd(&diffs);
        let n = diffs.len();
        let p = if n < 2 {
            f64::NAN
        } else if sd == 0.0 {
            if mean == 0.0 {
                f64::NAN
            } else {
                0.0
            }
        } else {
            let t = mean / (sd / (n as f64).sqrt());
            t_two_sided_p(t, (n - 1) as f64)
        };
        Self { diffs, mean, sd, p }
    }

    /// Every pair moved the same way (and there are at least two).
    pub fn same_sign(&self) -> bool {
        self.diffs.len() >= 2
            && (self.diffs.iter().all(|&d| d < 0.0) || self.diffs.iter().all(|&d| d > 0.0))
    }

    /// "lower on every seed (p = 0.01)", "higher on every seed, p = 0.20: not significant",
    /// "seeds disagree (p = 0.6): undecided", for a metric where lower is `lower_is`.
    pub fn verdict(&self, lower_is: &str, higher_is: &str) -> String {
        let p = if self.p.is_nan() {
            "p undefined".to_string()
        } else {
            format!("p = {:.3}", self.p)
        };
        let way = if self.mean < 0.0 { lower_is } else { higher_is };
        if self.diffs.is_empty() {
            "no seed ran both: undecided".to_string()
        } else if self.diffs.len() < 2 {
            format!("one seed only: undecided ({way} on it)")
        } else if self.same_sign() && self.p < 0.05 {
            format!("{way} on every seed ({p}): real")
        } else if self.same_sign() {
            format!("{way} on every seed, but {p}: suggestive, not significant")
        } else {
            format!("seeds disagree ({p}): undecided")
        }
    }
}

/// The least-squares line y = a + b·x through points, with the slope's standard error and the
/// two-sided p-value of its t-test (n − 2 degrees of freedom).
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub intercept: f64,
    pub slope: f64,
    pub slope_se: f64,
    pub p: f64,
    pub n: usize,
    /// Mean of the xs and of the ys: every line of another slope drawn through it stays a
    /// least-squares line of that slope.
    pub centre: (f64, f64),
}

impl Line {
    /// None for fewer than three points or when every x is the same.
    pub fn fit(points: &[(f64, f64)]) -> Option<Self> {
        let n = points.len();
        if n < 3 {
            return None;
        }
        let mx = points.iter().map(|p| p.0).sum::<f64>() / n as f64;
        let my = points.iter().map(|p| p.1).sum::<f64>() / n as f64;
        let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
        if sxx <= 0.0 {
            return None;
        }
        let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let slope = sxy / sxx;
        let intercept = my - slope * mx;
        let rss: f64 = points
            .iter()
            .map(|p| (p.1 - intercept - slope * p.0).powi(2))
            .sum();
        let slope_se = (rss / (n - 2) as f64 / sxx).sqrt();
        let p = match (slope_se > 0.0, slope == 0.0) {
            (true, _) => t_two_sided_p(slope / slope_se, (n - 2) as f64),
            (false, true) => f64::NAN,
            (false, false) => 0.0,
        };
        Some(Self {
            intercept,
            slope,
            slope_se,
            p,
            n,
            centre: (mx, my),
        })
    }

    /// The slope's two-sided 95% interval.
    pub fn slope_interval(&self) -> (f64, f64) {
        let half = t_critical(0.05, (self.n - 2) as f64) * self.slope_se;
        (self.slope - half, self.slope + half)
    }

    /// Where a line of `slope` through the centre reaches `y` (None where it never does: a
    /// zero slope).
    pub fn reaches(&self, y: f64, slope: f64) -> Option<f64> {
        (slope != 0.0).then(|| self.centre.0 + (y - self.centre.1) / slope)
    }
}

/// The two-sided critical value of Student's t: P(|T| ≥ t) = `p` (bisection on
/// [`t_two_sided_p`], which falls as t grows).
pub fn t_critical(p: f64, df: f64) -> f64 {
    let (mut lo, mut hi) = (0.0, 1e6);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if t_two_sided_p(mid, df) > p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Two-sided p-value of Student's t with `df` degrees of freedom:
/// P(|T| ≥ |t|) = I_{df/(df+t²)}(df/2, 1/2).
pub fn t_two_sided_p(t: f64, df: f64) -> f64 {
    if !t.is_finite() {
        return 0.0;
    }
    incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
}

/// The regularized incomplete beta function I_x(a, b) by its continued fraction (modified
/// Lentz), using the symmetry I_x(a, b) = 1 − I_{1−x}(b, a) where the fraction converges slowly.
fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_fraction(b, a, 1.0 - x) / b
    }
}

fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut c = 1.0;
    let mut d = 1.0 - (a + b) * x / (a + 1.0);
    d = 1.0 / if d.abs() < TINY { TINY } else { d };
    let mut h = d;
    for m in 1..300 {
        let m = m as f64;
        for num in [
            m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0)),
        ] {
            d = 1.0 + num * d;
            d = 1.0 / if d.abs() < TINY { TINY } else { d };
            c = 1.0 + num / c;
            c = if c.abs() < TINY { TINY } else { c };
            h *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-14 {
            break;
        }
    }
    h
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, nine terms: ~1e-15 relative).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1−x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut s = G[0];
    for (i, g) in G.iter().enumerate().skip(1) {
        s += g / (x + i as f64);
    }
    let t = x + 7.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + s.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_test_matches_published_critical_values() {
        // Two-sided 5% and 1% critical values of Student's t (any statistics table).
        for (t, df, p) in [
            (12.706, 1.0, 0.05),
            (4.303, 2.0, 0.05),
            (9.925, 2.0, 0.01),
            (2.776, 4.0, 0.05),
            (2.228, 10.0, 0.05),
            (1.960, 1e6, 0.05),
        ] {
            let got = t_two_sided_p(t, df);
            assert!((got - p).abs() < 2e-4, "t {t} df {df}: p {got}, table {p}");
        }
        // df = 2 has a closed form: p = 1 − |t| / sqrt(t² + 2).
        for t in [0.1, 0.7, 2.0, 5.0] {
            let exact = 1.0 - t / (t * t + 2.0f64).sqrt();
            assert!((t_two_sided_p(t, 2.0) - exact).abs() < 1e-12);
            assert!((t_two_sided_p(-t, 2.0) - exact).abs() < 1e-12);
        }
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
    }

    #[test]
    fn verdicts_follow_the_seeds() {
        let real = Paired::new(vec![-0.10, -0.11, -0.09]);
        assert!(real.same_sign() && real.p < 0.05);
        assert_eq!(
            real.verdict("better", "worse"),
            format!("better on every seed (p = {:.3}): real", real.p)
        );
        let weak = Paired::new(vec![0.01, 0.2, 0.5]);
        assert!(weak.same_sign() && weak.p > 0.05);
        assert!(weak
            .verdict("better", "worse")
            .starts_with("worse on every seed, but p = "));
        let mixed = Paired::new(vec![-0.1, 0.05, -0.02]);
        assert!(!mixed.same_sign());
        assert!(mixed
            .verdict("better", "worse")
            .starts_with("seeds disagree"));
        assert!(Paired::new(vec![-0.1])
            .verdict("better", "worse")
            .starts_with("one seed only"));
        // Identical differences: zero spread, significant by any test.
        assert_eq!(Paired::new(vec![0.2, 0.2]).p, 0.0);
    }

    #[test]
    fn a_fitted_line_matches_a_hand_computation() {
        // x̄ = 2.5, ȳ = 2.75, Sxx = 5, Sxy = 5.5: b = 1.1, a = 0; residuals −0.1, 0.8, −1.3,
        // 0.6 give RSS 2.7 and se(b) = sqrt(2.7 / 2 / 5).
        let line = Line::fit(&[(1.0, 1.0), (2.0, 3.0), (3.0, 2.0), (4.0, 5.0)]).unwrap();
        assert!((line.slope - 1.1).abs() < 1e-12 && line.intercept.abs() < 1e-12);
        assert!((line.slope_se - 0.27f64.sqrt()).abs() < 1e-12);
        let t = 1.1 / 0.27f64.sqrt();
        assert!((line.p - (1.0 - t / (t * t + 2.0).sqrt())).abs() < 1e-12);
        // Through the centre with slope 1.1 it reaches y = 5.5 at x = 5.
        assert!((line.reaches(5.5, line.slope).unwrap() - 5.0).abs() < 1e-12);
        let (lo, hi) = line.slope_interval();
        assert!((hi - lo - 2.0 * 4.303 * 0.27f64.sqrt()).abs() < 1e-3);
        assert!(Line::fit(&[(1.0, 1.0), (1.0, 2.0), (1.0, 3.0)]).is_none());
        assert!(Line::fit(&[(1.0, 1.0), (2.0, 2.0)]).is_none());
        let exact = Line::fit(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]).unwrap();
        assert_eq!((exact.slope, exact.slope_se, exact.p), (2.0, 0.0, 0.0));
        for (p, df, t) in [(0.05, 2.0, 4.303), (0.05, 7.0, 2.365), (0.01, 4.0, 4.604)] {
            assert!((t_critical(p, df) - t).abs() < 1e-3, "p {p} df {df}");
        }
    }
}
