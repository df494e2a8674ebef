//! Durable job rules: retry schedule with exponential backoff and jitter, and the outcome of a run.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How a failed attempt is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all (the first run counts); after the last one the job is dead-lettered.
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub base: Duration,
    /// Upper bound of any delay.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 12,
            base: Duration::from_secs(2),
            cap: Duration::from_secs(600),
        }
    }
}

impl RetryPolicy {
    /// Delay after `attempts` failed attempts, with "equal jitter": half fixed, half random.
    /// `unit` is a uniformly random number in `[0, 1)` supplied by the caller.
    #[must_use]
    pub fn delay_after(&self, attempts: u32, unit: f64) -> Duration {
        let exp = attempts.saturating_sub(1).min(30);
        let raw = self.base.saturating_mul(1u32 << exp.min(20)).min(self.cap);
        let half = raw / 2;
        let unit = unit.clamp(0.0, 0.999_999);
        half + half.mul_f64(unit)
    }

    /// Whether a job that has now failed `attempts` times may run again.
    #[must_use]
    pub const fn may_retry(&self, attempts: u32) -> bool {
        attempts < self.max_attempts
    }
}

/// What a job handler reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Done,
    /// Done, and the handler already deleted the job in its own final transaction (one commit
    /// fewer per job).
    Settled,
    /// Try again later (after the policy's delay, or at least `after` when given).
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// Will never succeed: dead-letter now, whatever attempts remain.
    Permanent {
        error: String,
    },
}

/// A job kind name: lower-case dotted words (`webhook.deliver`, `epic.disassociate`).
#[must_use]
pub fn is_valid_kind(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= 64
        && kind.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_within_jitter_bounds() {
        let p = RetryPolicy {
            max_attempts: 10,
            base: Duration::from_secs(2),
            cap: Duration::from_secs(600),
        };
        assert_eq!(p.delay_after(1, 0.0), Duration::from_secs(1));
        assert!(p.delay_after(1, 0.99) < Duration::from_secs(2));
        assert_eq!(p.delay_after(3, 0.0), Duration::from_secs(4));
        assert!(p.delay_after(3, 0.5) > Duration::from_secs(4));
    }

    #[test]
    fn delays_never_exceed_the_cap() {
        let p = RetryPolicy::default();
        for attempt in 1..100 {
            assert!(p.delay_after(attempt, 0.999) <= p.cap);
        }
    }

    #[test]
    fn the_last_attempt_is_not_retried() {
        let p = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        assert!(p.may_retry(2));
        assert!(!p.may_retry(3));
    }

    #[test]
    fn kinds_are_dotted_lower_case_words() {
        assert!(is_valid_kind("webhook.deliver"));
        assert!(is_valid_kind("epic.disassociate_device"));
        assert!(!is_valid_kind("Webhook"));
        assert!(!is_valid_kind("a..b"));
        assert!(!is_valid_kind(""));
    }
}
