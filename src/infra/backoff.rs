//! Exponential backoff, the one way tbot spaces out retries: the service
//! restarts (`supervisor`), an identity output's retries, `tbot wait`'s polls.

use std::time::Duration;

/// `first`, doubling, never more than `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay after `failures` failures in a row (1 for the first):
    /// `first × 2^(failures − 1)`, at most `max`.
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.first.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// The delay after `previous` (None: there was none, so `first`).
    pub fn after(&self, previous: Option<Duration>) -> Duration {
        match previous {
            Some(d) => d.saturating_mul(2).min(self.max),
            None => self.first.min(self.max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_either_way() {
        let b = Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        let by_count: Vec<u64> = (1..=9).map(|n| b.delay(n).as_secs()).collect();
        let mut d = None;
        let by_previous: Vec<u64> = (1..=9)
            .map(|_| {
                d = Some(b.after(d));
                d.unwrap().as_secs()
            })
            .collect();
        assert_eq!(by_count, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(by_previous, by_count);
        assert_eq!(b.delay(u32::MAX), b.max);
    }
}
