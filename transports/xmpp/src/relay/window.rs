//! Round-trip estimation and the delay-based send window of one relay sender.
//!
//! XMPP servers shape clients by not reading their socket (Prosody's `mod_limits`), so loss
//! never signals congestion: a growing queue does. The window therefore reacts to queueing
//! delay (RTT above the smallest RTT seen recently), in the spirit of TCP Vegas / LEDBAT, with
//! a target of a quarter of the base RTT (1 to 25 ms):
//! 1. every acknowledgement with an RTT sample updates SRTT/RTTVAR (RFC 6298) and the base RTT;
//! 2. if the sample's queueing delay is within the target, the window grows (slow start below
//!    `ssthresh`, then additively);
//! 3. otherwise it shrinks by a quarter, at most once per smoothed RTT;
//! 4. a retransmission timeout collapses it to the minimum.

use std::time::{Duration, Instant};

/// Smallest retransmission timeout. Relay stanzas ride on TCP, so a timeout means a stalled
/// or reset stream, never a single lost packet; a short RTO would only add duplicates.
pub const MIN_RTO: Duration = Duration::from_secs(1);
/// Largest retransmission timeout.
pub const MAX_RTO: Duration = Duration::from_secs(60);
/// Queueing delay tolerated before the window shrinks: a quarter of the base RTT, within
/// these bounds. It must stay small on fast paths: once stanzas back up in Prosody's socket it
/// reads 8 KiB per event loop tick (≥ 1 ms), and throughput falls off a cliff (measured on
/// loopback: 10 MB/s with a 1-2 ms target, 3.5 MB/s with 25 ms; see docs/BENCHMARKS.md).
pub const MIN_TARGET_DELAY: Duration = Duration::from_millis(1);
pub const MAX_TARGET_DELAY: Duration = Duration::from_millis(25);
/// How long a base-RTT sample stays valid before it must be seen again.
const BASE_RTT_PERIOD: Duration = Duration::from_secs(30);

/// RFC 6298 round-trip estimator.
#[derive(Debug, Clone, Default)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
}

impl RttEstimator {
    pub fn on_sample(&mut self, sample: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(sample);
                self.rttvar = sample / 2;
            }
            Some(srtt) => {
                let err = srtt.abs_diff(sample);
                self.rttvar = (self.rttvar * 3 + err) / 4;
                self.srtt = Some((srtt * 7 + sample) / 8);
            }
        }
    }

    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The retransmission timeout: SRTT + 4·RTTVAR, clamped to [`MIN_RTO`, `MAX_RTO`].
    pub fn rto(&self) -> Duration {
        match self.srtt {
            None => MIN_RTO,
            Some(srtt) => (srtt + self.rttvar * 4).clamp(MIN_RTO, MAX_RTO),
        }
    }
}

/// The delay-based congestion window, in wire bytes.
#[derive(Debug, Clone)]
pub struct Window {
    cwnd: usize,
    ssthresh: usize,
    min: usize,
    max: usize,
    /// Smallest RTT of the current period and of the previous one.
    base: [Option<Duration>; 2],
    period_start: Option<Instant>,
    last_decrease: Option<Instant>,
}

impl Window {
    /// `min` is one full fragment so that a window never blocks the largest stanza.
    pub fn new(initial: usize, min: usize, max: usize) -> Self {
        Self {
            cwnd: initial.clamp(min, max),
            ssthresh: max,
            min,
            max,
            base: [None, None],
            period_start: None,
            last_decrease: None,
        }
    }

    pub fn cwnd(&self) -> usize {
        self.cwnd
    }

    pub fn base_rtt(&self) -> Option<Duration> {
        match self.base {
            [Some(a), Some(b)] => Some(a.min(b)),
            [a, b] => a.or(b),
        }
    }

    pub fn on_ack(&mut self, now: Instant, sample: Option<Duration>, acked: usize, srtt: Duration) {
        let Some(sample) = sample else {
            return;
        };
        self.update_base(now, sample);
        let base = self.base_rtt().unwrap_or(sample);
        let target = (base / 4).clamp(MIN_TARGET_DELAY, MAX_TARGET_DELAY);
        if sample.saturating_sub(base) <= target {
            if self.cwnd < self.ssthresh {
                self.cwnd += acked;
            } else {
                self.cwnd += (acked * self.min / self.cwnd).max(1);
            }
            self.cwnd = self.cwnd.min(self.max);
        } else if self.last_decrease.is_none_or(|t| now.duration_since(t) >= srtt) {
            self.cwnd = (self.cwnd * 3 / 4).max(self.min);
            self.ssthresh = self.cwnd;
            self.last_decrease = Some(now);
        }
    }

    pub fn on_timeout(&mut self, now: Instant) {
        self.ssthresh = (self.cwnd / 2).max(self.min);
        self.cwnd = self.min;
        self.last_decrease = Some(now);
    }

    fn update_base(&mut self, now: Instant, sample: Duration) {
        let start = *self.period_start.get_or_insert(now);
        if now.duration_since(start) >= BASE_RTT_PERIOD {
            self.base = [self.base[1], None];
            self.period_start = Some(now);
        }
        let current = &mut self.base[1];
        *current = Some(current.map_or(sample, |b| b.min(sample)));
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests need one real Instant as the virtual epoch
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn rto_follows_samples_and_is_clamped() {
        let mut r = RttEstimator::default();
        assert_eq!(r.rto(), MIN_RTO);
        r.on_sample(MS * 2);
        assert_eq!(r.rto(), MIN_RTO);
        for _ in 0..20 {
            r.on_sample(Duration::from_secs(2));
        }
        assert!(r.rto() >= Duration::from_secs(2) && r.rto() < Duration::from_secs(4));
        r.on_sample(Duration::from_secs(600));
        assert_eq!(r.rto(), MAX_RTO);
    }

    #[test]
    fn grows_without_queueing_and_shrinks_with_it() {
        let t0 = Instant::now();
        let mut w = Window::new(32_000, 16_000, 1_000_000);
        for i in 0..10 {
            w.on_ack(t0 + MS * i, Some(MS * 2), 16_000, MS * 2);
        }
        let grown = w.cwnd();
        assert!(grown > 32_000, "window grew to {grown}");
        // queueing delay far above the target: shrink, but at most once per srtt
        w.on_ack(t0 + MS * 20, Some(MS * 500), 16_000, MS * 500);
        let once = w.cwnd();
        assert_eq!(once, grown * 3 / 4);
        w.on_ack(t0 + MS * 21, Some(MS * 500), 16_000, MS * 500);
        assert_eq!(w.cwnd(), once);
        for i in 0..40u32 {
            w.on_ack(
                t0 + Duration::from_secs(1 + u64::from(i)),
                Some(MS * 900),
                16_000,
                MS * 900,
            );
        }
        assert_eq!(w.cwnd(), 16_000, "never below one fragment");
    }

    #[test]
    fn timeout_collapses_to_minimum() {
        let t0 = Instant::now();
        let mut w = Window::new(64_000, 16_000, 1_000_000);
        w.on_timeout(t0);
        assert_eq!(w.cwnd(), 16_000);
    }
}
