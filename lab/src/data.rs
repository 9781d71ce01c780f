//! Reproducible test traffic shared by tests and benchmarks.

/// `n` sizes spread log-uniformly from 1 B to `max`, both extremes included, from `seed`.
pub fn log_uniform_sizes(n: usize, max: usize, seed: u64) -> Vec<usize> {
    // A small xorshift keeps the sizes reproducible without an RNG dependency.
    let mut x = seed.max(1);
    let mut sizes: Vec<usize> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            ((max as f64).powf(u) as usize).clamp(1, max)
        })
        .collect();
    if n > 0 {
        sizes[0] = 1;
        sizes[n - 1] = max;
    }
    sizes
}

/// Datagram `i` of `len` bytes; its first 4 bytes carry `i` when it is long enough.
pub fn datagram(i: usize, len: usize) -> Vec<u8> {
    let mut d: Vec<u8> = (0..len)
        .map(|j| (i.wrapping_mul(131) ^ j.wrapping_mul(7) ^ (j >> 8)) as u8)
        .collect();
    if len >= 4 {
        d[..4].copy_from_slice(&(i as u32).to_be_bytes());
    }
    d
}

/// `n` datagrams with log-uniform sizes up to `max`.
pub fn datagrams(n: usize, max: usize, seed: u64) -> Vec<Vec<u8>> {
    log_uniform_sizes(n, max, seed)
        .into_iter()
        .enumerate()
        .map(|(i, len)| datagram(i, len))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_cover_the_range_and_repeat() {
        let a = log_uniform_sizes(1000, 200 * 1024, 42);
        assert_eq!(a, log_uniform_sizes(1000, 200 * 1024, 42));
        assert_eq!((a[0], a[999]), (1, 200 * 1024));
        assert!(a.iter().all(|&s| (1..=200 * 1024).contains(&s)));
        let small = a.iter().filter(|&&s| s < 1024).count();
        assert!(
            (300..800).contains(&small),
            "log-uniform: {small} of 1000 under 1 KiB"
        );
    }
}
