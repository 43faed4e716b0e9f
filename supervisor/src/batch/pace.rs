//! How long the worker takes for a batch, learnt from the batches it answered.
//!
//! A line, `seconds = fixed + per_token × tokens` (a batch's real tokens, what the worker
//! computes), fitted by exponentially weighted least squares: each answered batch
//! weighs 1 and older ones fade by [`DECAY`] per batch, so the fit follows a machine that
//! gets busier or a buffer cache that warms up. When the recent batches are all of about
//! one size, or the fit says something impossible (a negative part), time is taken as
//! proportional to tokens. Attention's cost grows with the square of a sequence's length,
//! but for the lengths embedding models take it is a small share (`docs/architecture.md`),
//! and both uses below leave a margin.
//!
//! Three uses: batches are sized to take at most `scheduling.max_batch_ms`
//! ([`Pace::tokens_within`]), so work that arrives waits at most about that long behind a
//! batch; the dispatch policy cuts the next batch just before the worker is predicted
//! to be free ([`Pace::cut_at`], `policy.rs`), and the runner's watchdog tells a slow
//! batch from a hung worker (`runner/recovery.rs`).

use std::time::Duration;

use tokio::time::Instant;

/// Weight of the past per new batch: the fit remembers about ten batches.
const DECAY: f64 = 0.9;

/// How much of a time-bounded batch its fixed cost (learnt, `line`) may take: a batch is
/// never cut so small that the fixed cost takes more than `max_fixed_share` of its time,
/// unless that would stretch it past `max_stretch` times the time target (a fit thrown off
/// by a few slow batches, a busy machine, would otherwise size batches of hundreds of
/// milliseconds). A share of s leaves the worker 1 − s of its speed on long batches.
/// `max_growth`: a budget at most this many times the mean size of the batches the fit has
/// seen, since the line is only known where it was measured (below).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overhead {
    pub max_fixed_share: f64,
    pub max_stretch: f64,
    pub max_growth: f64,
}

impl Overhead {
    /// Work at the default priority or better: a sixteenth, up to sixteen times the target.
    /// Who waits behind these batches is work of the same class, which a faster worker
    /// serves sooner: on the 2-core CPU a 66M-parameter model has ~20 ms of fixed cost per
    /// batch, and a quarter held its 32-client traffic at 75% of the worker's speed; a
    /// 300M-parameter one has ~190 ms, so four times the default target held its batches at
    /// two texts, a fixed cost of 95%, and its 32 clients at 0.56× of sentence-transformers;
    /// an eighth still held the larger models' batches at 5–10 texts (docs/scheduling.md).
    pub const INTERACTIVE: Overhead =
        Overhead { max_fixed_share: 0.0625, max_stretch: 16.0, max_growth: f64::INFINITY };

    /// Bulk work that yields (`scheduling.bulk_max_batch_ms`): a quarter, up to twice the
    /// target. A query waits for the bulk batch being computed; with MiniLM's ~8 ms of fixed
    /// cost, a tenth held those batches near 80 ms whatever the bound asked and the queries
    /// behind them at 4-5× their idle latency, a quarter lets 25 ms batches through at ~15%
    /// of the ingest's speed.
    ///
    /// At most twice the recent batches' mean size: bulk batches are all about one size (the
    /// budget), so the fit's slope rests on a few percent of spread and noisy times (a
    /// tokenization sharing the cores makes one batch 3x slower). On the 2-core box it fell
    /// to 2.5-30 µs per token (the worker's is ~135) with a fixed part near the target, the
    /// budget extrapolated from ~150-token batches to 800-9,900 tokens, and those batches
    /// took 0.1-1.3 s with queries behind them (docs/scheduling.md). Doubling per
    /// batch still grows a budget learnt on small batches within a few batches.
    pub const BULK: Overhead = Overhead { max_fixed_share: 0.25, max_stretch: 2.0, max_growth: 2.0 };

    /// A batch computed inside a yielding one (`batch/policy.rs`): the time target, not
    /// stretched, since whatever arrives while it runs waits for all of it.
    pub const NESTED: Overhead = Overhead { max_fixed_share: 1.0, max_stretch: 1.0, max_growth: f64::INFINITY };
}

/// How early, before the worker is predicted to be free, the next batch is cut: an eighth
/// of the running batch's predicted time, within these bounds. Early enough for the batch
/// to be encoded, sent and decoded before the worker needs it (well under a millisecond on
/// an idle machine, more on a busy one), late enough to take in what arrives meanwhile.
/// Cutting late costs little: a worker that finishes first gets the next batch the moment
/// its answer arrives.
const MIN_LEAD: Duration = Duration::from_millis(1);
const MAX_LEAD: Duration = Duration::from_millis(25);

/// The worker's observed speed.
#[derive(Debug, Clone, Default)]
pub struct Pace {
    // Exponentially weighted sums of 1, tokens, seconds, tokens², tokens × seconds.
    w: f64,
    x: f64,
    y: f64,
    xx: f64,
    xy: f64,
    /// The least fixed cost the line may have, seconds ([`Pace::set_fixed_floor`]).
    fixed_floor: f64,
}

impl Pace {
    /// Records that a batch of `tokens` took `took` in the worker.
    pub fn observe(&mut self, tokens: usize, took: Duration) {
        let (x, y) = (tokens as f64, took.as_secs_f64());
        self.w = self.w * DECAY + 1.0;
        self.x = self.x * DECAY + x;
        self.y = self.y * DECAY + y;
        self.xx = self.xx * DECAY + x * x;
        self.xy = self.xy * DECAY + x * y;
    }

    /// What the worker measured for a tiny batch once warm (`ModelInfo::tiny_batch_seconds`):
    /// no batch costs less, so the line's fixed part is never below it (while the batches
    /// seen took longer than it). The fit alone placed it too low: the batches the time
    /// bound lets through are all of a few sizes, whose noise put the intercept near zero
    /// (embeddinggemma-300m on 2 CPU cores: 0–20 ms where a 16-token batch took 113 ms), and
    /// batches sized by that line kept their fixed cost at ~40% of their time
    /// (docs/scheduling.md, "The fixed cost").
    pub fn set_fixed_floor(&mut self, seconds: f64) {
        self.fixed_floor = if seconds.is_finite() { seconds.max(0.0) } else { 0.0 };
    }

    /// `(fixed seconds, seconds per token)`, or None before the first batch.
    fn line(&self) -> Option<(f64, f64)> {
        if self.w == 0.0 {
            return None;
        }
        let (mx, my) = (self.x / self.w, self.y / self.w);
        let var = self.xx / self.w - mx * mx;
        // A spread of sizes under 5% of the mean cannot place a line.
        let fitted = (var > (0.05 * mx).powi(2))
            .then(|| {
                let slope = (self.xy / self.w - mx * my) / var;
                (my - slope * mx, slope)
            })
            .filter(|&(fixed, slope)| slope >= 0.0 && fixed >= 0.0);
        let (fixed, slope) = fitted.unwrap_or(if mx > 0.0 { (0.0, my / mx) } else { (my, 0.0) });
        // Below the floor: the line through the mean batch with the floor as fixed part.
        if fixed < self.fixed_floor && my > self.fixed_floor && mx > 0.0 {
            return Some((self.fixed_floor, (my - self.fixed_floor) / mx));
        }
        Some((fixed, slope))
    }

    /// How long a batch of `tokens` should take, once one batch has been timed.
    pub fn predict(&self, tokens: usize) -> Option<Duration> {
        let (fixed, per_token) = self.line()?;
        Some(Duration::from_secs_f64((fixed + per_token * tokens as f64).clamp(0.0, 86_400.0)))
    }

    /// Most tokens a batch may hold to take at most `target`, once one batch has been
    /// timed. Never below `floor`, nor below what keeps the fixed cost within `overhead`
    /// (unless past its growth bound).
    pub fn tokens_within(&self, target: Duration, floor: usize, overhead: Overhead) -> Option<usize> {
        let (fixed, per_token) = self.line()?;
        if per_token <= 0.0 {
            return None;
        }
        let target = target.as_secs_f64();
        let Overhead { max_fixed_share: share, max_stretch, max_growth } = overhead;
        let worth = fixed * (1.0 - share) / share / per_token;
        let stretched = (max_stretch * target - fixed) / per_token;
        let measured = max_growth * self.x / self.w;
        let n = ((target - fixed) / per_token).max(worth.min(stretched)).min(measured).floor();
        Some(if n.is_finite() && n > floor as f64 { n.min(usize::MAX as f64 / 2.0) as usize } else { floor })
    }

    /// When to cut the next batch for a worker that began a batch of `tokens` at
    /// `started`: a little before it is predicted to finish. None before the first batch.
    pub fn cut_at(&self, started: Instant, tokens: usize) -> Option<Instant> {
        let took = self.predict(tokens)?;
        let lead = (took / 8).clamp(MIN_LEAD, MAX_LEAD);
        Some((started + took).checked_sub(lead).unwrap_or(started).max(started))
    }
}

/// The fitted line, for logs: `fixed 42.0 ms + 1.010 ms/token`.
impl std::fmt::Display for Pace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line() {
            Some((fixed, per_token)) => write!(f, "fixed {:.1} ms + {:.4} ms/token", fixed * 1e3, per_token * 1e3),
            None => f.write_str("not yet timed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    /// Equal within a microsecond (float sums round).
    fn near(a: Option<Duration>, b: Duration) -> bool {
        a.is_some_and(|a| a.abs_diff(b) < Duration::from_micros(1))
    }

    #[test]
    fn tokens_within_a_time_target() {
        let mut p = Pace::default();
        assert_eq!(p.tokens_within(ms(250), 64, Overhead::BULK), None, "nothing timed yet");
        // 1 ms per 10 tokens, no fixed cost: 250 ms holds 2,500 tokens.
        p.observe(1000, ms(100));
        let n = p.tokens_within(ms(250), 64, Overhead::INTERACTIVE).unwrap();
        assert!((2499..=2500).contains(&n), "{n}");
        assert_eq!(p.tokens_within(ms(1), 64, Overhead::BULK), Some(64), "never below the floor");
    }

    #[test]
    fn a_measured_fixed_cost_floors_the_line() {
        let mut p = Pace::default();
        // Batches of about one size, proportional-looking: 1.7 ms per token.
        for (tokens, ms) in [(140, 238), (135, 230), (145, 246)] {
            p.observe(tokens, Duration::from_millis(ms));
        }
        let (fixed, _) = p.line().unwrap();
        assert!(fixed < 0.010, "{fixed}");
        // The worker measured 60 ms for a tiny batch: the line keeps the mean batch and
        // takes that as its fixed part, so the interactive budget grows from ~150 tokens.
        p.set_fixed_floor(0.060);
        let (fixed, per_token) = p.line().unwrap();
        assert!((fixed - 0.060).abs() < 1e-9 && (per_token - 0.178 / 140.0).abs() < 2e-5, "{fixed} {per_token}");
        let n = p.tokens_within(ms(50), 64, Overhead::INTERACTIVE).unwrap();
        assert!((580..=600).contains(&n), "{n}");
        // A floor above what batches take (measured on a busier machine) is ignored.
        p.set_fixed_floor(0.5);
        assert!(p.line().unwrap().0 < 0.010);
    }

    #[test]
    fn the_fixed_cost_stays_a_small_share() {
        let mut p = Pace::default();
        // 2 ms per batch + 0.1 ms per token: 20 ms holds 180 tokens; 5 ms would hold 30,
        // where the fixed cost is 40% of the time: 60 tokens (2 ms of 8) instead.
        for tokens in [100, 1000, 300, 2000, 50, 800] {
            p.observe(tokens, Duration::from_secs_f64(0.002 + 0.0001 * tokens as f64));
        }
        let n = p.tokens_within(ms(20), 8, Overhead::BULK).unwrap();
        assert!((179..=180).contains(&n), "{n}");
        let n = p.tokens_within(ms(5), 8, Overhead::BULK).unwrap();
        assert!((59..=60).contains(&n), "{n}");
        // 3 ms: a quarter share would need 8 ms; the stretch bound stops at 6 ms (40 tokens).
        let n = p.tokens_within(ms(3), 8, Overhead::BULK).unwrap();
        assert!((39..=40).contains(&n), "{n}");
    }

    #[test]
    fn interactive_batches_keep_the_fixed_cost_to_a_sixteenth() {
        let mut p = Pace::default();
        // 20 ms per batch + 0.35 ms per token (a 66M-parameter model on 2 cores): 50 ms
        // would hold 85 tokens, 40% of it fixed cost. A sixteenth: 320 ms, 857 tokens; a
        // quarter (bulk): 80 ms, 171 tokens.
        for tokens in [100, 900, 300, 1800, 50, 600] {
            p.observe(tokens, Duration::from_secs_f64(0.020 + 0.00035 * tokens as f64));
        }
        let n = p.tokens_within(ms(50), 64, Overhead::INTERACTIVE).unwrap();
        assert!((856..=857).contains(&n), "{n}");
        let n = p.tokens_within(ms(50), 64, Overhead::BULK).unwrap();
        assert!((170..=171).contains(&n), "{n}");
        // 25 ms: a sixteenth needs 320 ms, within sixteen times the target (400 ms).
        let n = p.tokens_within(ms(25), 64, Overhead::INTERACTIVE).unwrap();
        assert!((856..=857).contains(&n), "{n}");
        // 5 ms: sixteen times the target stops at 80 ms (171 tokens).
        let n = p.tokens_within(ms(5), 64, Overhead::INTERACTIVE).unwrap();
        assert!((171..=172).contains(&n), "{n}");
    }

    /// Bulk batches of about one size whose times barely differ (as on the 2-core box): the
    /// fit's slope is 5 µs per token where the worker's is ~135, and the budget would be
    /// over a thousand tokens; it stays at twice the batches' mean size. Work at the default
    /// priority keeps the fit's budget.
    #[test]
    fn a_bulk_budget_grows_at_most_twice_the_batches_it_was_learnt_on() {
        let mut p = Pace::default();
        for _ in 0..5 {
            p.observe(150, Duration::from_micros(20_000));
            p.observe(170, Duration::from_micros(20_100));
        }
        let wild = p.tokens_within(ms(25), 64, Overhead::INTERACTIVE).unwrap();
        assert!(wild > 1000, "the fit extrapolates: {wild}");
        let n = p.tokens_within(ms(25), 64, Overhead::BULK).unwrap();
        assert!((315..=325).contains(&n), "twice the mean size: {n}");
        // A budget learnt on short batches doubles per batch.
        let mut p = Pace::default();
        p.observe(10, ms(8));
        assert_eq!(p.tokens_within(ms(250), 64, Overhead::BULK), Some(64), "the floor");
        p.observe(64, ms(15));
        let n = p.tokens_within(ms(250), 64, Overhead::BULK).unwrap();
        assert!((75..=77).contains(&n), "{n}");
    }

    #[test]
    fn nothing_is_predicted_before_a_batch_was_timed() {
        assert_eq!(Pace::default().predict(100), None);
        assert_eq!(Pace::default().cut_at(Instant::now(), 100), None);
    }

    #[test]
    fn learns_a_fixed_cost_and_a_cost_per_token() {
        let mut p = Pace::default();
        // 2 ms per batch + 0.1 ms per token.
        for tokens in [100, 1000, 300, 2000, 50, 800] {
            p.observe(tokens, Duration::from_secs_f64(0.002 + 0.0001 * tokens as f64));
        }
        let got = p.predict(4000).unwrap().as_secs_f64();
        assert!((got - 0.402).abs() < 1e-6, "{got}");
        let got = p.predict(0).unwrap().as_secs_f64();
        assert!((got - 0.002).abs() < 1e-6, "{got}");
    }

    #[test]
    fn one_size_is_taken_as_proportional() {
        let mut p = Pace::default();
        p.observe(100, ms(10));
        assert!(near(p.predict(300), ms(30)));
        p.observe(100, ms(20));
        let got = p.predict(100).unwrap();
        assert!(got > ms(15) && got < ms(20), "recent batches weigh more: {got:?}");
    }

    #[test]
    fn follows_a_worker_that_slows_down() {
        let mut p = Pace::default();
        for _ in 0..20 {
            p.observe(100, ms(10));
            p.observe(200, ms(20));
        }
        for _ in 0..30 {
            p.observe(100, ms(40));
            p.observe(200, ms(80));
        }
        let got = p.predict(150).unwrap();
        assert!(got > ms(55) && got < ms(65), "{got:?}");
    }

    #[test]
    fn cuts_a_little_before_the_worker_is_free() {
        let mut p = Pace::default();
        p.observe(100, ms(80));
        let t0 = Instant::now();
        let since = |t: Option<Instant>| t.map(|t| t - t0);
        assert!(near(since(p.cut_at(t0, 100)), ms(70)), "an eighth early");
        assert!(near(since(p.cut_at(t0, 5)), ms(3)), "at least 1 ms early");
        assert!(near(since(p.cut_at(t0, 10_000)), ms(8000 - 25)), "at most 25 ms early");
    }
}
