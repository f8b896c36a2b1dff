//! Per-key rate limits: requests and tokens per minute, as token buckets.
//!
//! A bucket holds up to a minute's allowance and refills continuously, so
//! a key may burst its whole minute at once and then goes at the steady
//! rate. Requests take one from the request bucket when they arrive.
//! Tokens are known only once a response is over, so the token bucket is
//! charged afterwards and may go negative; while it is, the key's requests
//! are refused until it refills above zero (what OpenAI's TPM limits do).
//! Pure: time is an input.

use std::time::{Duration, Instant};

/// A token bucket refilling `per_minute` units a minute, holding at most
/// that many.
#[derive(Clone, Debug)]
pub(crate) struct Bucket {
    per_minute: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn new(per_minute: u64, now: Instant) -> Self {
        Self {
            per_minute: per_minute as f64,
            level: per_minute as f64,
            at: now,
        }
    }

    /// Adjusts to a changed limit, keeping the level (capped).
    pub(crate) fn set_rate(&mut self, per_minute: u64, now: Instant) {
        self.refill(now);
        self.per_minute = per_minute as f64;
        self.level = self.level.min(self.per_minute);
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * self.per_minute / 60.0).min(self.per_minute);
        self.at = self.at.max(now);
    }

    /// Takes `n` if the bucket holds that many; otherwise how long until
    /// it will.
    pub(crate) fn take(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.level >= n {
            self.level -= n;
            Ok(())
        } else {
            Err(self.time_to(n))
        }
    }

    /// `Ok` while the level is above zero; otherwise how long until it is.
    pub(crate) fn check_positive(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.level > 0.0 {
            Ok(())
        } else {
            // Just above zero.
            Err(self.time_to(f64::EPSILON.max(self.per_minute / 6000.0)))
        }
    }

    /// Charges `n`, going negative if need be.
    pub(crate) fn charge(&mut self, n: f64, now: Instant) {
        self.refill(now);
        self.level -= n;
    }

    fn time_to(&self, level: f64) -> Duration {
        if self.per_minute <= 0.0 {
            return Duration::from_secs(60);
        }
        let missing = (level - self.level).max(0.0);
        Duration::from_secs_f64(missing * 60.0 / self.per_minute)
    }
}

/// Which limit a request ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limit {
    Requests,
    Tokens,
}

/// The buckets of one key.
#[derive(Clone, Debug, Default)]
pub(crate) struct KeyLimits {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

impl KeyLimits {
    /// Admits a request under `rpm`/`tpm` (None: unlimited), taking one
    /// request; or names the limit and how long to wait.
    pub(crate) fn admit(
        &mut self,
        rpm: Option<u32>,
        tpm: Option<u64>,
        now: Instant,
    ) -> Result<(), (Limit, Duration)> {
        sync(&mut self.tokens, tpm, now);
        sync(&mut self.requests, rpm.map(u64::from), now);
        if let Some(tokens) = &mut self.tokens {
            tokens
                .check_positive(now)
                .map_err(|wait| (Limit::Tokens, wait))?;
        }
        if let Some(requests) = &mut self.requests {
            requests
                .take(1.0, now)
                .map_err(|wait| (Limit::Requests, wait))?;
        }
        Ok(())
    }

    /// Charges the tokens a finished request used.
    pub(crate) fn charge_tokens(&mut self, tokens: u64, now: Instant) {
        if let Some(bucket) = &mut self.tokens {
            bucket.charge(tokens as f64, now);
        }
    }
}

/// Creates, adjusts or drops a bucket to match `limit`.
fn sync(bucket: &mut Option<Bucket>, limit: Option<u64>, now: Instant) {
    match (bucket.as_mut(), limit) {
        (_, None) => *bucket = None,
        (None, Some(rate)) => *bucket = Some(Bucket::new(rate, now)),
        (Some(existing), Some(rate)) if existing.per_minute != rate as f64 => {
            existing.set_rate(rate, now)
        }
        (Some(_), Some(_)) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_of_requests_may_burst_then_the_steady_rate_applies() {
        let t0 = Instant::now();
        let mut limits = KeyLimits::default();
        for _ in 0..3 {
            assert_eq!(limits.admit(Some(3), None, t0), Ok(()));
        }
        let (limit, wait) = limits.admit(Some(3), None, t0).unwrap_err();
        assert_eq!(limit, Limit::Requests);
        // 3 a minute: one every 20 s.
        assert_eq!(wait, Duration::from_secs(20));
        assert!(
            limits
                .admit(Some(3), None, t0 + Duration::from_secs(19))
                .is_err()
        );
        assert_eq!(
            limits.admit(Some(3), None, t0 + Duration::from_secs(20)),
            Ok(())
        );
    }

    #[test]
    fn tokens_are_charged_after_the_fact_and_block_until_repaid() {
        let t0 = Instant::now();
        let mut limits = KeyLimits::default();
        assert_eq!(limits.admit(None, Some(600), t0), Ok(()));
        // One request used 900 tokens: 300 in debt.
        limits.charge_tokens(900, t0);
        let (limit, wait) = limits.admit(None, Some(600), t0).unwrap_err();
        assert_eq!(limit, Limit::Tokens);
        // 600 a minute = 10 a second: 30 s to repay, a hair more to be above 0.
        assert!(
            wait >= Duration::from_secs(30) && wait < Duration::from_secs(31),
            "{wait:?}"
        );
        assert!(
            limits
                .admit(None, Some(600), t0 + Duration::from_secs(29))
                .is_err()
        );
        assert_eq!(
            limits.admit(None, Some(600), t0 + Duration::from_secs(31)),
            Ok(())
        );
    }

    #[test]
    fn a_refused_token_check_takes_no_request() {
        let t0 = Instant::now();
        let mut limits = KeyLimits::default();
        limits.admit(Some(1), Some(10), t0).unwrap();
        limits.charge_tokens(20, t0);
        assert_eq!(
            limits.admit(Some(1), Some(10), t0).unwrap_err().0,
            Limit::Tokens
        );
        // After the tokens are repaid, the request bucket has refilled too
        // and was not drained by the refused attempts.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(limits.admit(Some(1), Some(10), later), Ok(()));
    }

    #[test]
    fn changed_limits_apply_and_removed_limits_lift() {
        let t0 = Instant::now();
        let mut limits = KeyLimits::default();
        limits.admit(Some(1), None, t0).unwrap();
        assert!(limits.admit(Some(1), None, t0).is_err());
        // Raising the limit keeps the (empty) level but refills faster.
        assert!(limits.admit(Some(60), None, t0).is_err());
        assert_eq!(
            limits.admit(Some(60), None, t0 + Duration::from_secs(1)),
            Ok(())
        );
        // No limit: always admitted.
        for _ in 0..100 {
            assert_eq!(limits.admit(None, None, t0), Ok(()));
        }
    }

    #[test]
    fn unlimited_keys_never_wait() {
        let t0 = Instant::now();
        let mut limits = KeyLimits::default();
        limits.charge_tokens(1_000_000, t0);
        assert_eq!(limits.admit(None, None, t0), Ok(()));
    }
}
