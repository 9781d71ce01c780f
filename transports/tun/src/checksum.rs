//! The Internet checksum (RFC 1071) over byte slices, fast enough to run over every byte the
//! VPN carries: eight bytes per step, summed in native byte order and swapped once at the end
//! (the one's-complement sum commutes with byte swapping, RFC 1071 §2(B)).

/// The one's-complement sum of `data` as 16-bit big-endian words (an odd last byte is padded
/// with zero), folded to 16 bits; not complemented.
pub fn sum(data: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().expect("chunks of 8"));
        acc += (word & 0xffff_ffff) + (word >> 32);
    }
    let rest = chunks.remainder();
    let mut pairs = rest.chunks_exact(2);
    for pair in &mut pairs {
        acc += u64::from(u16::from_ne_bytes([pair[0], pair[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    u16::from_be(fold(acc))
}

/// Adds 16-bit one's-complement sums.
pub fn add(parts: &[u16]) -> u16 {
    fold(parts.iter().map(|&p| u64::from(p)).sum())
}

/// The pseudo-header sum of a TCP or UDP segment of `len` bytes (header and payload) between
/// `src` and `dst` (both 4 or both 16 bytes).
pub fn pseudo_header(src: &[u8], dst: &[u8], protocol: u8, len: usize) -> u16 {
    let len = len as u64;
    fold(u64::from(sum(src)) + u64::from(sum(dst)) + u64::from(protocol) + (len >> 16) + (len & 0xffff))
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 read literally: big-endian words, one at a time.
    fn naive(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for pair in data.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            acc += u32::from(word);
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn the_fast_sum_matches_rfc_1071_for_every_length_and_alignment() {
        let data: Vec<u8> = (0..600u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for start in 0..9 {
            for end in start..data.len() {
                assert_eq!(sum(&data[start..end]), naive(&data[start..end]), "{start}..{end}");
            }
        }
        assert_eq!(sum(&[0xff; 4096]), 0xffff);
        assert_eq!(sum(&[]), 0);
    }

    #[test]
    fn rfc_1071_worked_example() {
        // §3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (after the end-around carry).
        assert_eq!(sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), 0xddf2);
        assert_eq!(add(&[0xffff, 0x0001]), 0x0001);
    }
}
