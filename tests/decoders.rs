//! Every wire decoder against at least 100,000 generated and mutated inputs each, on the
//! stable toolchain (the `fuzz/` targets run the same exercises under libFuzzer). An input
//! is a seed mutated 1–8 times (bit flips, byte sets, truncation, insertion, duplication,
//! splicing with another seed, interesting integers) or plain random bytes; the exercise
//! panics on a crash or a broken invariant, and the failing input is printed in hex.
#![allow(clippy::disallowed_methods)] // timing the exercises is the harness's business

use std::panic::{catch_unwind, AssertUnwindSafe};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use ringlet::fuzzing::{exercises, Exercise};

const INPUTS: usize = 100_000;

fn mutate(rng: &mut SmallRng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    match rng.random_range(0..8) {
        0 if !input.is_empty() => {
            let i = rng.random_range(0..input.len());
            input[i] ^= 1 << rng.random_range(0..8);
        }
        1 if !input.is_empty() => {
            let i = rng.random_range(0..input.len());
            input[i] = rng.random();
        }
        2 if !input.is_empty() => {
            let n = rng.random_range(0..input.len());
            input.truncate(n);
        }
        3 => {
            let i = rng.random_range(0..=input.len());
            let n = rng.random_range(1..16);
            for _ in 0..n {
                input.insert(i, rng.random());
            }
        }
        4 if !input.is_empty() => {
            let a = rng.random_range(0..input.len());
            let b = rng.random_range(a..input.len().min(a + 64) + 1).min(input.len());
            let chunk = input[a..b].to_vec();
            let at = rng.random_range(0..=input.len());
            input.splice(at..at, chunk);
        }
        5 => {
            let other = &seeds[rng.random_range(0..seeds.len())];
            let cut = rng.random_range(0..=input.len());
            let from = rng.random_range(0..=other.len());
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        6 if !input.is_empty() => {
            // Interesting values where lengths and counts live.
            let i = rng.random_range(0..input.len());
            input[i] = [0, 1, 0x7f, 0x80, 0xfe, 0xff][rng.random_range(0..6)];
        }
        _ => {
            let i = rng.random_range(0..=input.len());
            input.insert(i, rng.random());
        }
    }
}

fn run(name: &str, exercise: Exercise, seeds: &[Vec<u8>]) {
    assert!(!seeds.is_empty(), "{name} has no seeds");
    let mut rng = SmallRng::seed_from_u64(0x5eed ^ name.len() as u64);
    for seed in seeds {
        exercise(seed);
    }
    for n in 0..INPUTS {
        let input = if n % 10 == 0 {
            let len = rng.random_range(0..300);
            (0..len).map(|_| rng.random()).collect()
        } else {
            let mut input = seeds[rng.random_range(0..seeds.len())].clone();
            for _ in 0..rng.random_range(1..=8) {
                mutate(&mut rng, seeds, &mut input);
            }
            input
        };
        if catch_unwind(AssertUnwindSafe(|| exercise(&input))).is_err() {
            panic!("{name}: input {n} broke the decoder: {}", hex::encode(&input));
        }
    }
}

#[test]
fn every_decoder_survives_100k_generated_and_mutated_inputs() {
    let all = exercises();
    assert!(all.len() >= 8, "a decoder lost its exercise");
    for (name, exercise, seeds) in all {
        let started = std::time::Instant::now();
        run(name, exercise, &seeds);
        eprintln!(
            "{name}: {INPUTS} inputs in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
}
