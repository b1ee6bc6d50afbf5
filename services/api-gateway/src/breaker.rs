//! A per-upstream circuit breaker.
//!
//! * **Closed**: requests flow; `threshold` consecutive failures open it.
//! * **Open**: requests are refused at once (503 + `Retry-After`) until the
//!   cool-down has passed.
//! * **Half-open**: exactly one probe request is let through; its success
//!   closes the breaker, its failure re-opens it for another cool-down. Other
//!   requests are refused while the probe is in flight.
//!
//! Outcomes of requests admitted in an earlier state are ignored once the state
//! has moved on (a late success from before the breaker opened does not close
//! it). Time is passed in, so the state machine is tested without sleeping.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// Gauge value exported in /metrics (0 closed, 1 open, 2 half-open).
    pub fn as_gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_in_flight: bool },
}

#[derive(Debug)]
struct Shared {
    inner: Inner,
    /// Bumped on each state change, so stale permits are recognised.
    generation: u64,
}

/// A permission to send one request; report its outcome with
/// [`Breaker::record`]. Dropping a probe permit without an outcome frees the
/// probe slot again.
#[derive(Debug)]
#[must_use]
pub struct Permit {
    generation: u64,
    probe: bool,
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    shared: Mutex<Shared>,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            shared: Mutex::new(Shared {
                inner: Inner::Closed { failures: 0 },
                generation: 0,
            }),
        }
    }

    pub fn cooldown(&self) -> Duration {
        self.cooldown
    }

    /// The state as seen at `now` (an expired Open reads as HalfOpen).
    pub fn state(&self, now: Instant) -> State {
        let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        match s.inner {
            Inner::Closed { .. } => State::Closed,
            Inner::Open { until } if now < until => State::Open,
            Inner::Open { .. } | Inner::HalfOpen { .. } => State::HalfOpen,
        }
    }

    /// Admits a request, or refuses it with how long to wait before retrying.
    pub fn try_acquire(&self, now: Instant) -> Result<Permit, Duration> {
        let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        match s.inner {
            Inner::Closed { .. } => Ok(Permit {
                generation: s.generation,
                probe: false,
            }),
            Inner::Open { until } if now < until => Err(until - now),
            Inner::Open { .. }
            | Inner::HalfOpen {
                probe_in_flight: false,
            } => {
                s.inner = Inner::HalfOpen {
                    probe_in_flight: true,
                };
                s.generation += 1;
                Ok(Permit {
                    generation: s.generation,
                    probe: true,
                })
            }
            Inner::HalfOpen {
                probe_in_flight: true,
            } => Err(Duration::from_secs(1).min(self.cooldown.max(Duration::from_millis(1)))),
        }
    }

    /// Records the outcome of an admitted request.
    pub fn record(&self, permit: Permit, success: bool, now: Instant) {
        let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let generation = permit.generation;
        let probe = permit.probe;
        if generation != s.generation {
            return; // admitted under an earlier state: no say any more
        }
        match (&mut s.inner, probe) {
            (Inner::Closed { failures }, false) => {
                if success {
                    *failures = 0;
                } else {
                    *failures += 1;
                    if *failures >= self.threshold {
                        s.inner = Inner::Open {
                            until: now + self.cooldown,
                        };
                        s.generation += 1;
                    }
                }
            }
            (Inner::HalfOpen { .. }, true) => {
                s.inner = if success {
                    Inner::Closed { failures: 0 }
                } else {
                    Inner::Open {
                        until: now + self.cooldown,
                    }
                };
                s.generation += 1;
            }
            _ => {}
        }
    }

    fn release_probe(&self, generation: u64) {
        let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if s.generation == generation {
            if let Inner::HalfOpen { probe_in_flight } = &mut s.inner {
                *probe_in_flight = false;
            }
        }
    }
}

/// Holds a permit and the breaker so an abandoned probe (client gone, request
/// cancelled) frees the half-open slot.
pub struct Guard<'a> {
    breaker: &'a Breaker,
    permit: Option<Permit>,
}

impl<'a> Guard<'a> {
    pub fn new(breaker: &'a Breaker, permit: Permit) -> Self {
        Self {
            breaker,
            permit: Some(permit),
        }
    }

    pub fn record(mut self, success: bool) {
        if let Some(p) = self.permit.take() {
            self.breaker.record(p, success, Instant::now());
        }
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            if p.probe {
                self.breaker.release_probe(p.generation);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CD: Duration = Duration::from_secs(5);

    fn fail(b: &Breaker, now: Instant) {
        let p = b.try_acquire(now).expect("admitted");
        b.record(p, false, now);
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = Breaker::new(3, CD);
        let t = Instant::now();
        fail(&b, t);
        fail(&b, t);
        let p = b.try_acquire(t).unwrap();
        b.record(p, true, t); // resets the count
        fail(&b, t);
        fail(&b, t);
        assert_eq!(b.state(t), State::Closed);
        fail(&b, t);
        assert_eq!(b.state(t), State::Open);
        let wait = b.try_acquire(t + Duration::from_secs(2)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(3));
    }

    #[test]
    fn half_open_admits_one_probe_and_closes_on_success() {
        let b = Breaker::new(1, CD);
        let t = Instant::now();
        fail(&b, t);
        assert!(b.try_acquire(t + Duration::from_secs(4)).is_err());
        let later = t + CD;
        assert_eq!(b.state(later), State::HalfOpen);
        let probe = b.try_acquire(later).expect("probe admitted");
        assert!(b.try_acquire(later).is_err(), "only one probe");
        b.record(probe, true, later);
        assert_eq!(b.state(later), State::Closed);
        assert!(b.try_acquire(later).is_ok());
    }

    #[test]
    fn failed_probe_reopens_for_another_cooldown() {
        let b = Breaker::new(1, CD);
        let t = Instant::now();
        fail(&b, t);
        let later = t + CD;
        let probe = b.try_acquire(later).unwrap();
        b.record(probe, false, later);
        assert_eq!(b.state(later), State::Open);
        assert_eq!(b.try_acquire(later).unwrap_err(), CD);
    }

    #[test]
    fn stale_outcomes_are_ignored() {
        let b = Breaker::new(2, CD);
        let t = Instant::now();
        let slow = b.try_acquire(t).unwrap();
        fail(&b, t);
        fail(&b, t);
        assert_eq!(b.state(t), State::Open);
        b.record(slow, true, t); // admitted while closed; must not close it
        assert_eq!(b.state(t), State::Open);
    }

    #[test]
    fn abandoned_probe_frees_the_slot() {
        let b = Breaker::new(1, CD);
        let t = Instant::now();
        fail(&b, t);
        let later = t + CD;
        {
            let _g = Guard::new(&b, b.try_acquire(later).unwrap());
        }
        let probe = b.try_acquire(later).expect("slot freed");
        b.record(probe, true, later);
        assert_eq!(b.state(later), State::Closed);
    }

    #[test]
    fn gauge_values() {
        assert_eq!(State::Closed.as_gauge(), 0);
        assert_eq!(State::Open.as_gauge(), 1);
        assert_eq!(State::HalfOpen.as_gauge(), 2);
    }
}
