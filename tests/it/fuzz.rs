//! The mutation fuzzer behind every parser's fuzz test (GGUF, safetensors / HF directories,
//! tokenizer.json, pipeline.yaml, manifest.json, the judge's HTTP replies, `serve` requests).
//!
//! Why not cargo-fuzz: it needs a nightly toolchain and a separate build, and CI must run the
//! targets on the stable toolchain of `scripts/test.sh`. This harness runs each target as an
//! ordinary test: it starts from valid seed inputs, mutates them (bit flips, truncation,
//! chunk duplication and deletion, and "interesting" little-endian integers such as 0,
//! 2^32−1, 2^63 and 2^64−16 written over the bytes, which is what breaks length and offset
//! arithmetic), and calls the target under `catch_unwind`. A target passes when it never
//! panics: it must return `Ok` or a typed error. A stack overflow or an abort still kills
//! the test process, which fails the run just the same.
//!
//! `FUZZ_ITERS` (default: each target's own CI budget, a few seconds) and `FUZZ_SEED` (default
//! 1) control a run; `scripts/fuzz.sh` runs every target for longer. A panicking input is
//!    written to `target/fuzz-crashes/<target>-<blake3>.bin` and named in the failure; keep it as
//!    a regression test beside the target.
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// Iterations for one target: `FUZZ_ITERS` when set, else `ci_default`.
pub fn iterations(ci_default: usize) -> usize {
    std::env::var("FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(ci_default)
}

fn seed() -> u64 {
    std::env::var("FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1)
}

const INTERESTING: [u64; 12] = [0, 1, 2, 0x7f, 0xff, 0xffff, 0x7fff_ffff, 0xffff_ffff, 1 << 32, 1 << 62, 1 << 63, u64::MAX - 15];

/// One mutation of `input` (never the identity on a non-empty input, except by chance).
pub fn mutate(rng: &mut ChaCha8Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    let rounds = 1 + rng.random_range(0..4);
    for _ in 0..rounds {
        let len = out.len();
        match rng.random_range(0..7) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] = rng.next_u32() as u8;
            }
            2 if len > 0 => out.truncate(rng.random_range(0..len)),
            3 if len > 0 => {
                // An interesting integer over 4 or 8 bytes at a random offset.
                let v = INTERESTING[rng.random_range(0..INTERESTING.len())];
                let width = if rng.random_bool(0.5) { 4 } else { 8 };
                let at = rng.random_range(0..len);
                for (j, b) in v.to_le_bytes()[..width].iter().enumerate() {
                    if at + j < out.len() {
                        out[at + j] = *b;
                    }
                }
            }
            4 if len > 0 => {
                // Duplicate a chunk (repeated structure: nested arrays, repeated keys).
                let a = rng.random_range(0..len);
                let b = (a + 1 + rng.random_range(0..64)).min(len);
                let chunk = out[a..b].to_vec();
                let at = rng.random_range(0..=out.len());
                out.splice(at..at, chunk);
            }
            5 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = (a + 1 + rng.random_range(0..64)).min(len);
                out.drain(a..b);
            }
            _ => {
                let at = rng.random_range(0..=len);
                let n = 1 + rng.random_range(0..8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u32() as u8).collect();
                out.splice(at..at, bytes);
            }
        }
    }
    out
}

/// Runs `target` on `iters` mutations of the `seeds` (and on each seed as is); panics, naming
/// the saved input, when the target panics on any of them (it stops at the first, so the
/// target's own panic message is printed once, above the harness's).
pub fn run(name: &str, seeds: &[Vec<u8>], iters: usize, target: impl Fn(&[u8])) {
    assert!(!seeds.is_empty(), "fuzz target {name} needs a seed input");
    let mut rng = ChaCha8Rng::seed_from_u64(seed() ^ u64::from_le_bytes(blake3::hash(name.as_bytes()).as_bytes()[..8].try_into().expect("8 bytes")));
    let mut crash = None;
    for i in 0..seeds.len() + iters {
        let input = if i < seeds.len() {
            seeds[i].clone()
        } else {
            let pick = rng.random_range(0..seeds.len());
            mutate(&mut rng, &seeds[pick])
        };
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| target(&input))) {
            let msg = payload.downcast_ref::<String>().cloned().or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            crash = Some((input, msg, i));
            break;
        }
    }
    if let Some((input, msg, i)) = crash {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-crashes");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{name}-{}.bin", &blake3::hash(&input).to_hex()[..16]));
        let _ = std::fs::write(&path, &input);
        panic!("fuzz target {name} panicked on input {i} ({} bytes, saved to {}): {msg}", input.len(), path.display());
    }
}

/// The harness itself: a target that panics on some inputs is caught and its input saved;
/// one that never panics passes.
#[test]
fn the_harness_finds_a_panicking_input_and_passes_a_total_target() {
    let seeds = vec![b"GGUF\x03\x00\x00\x00 some bytes".to_vec()];
    run("harness_total", &seeds, 500, |b| {
        let _ = std::str::from_utf8(b);
    });
    let caught = catch_unwind(|| {
        run("harness_partial", &seeds, 5000, |b| {
            // Panics as soon as a mutation changes the length (truncation or insertion).
            assert_eq!(b.len(), seeds[0].len(), "length changed");
        })
    });
    let msg = caught.expect_err("a length-changing mutation must be found");
    let msg = msg.downcast_ref::<String>().expect("panic message");
    assert!(msg.contains("harness_partial") && msg.contains("saved to"), "{msg}");
}
