//! Ring addresses: 160-bit positions on a ring of size 2^160, with the arithmetic the ring needs
//! (wrapping add/sub, clockwise offsets, ring distance) and a float view for estimates.

use std::fmt;

use crate::identity::NodeId;

/// Ring distance between two address prefixes (see [`RingAddr::prefix`]).
pub fn prefix_distance(a: u64, b: u64) -> u64 {
    let d = a.wrapping_sub(b);
    d.min(d.wrapping_neg())
}

/// A position on the ring. Ordered as an unsigned 160-bit integer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RingAddr {
    // Three limbs rather than u32 + u128: 24 bytes with 8-byte alignment instead of 32 (a
    // 100,000-node simulation holds millions of addresses). Field order keeps `Ord` right.
    hi: u32,
    mid: u64,
    lo: u64,
}

/// 2^128 as a float, to view addresses as reals.
const TWO_128: f64 = 340_282_366_920_938_463_463_374_607_431_768_211_456.0;
/// The ring size 2^160 as a float.
pub const RING_SIZE: f64 = TWO_128 * 4_294_967_296.0;

impl RingAddr {
    pub const ZERO: RingAddr = RingAddr::new(0, 0);
    /// Half the ring: the largest possible distance.
    pub const HALF: RingAddr = RingAddr::new(1 << 31, 0);

    const fn new(hi: u32, low: u128) -> RingAddr {
        RingAddr {
            hi,
            mid: (low >> 64) as u64,
            lo: low as u64,
        }
    }

    const fn low(self) -> u128 {
        ((self.mid as u128) << 64) | self.lo as u128
    }

    pub fn from_bytes(bytes: [u8; 20]) -> Self {
        let hi = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let mut low = [0u8; 16];
        low.copy_from_slice(&bytes[4..]);
        RingAddr::new(hi, u128::from_be_bytes(low))
    }

    pub fn to_bytes(self) -> [u8; 20] {
        let mut out = [0u8; 20];
        out[..4].copy_from_slice(&self.hi.to_be_bytes());
        out[4..].copy_from_slice(&self.low().to_be_bytes());
        out
    }

    /// The top 64 bits: plenty to tell nodes apart when choosing a route (a ring would need
    /// billions of nodes before neighbours shared them), at 8 bytes instead of 20.
    pub fn prefix(self) -> u64 {
        (u64::from(self.hi) << 32) | (self.mid >> 32)
    }

    pub fn wrapping_add(self, other: RingAddr) -> RingAddr {
        let (low, carry) = self.low().overflowing_add(other.low());
        RingAddr::new(self.hi.wrapping_add(other.hi).wrapping_add(carry as u32), low)
    }

    pub fn wrapping_sub(self, other: RingAddr) -> RingAddr {
        let (low, borrow) = self.low().overflowing_sub(other.low());
        RingAddr::new(self.hi.wrapping_sub(other.hi).wrapping_sub(borrow as u32), low)
    }

    /// How far `to` lies clockwise from `self`.
    pub fn offset_to(self, to: RingAddr) -> RingAddr {
        to.wrapping_sub(self)
    }

    /// Ring distance: min(|x−y|, 2^160−|x−y|).
    pub fn distance(self, other: RingAddr) -> RingAddr {
        other.wrapping_sub(self).min(self.wrapping_sub(other))
    }

    /// Whether `self` lies in the clockwise half-open range [start, end). `start == end` is the
    /// whole ring.
    pub fn in_range(self, start: RingAddr, end: RingAddr) -> bool {
        start == end || start.offset_to(self) < start.offset_to(end)
    }

    pub fn as_f64(self) -> f64 {
        self.hi as f64 * TWO_128 + self.low() as f64
    }

    /// The address at `x` (0 ≤ x < 2^160, rounded); out-of-range values saturate.
    pub fn from_f64(x: f64) -> RingAddr {
        let x = x.clamp(0.0, RING_SIZE - 1.0);
        let hi = (x / TWO_128).floor();
        let low = x - hi * TWO_128;
        RingAddr::new(hi as u32, low.max(0.0) as u128)
    }

    /// `i`·2^160/`n`: the offset of the `i`-th of `n` evenly spaced points.
    pub fn fraction(i: u32, n: u32) -> RingAddr {
        assert!(n > 0, "fraction of zero parts");
        // 2^160·i/n as (2^32·i/n)·2^128 plus the remainder spread over the low 128 bits.
        let whole = (u64::from(i) << 32) / u64::from(n);
        let rem = (u64::from(i) << 32) % u64::from(n);
        let (n, scaled) = (u128::from(n), u128::from(rem) << 96);
        let low = ((scaled / n) << 32) | (((scaled % n) << 32) / n);
        RingAddr::new(whole as u32, low)
    }
}

impl From<NodeId> for RingAddr {
    fn from(id: NodeId) -> Self {
        RingAddr::from_bytes(id.0)
    }
}

impl From<RingAddr> for NodeId {
    fn from(addr: RingAddr) -> Self {
        NodeId(addr.to_bytes())
    }
}

impl fmt::Display for RingAddr {
    /// The first 8 hex digits: enough to tell nodes apart in logs and tables.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.hi)
    }
}

impl fmt::Debug for RingAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}{:032x}", self.hi, self.low())
    }
}

/// Tests' shorthand: the address whose 20 bytes are all `byte`.
#[cfg(test)]
pub(crate) fn filled(byte: u8) -> RingAddr {
    RingAddr::from_bytes([byte; 20])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr() -> impl Strategy<Value = RingAddr> {
        any::<[u8; 20]>().prop_map(RingAddr::from_bytes)
    }

    proptest! {
        #[test]
        fn distance_is_symmetric(a in addr(), b in addr()) {
            prop_assert_eq!(a.distance(b), b.distance(a));
            prop_assert!(a.distance(b) <= RingAddr::HALF);
            prop_assert_eq!(a.distance(a), RingAddr::ZERO);
        }

        #[test]
        fn distance_obeys_triangle_inequality(a in addr(), b in addr(), c in addr()) {
            // Compare as floats' exact source: sums of two 160-bit values fit in 161 bits, so
            // compare with an explicit carry.
            let ab = a.distance(b);
            let bc = b.distance(c);
            let sum = ab.wrapping_add(bc);
            let overflowed = sum < ab;
            prop_assert!(overflowed || a.distance(c) <= sum);
        }

        #[test]
        fn add_and_sub_round_trip(a in addr(), b in addr()) {
            prop_assert_eq!(a.wrapping_add(b).wrapping_sub(b), a);
            prop_assert_eq!(RingAddr::from_bytes(a.to_bytes()), a);
        }

        #[test]
        fn a_prefix_is_the_first_eight_bytes(a in addr(), b in addr()) {
            let bytes = a.to_bytes();
            prop_assert_eq!(&a.prefix().to_be_bytes()[..], &bytes[..8]);
            // Ring distance between prefixes is the distance's own top 64 bits, give or take one.
            let whole = a.distance(b).prefix();
            let approx = prefix_distance(a.prefix(), b.prefix());
            prop_assert!(whole.abs_diff(approx) <= 1, "{} vs {}", whole, approx);
        }

        #[test]
        fn offsets_go_clockwise(a in addr(), b in addr()) {
            prop_assert_eq!(a.wrapping_add(a.offset_to(b)), b);
            prop_assert!(b.in_range(a, a) );
        }
    }

    #[test]
    fn fractions_split_the_ring_evenly() {
        assert_eq!(RingAddr::fraction(0, 8), RingAddr::ZERO);
        assert_eq!(RingAddr::fraction(4, 8), RingAddr::HALF);
        let third = RingAddr::fraction(1, 3);
        let sum = third.wrapping_add(third).wrapping_add(third);
        // Three truncated thirds fall short of the whole ring by at most a few units.
        assert!(
            sum.distance(RingAddr::ZERO)
                < RingAddr::from_bytes({
                    let mut b = [0u8; 20];
                    b[19] = 16;
                    b
                })
        );
    }

    #[test]
    fn float_view_round_trips_approximately() {
        let a = RingAddr::HALF;
        assert!((a.as_f64() / RING_SIZE - 0.5).abs() < 1e-12);
        assert_eq!(RingAddr::from_f64(a.as_f64()), a);
        assert!(RingAddr::from_f64(RING_SIZE * 2.0) > RingAddr::HALF);
    }
}
