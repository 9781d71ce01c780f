//! Link security costs: AEAD throughput on one core for 1,400-byte datagrams (sealing and
//! opening through `secure::transport`, and the bare cipher, for both ciphers) next to plainly copying the
//! same bytes, measured in the same run; and the handshake's CPU time per step and round
//! trips (IK, XX).
//!
//! `cargo bench --bench secure` (`--quick` for fewer rounds; sections `aead`, `handshake`).
#![allow(clippy::disallowed_methods)] // benchmarks read the clock

#[allow(dead_code)] // not every benchmark uses every helper
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};
use ringlet::fuzzing::seeds::member;
use ringlet::secure::noise::{respond, Initiating, Purpose, Responded};
use ringlet::secure::transport::{Cipher, Transport};
use ringlet::secure::wire::{self, Packet};

const DATAGRAM: usize = 1400;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn percentile(mut xs: Vec<f64>, p: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() - 1) as f64 * p) as usize]
}

/// Median GB/s over `rounds` runs of `per_round` datagrams through `f`.
fn throughput(rounds: usize, per_round: usize, mut f: impl FnMut(usize)) -> f64 {
    let runs = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for i in 0..per_round {
                f(i);
            }
            (per_round * DATAGRAM) as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    median(runs)
}

fn aead(rounds: usize, per_round: usize) {
    let payload = vec![0xa5u8; DATAGRAM];
    let mut buf = Vec::with_capacity(DATAGRAM + 64);
    let copy = throughput(rounds, per_round, |_| {
        buf.clear();
        buf.extend_from_slice(black_box(&payload));
        black_box(&buf);
    });
    let mut rows = vec![("copy (baseline: Vec extend, same bytes)".to_owned(), copy)];
    for cipher in [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm] {
        for (what, v) in sealing(cipher, rounds, per_round, &payload) {
            rows.push((format!("{} {what}", cipher.name()), v));
        }
    }
    println!("AEAD, {DATAGRAM}-byte datagrams, one core, median of {rounds} runs of {per_round}");
    println!("{:<58} {:>9} {:>12}", "operation", "GB/s", "vs copying");
    for (name, v) in rows {
        println!("{name:<58} {v:>9.2} {:>11.2}x", v / copy);
    }
}

/// Sealing with the bare ring cipher, and sealing and opening through a transport.
fn sealing(cipher: Cipher, rounds: usize, per_round: usize, payload: &[u8]) -> [(&'static str, f64); 3] {
    let mut buf = Vec::with_capacity(DATAGRAM + 64);
    let algorithm = match cipher {
        Cipher::ChaCha20Poly1305 => &CHACHA20_POLY1305,
        Cipher::Aes256Gcm => &AES_256_GCM,
    };
    let key = LessSafeKey::new(UnboundKey::new(algorithm, &[7; 32]).expect("key"));
    let bare = throughput(rounds, per_round, |i| {
        buf.clear();
        buf.extend_from_slice(payload);
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&(i as u64).to_le_bytes());
        let tag = key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(n), Aad::empty(), &mut buf)
            .expect("seal");
        let _ = black_box(tag);
    });
    let now = Instant::now();
    let mut sender = Transport::new(now, cipher, &mut [1; 32], &mut [2; 32]);
    let seal = throughput(rounds, per_round, |_| {
        buf.clear();
        buf.extend_from_slice(payload);
        let header = wire::data_header(9, sender.next_counter());
        sender.seal(now, &header, &mut buf).expect("seal");
        black_box(&buf);
    });
    // Opening: each round opens datagrams sealed before its clock starts.
    let mut tx = Transport::new(now, cipher, &mut [1; 32], &mut [2; 32]);
    let mut rx = Transport::new(now, cipher, &mut [2; 32], &mut [1; 32]);
    let open = median(
        (0..rounds)
            .map(|_| {
                let batch: Vec<(u64, [u8; 13], Vec<u8>)> = (0..per_round)
                    .map(|_| {
                        let header = wire::data_header(9, tx.next_counter());
                        let mut b = payload.to_vec();
                        let c = tx.seal(now, &header, &mut b).expect("seal");
                        (c, header, b)
                    })
                    .collect();
                let t = Instant::now();
                for (c, header, mut b) in batch {
                    rx.open(now, &header, c, &mut b).expect("open");
                    black_box(&b);
                }
                (per_round * DATAGRAM) as f64 / t.elapsed().as_secs_f64() / 1e9
            })
            .collect(),
    );
    [
        ("seal, bare cipher (ring)", bare),
        ("transport seal (header AD, counter)", seal),
        ("transport open (replay window, verify)", open),
    ]
}

fn handshake(runs: usize) {
    let (_, alice) = member(1);
    let (bob_key, bob) = member(2);
    let bob_pub = bob_key.public_bytes();
    let now = Instant::now();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    for (name, ik) in [("IK (key known)", true), ("XX (key unknown)", false)] {
        let (mut start, mut answer, mut finish, mut last) = (vec![], vec![], vec![], vec![]);
        let mut messages = 0;
        for i in 0..runs {
            let seed = [i as u8; 32];
            let t = Instant::now();
            let (init, packet) = Initiating::start(
                &alice,
                Purpose::Link,
                ik.then_some(&bob_pub),
                1,
                seed,
                i as u64,
                &[],
            )
            .expect("start");
            start.push(us(t.elapsed()));
            let Ok(Packet::Init {
                pattern,
                sender,
                noise,
                ..
            }) = Packet::parse(&packet)
            else {
                panic!("init");
            };
            let t = Instant::now();
            let responded = respond(now, &bob, Purpose::Link, pattern, sender, noise, 2, seed, |_| {
                Ok(())
            })
            .expect("respond");
            answer.push(us(t.elapsed()));
            let (response, pending) = match responded {
                Responded::Done(_, r) => (r, None),
                Responded::Awaiting(p, r) => (r, Some(p)),
            };
            let Ok(Packet::Response { sender, noise, .. }) = Packet::parse(&response) else {
                panic!("response");
            };
            let t = Instant::now();
            let (_, finale) = init
                .on_response(now, &alice, sender, noise, |_| Ok(()))
                .expect("finish");
            finish.push(us(t.elapsed()));
            messages = 2;
            if let (Some(p), Some(f)) = (pending, finale) {
                let Ok(Packet::Final { noise, .. }) = Packet::parse(&f) else {
                    panic!("final");
                };
                let t = Instant::now();
                p.on_final(now, noise, |_| Ok(())).expect("final");
                last.push(us(t.elapsed()));
                messages = 3;
            }
        }
        let rtts = messages as f64 / 2.0;
        println!(
            "{name:<18} {messages} messages = {rtts:.1} RTT before the initiator can send; CPU µs median/p99: \
             init {:.0}/{:.0}, respond {:.0}/{:.0}, finish {:.0}/{:.0}{}",
            median(start.clone()),
            percentile(start, 0.99),
            median(answer.clone()),
            percentile(answer, 0.99),
            median(finish.clone()),
            percentile(finish, 0.99),
            if last.is_empty() {
                String::new()
            } else {
                format!(", final {:.0}/{:.0}", median(last.clone()), percentile(last, 0.99))
            }
        );
    }
}

fn main() {
    let args = common::Args::parse();
    println!("build: {}", common::build());
    let (rounds, per_round, runs) = if args.quick {
        (3, 20_000, 50)
    } else {
        (9, 50_000, 500)
    };
    if args.wants("aead") {
        aead(rounds, per_round);
    }
    if args.wants("handshake") {
        handshake(runs);
    }
}
