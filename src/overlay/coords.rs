//! Network coordinates (Vivaldi: Dabek, Cox, Kaashoek and Morris, SIGCOMM 2004, with its
//! height vectors): each node places itself on a plane, plus a height for its access link, so
//! that the distance between two coordinates predicts the round-trip time between the nodes.
//! A node moves its own coordinate a little on every RTT sample to a link whose coordinate it
//! knows (links tell theirs at link-up). Shortcut selection uses the predictions to pick, among
//! the nodes near a drawn point, the one nearest in time, without a trial link to each.

use std::time::Duration;

/// How far one sample moves a coordinate (the paper's c_c) and how fast its error estimate
/// follows (c_e).
const MOVE_GAIN: f32 = 0.25;
const ERROR_GAIN: f32 = 0.25;
/// The relative error of a coordinate that has seen no sample, and the most it reports.
const FRESH_ERROR: f32 = 1.5;
/// The least relative error a coordinate reports (keeps the sample weights finite).
const MIN_ERROR: f32 = 0.01;
/// The least height (ms): the model needs it positive.
const MIN_HEIGHT: f32 = 0.1;
/// Samples outside (0, this] ms are not believed.
const MAX_RTT_MS: f32 = 10_000.0;
/// A coordinate is good enough to choose by once its relative error is below this.
const TRUSTED_ERROR: f32 = 0.5;
/// The wire's fixed point: tenths of a millisecond, and hundredths of relative error.
const TENTHS: f32 = 10.0;
const HUNDREDTHS: f32 = 100.0;
/// Bytes a coordinate takes on the wire.
pub const WIRE_LEN: usize = 7;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coord {
    /// Place on the plane, ms.
    pub x: f32,
    pub y: f32,
    /// What the node's own access link adds to every round trip, ms.
    pub height: f32,
    /// Relative error of the predictions (0.1: about 10 % off).
    pub error: f32,
}

impl Default for Coord {
    fn default() -> Self {
        Coord {
            x: 0.0,
            y: 0.0,
            height: MIN_HEIGHT,
            error: FRESH_ERROR,
        }
    }
}

impl Coord {
    /// The predicted round-trip time to `other`, ms.
    pub fn rtt_ms(&self, other: &Coord) -> f32 {
        (self.x - other.x).hypot(self.y - other.y) + self.height + other.height
    }

    pub fn trusted(&self) -> bool {
        self.error < TRUSTED_ERROR
    }

    /// Takes one RTT sample to a peer whose coordinate is `peer`. `nudge` (two numbers in
    /// [-1, 1)) picks the direction to move in when the two places coincide, as every fresh
    /// node's do.
    pub fn observe(&mut self, rtt: Duration, peer: &Coord, nudge: (f32, f32)) {
        let rtt = rtt.as_secs_f32() * 1000.0;
        if !(rtt > 0.0 && rtt <= MAX_RTT_MS) {
            return;
        }
        let predicted = self.rtt_ms(peer);
        let weight = self.error / (self.error + peer.error);
        let off = (predicted - rtt).abs() / rtt;
        self.error = (off * ERROR_GAIN * weight + self.error * (1.0 - ERROR_GAIN * weight))
            .clamp(MIN_ERROR, FRESH_ERROR);
        let force = MOVE_GAIN * weight * (rtt - predicted);
        let (mut dx, mut dy) = (self.x - peer.x, self.y - peer.y);
        if dx.hypot(dy) < 1e-3 {
            (dx, dy) = nudge;
        }
        // The paper's height vectors: [x, h] − [y, h'] = [x − y, h + h'], and its length is
        // |x − y| + h + h'; the sample moves us along that vector's unit.
        let norm = dx.hypot(dy) + self.height + peer.height;
        self.x += force * dx / norm;
        self.y += force * dy / norm;
        self.height = (self.height + force * (self.height + peer.height) / norm).max(MIN_HEIGHT);
    }

    /// The coordinate as the wire carries it.
    pub fn packed(&self) -> Packed {
        let fixed = |v: f32| {
            (v * TENTHS)
                .round()
                .clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16
        };
        let height = (self.height * TENTHS).round().clamp(0.0, f32::from(u16::MAX)) as u16;
        let mut b = [0u8; WIRE_LEN];
        b[0..2].copy_from_slice(&fixed(self.x).to_be_bytes());
        b[2..4].copy_from_slice(&fixed(self.y).to_be_bytes());
        b[4..6].copy_from_slice(&height.to_be_bytes());
        b[6] = (self.error * HUNDREDTHS).round().clamp(1.0, 255.0) as u8;
        Packed(b)
    }
}

/// A coordinate on the wire: x and y in tenths of a millisecond (i16), the height likewise
/// (u16), the relative error in hundredths (u8). Every byte string is a valid coordinate (a
/// zero error or height is raised to the least).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packed(pub [u8; WIRE_LEN]);

impl Packed {
    pub fn coord(&self) -> Coord {
        let b = self.0;
        let tenths = |hi: u8, lo: u8| f32::from(i16::from_be_bytes([hi, lo])) / TENTHS;
        Coord {
            x: tenths(b[0], b[1]),
            y: tenths(b[2], b[3]),
            height: (f32::from(u16::from_be_bytes([b[4], b[5]])) / TENTHS).max(MIN_HEIGHT),
            error: (f32::from(b[6]) / HUNDREDTHS).clamp(MIN_ERROR, FRESH_ERROR),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nodes at known places on a plane (RTT = distance + 2 × 5 ms access), each sampling
    /// random others: the coordinates come to predict the RTTs within a few percent.
    #[test]
    fn coordinates_learn_a_planar_network() {
        let places: Vec<(f32, f32)> = (0..40)
            .map(|i| ((i * 37 % 100) as f32, (i * 61 % 100) as f32))
            .collect();
        let rtt = |a: usize, b: usize| {
            let (p, q) = (places[a], places[b]);
            (p.0 - q.0).hypot(p.1 - q.1) + 10.0
        };
        let mut coords = vec![Coord::default(); places.len()];
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        for _ in 0..20_000 {
            let (a, b) = (next() % places.len(), next() % places.len());
            if a == b {
                continue;
            }
            let nudge = (
                (next() % 200) as f32 / 100.0 - 1.0,
                (next() % 200) as f32 / 100.0 - 1.0,
            );
            let peer = coords[b];
            coords[a].observe(Duration::from_secs_f32(rtt(a, b) / 1000.0), &peer, nudge);
        }
        let mut off: Vec<f32> = Vec::new();
        for a in 0..places.len() {
            for b in a + 1..places.len() {
                off.push((coords[a].rtt_ms(&coords[b]) - rtt(a, b)).abs() / rtt(a, b));
            }
        }
        off.sort_by(|x, y| x.total_cmp(y));
        let median = off[off.len() / 2];
        assert!(median < 0.05, "median relative error {median}");
        assert!(coords.iter().all(Coord::trusted));
    }

    #[test]
    fn samples_out_of_range_change_nothing() {
        let mut c = Coord::default();
        let peer = Coord {
            x: 30.0,
            ..Coord::default()
        };
        for rtt in [Duration::ZERO, Duration::from_secs(60)] {
            c.observe(rtt, &peer, (1.0, 0.0));
            assert_eq!(c, Coord::default());
        }
    }

    #[test]
    fn a_coordinate_survives_the_wire_to_a_tenth_of_a_millisecond() {
        let c = Coord {
            x: -123.44,
            y: 56.78,
            height: 4.04,
            error: 0.37,
        };
        let back = c.packed().coord();
        assert!((back.x - c.x).abs() <= 0.05 && (back.y - c.y).abs() <= 0.05);
        assert!((back.height - c.height).abs() <= 0.05 && (back.error - c.error).abs() <= 0.005);
        let zero = Packed([0; WIRE_LEN]).coord();
        assert!(
            zero.height > 0.0 && zero.error > 0.0,
            "raised to the least: {zero:?}"
        );
    }
}
