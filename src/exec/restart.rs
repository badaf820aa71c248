//! Restart decisions and backoff: whether an ended attempt is retried, and after how long.
//!
//! Delays grow exponentially from `initial`, are capped at `max`, and are jittered by
//! ±`jitter` (a fraction) so components that failed together do not retry in lockstep. The
//! attempt counter resets when a service stayed up for `reset_after`. Pure functions plus a
//! small seeded generator: no clocks are read here.

use std::time::Duration;

use crate::config::{Backoff, Kind, RestartMode};

/// Whether an attempt that ended this way is started again (budget aside).
///
/// `always` restarts a service whatever its exit; for a task it means the same as
/// `on-failure`, because a task that completed is done.
pub fn wants_restart(policy: RestartMode, kind: Kind, failed: bool) -> bool {
    match policy {
        RestartMode::Never => false,
        RestartMode::OnFailure => failed,
        RestartMode::Always => failed || kind == Kind::Service,
    }
}

/// The delay before attempt `next_attempt` (2 or more): `initial · 2^(next_attempt − 2)`,
/// capped at `max`, then jittered by a factor in `[1 − jitter, 1 + jitter]` and capped again.
pub fn delay(backoff: &Backoff, next_attempt: u32, rng: &mut Rng) -> Duration {
    let exponent = next_attempt.saturating_sub(2).min(62);
    let base = backoff
        .initial
        .checked_mul(1u32 << exponent.min(31))
        .unwrap_or(backoff.max)
        .min(backoff.max);
    let jitter = backoff.jitter.clamp(0.0, 1.0);
    if jitter == 0.0 || base.is_zero() {
        return base;
    }
    let factor = 1.0 + jitter * (2.0 * rng.unit() - 1.0);
    base.mul_f64(factor).min(backoff.max)
}

/// A small xorshift generator for jitter (no need for cryptographic randomness, nor for a
/// dependency): seeded from the clock and pid in production, fixed in tests.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // Zero is xorshift's fixed point.
        Self(seed | 1)
    }

    /// Seeded from the wall clock and the process id.
    pub fn from_entropy() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self::new(nanos ^ (u64::from(std::process::id()) << 32))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A uniform number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(jitter: f64) -> Backoff {
        Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
            jitter,
            reset_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn delays_double_and_are_capped() {
        let mut rng = Rng::new(7);
        let b = backoff(0.0);
        let delays: Vec<u128> = (2..=8)
            .map(|n| delay(&b, n, &mut rng).as_millis())
            .collect();
        assert_eq!(delays, vec![200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(delay(&b, u32::MAX, &mut rng), Duration::from_secs(5));
    }

    #[test]
    fn jitter_stays_within_its_fraction_and_varies() {
        let mut rng = Rng::new(42);
        let b = backoff(0.2);
        let samples: Vec<Duration> = (0..200).map(|_| delay(&b, 3, &mut rng)).collect();
        for d in &samples {
            assert!((320..=480).contains(&d.as_millis()), "{d:?}");
        }
        let distinct: std::collections::BTreeSet<_> = samples.iter().collect();
        assert!(distinct.len() > 50, "jitter should spread retries");
        // Jitter never pushes a delay over the cap.
        for _ in 0..100 {
            assert!(delay(&b, 30, &mut rng) <= Duration::from_secs(5));
        }
    }

    #[test]
    fn policies() {
        use RestartMode::*;
        assert!(!wants_restart(Never, Kind::Service, true));
        assert!(wants_restart(OnFailure, Kind::Service, true));
        assert!(!wants_restart(OnFailure, Kind::Service, false));
        assert!(wants_restart(Always, Kind::Service, false));
        assert!(!wants_restart(Always, Kind::Task, false));
        assert!(wants_restart(Always, Kind::Task, true));
    }
}
