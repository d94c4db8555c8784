//! Cache keys and content digests of artifacts; used by plan.rs (keys), the store
//! (manifests) and the engine (early cutoff).
//!
//! What goes into a node's key, and what never does:
//!
//! | component        | in key | why |
//! |------------------|--------|-----|
//! | key-scheme version [`KEY_SCHEME`] | yes | changing what is hashed must change every key |
//! | stage kind + its `VERSION` | yes | a stage whose output changes for the same inputs bumps VERSION |
//! | iteration        | yes    | `prep@1` and `prep@2` have the same params but must differ |
//! | typed params, canonical JSON | yes | re-serialised from the typed struct: YAML comments, key order, whitespace, spelled-out defaults never matter |
//! | input **content** digests, by role | yes | not the inputs' keys: a rerun that reproduces the same bytes keeps everything downstream cached (early cutoff) |
//! | run seed         | yes    | every draw is seeded from it (by run seed, stage kind, iteration and row: `plan::rng_for`, never by the key, so a knob that is not in the key cannot reseed anything) |
//! | sha256 of each file read from outside the store, by logical name | yes | the data, not where it lives; every file a stage reads is pinned (an HF base directory file by file, the MiniLM embedder as config, tokenizer and weights) |
//! | the selected judge backend's result-affecting settings | yes | `plan::judge_key_params`: an unused backend's section never enters, nor the wildguard server's URL, timeout, retries or concurrency |
//! | paths (store root, config dir, sources dir), mtimes, hostnames, clocks, environment, log level, device, thread count | **never** | moving the project or the store must keep the cache; device/threads change speed, not the record (CPU runs are byte-reproducible at a fixed thread count) |
//! | speed-only knobs: `eval.batch_size`, `sft.batch_size` (both ≤ 64, the CPU decode kernel's rows), `run.threads`, `judge.wildguard.{url, concurrency, timeout_s, retries, api_key_env}` | **never** | they change how fast, not what; a URL may also carry credentials (`user:pass@`, `?token=`), which must never reach a key or a manifest |
//! | `rollout.batch_size` | yes | not speed-only: the batch's left-padded prefill rounds differently with other batch mates, and the rollout stores logprobs (plan.rs "rollout key"); it reseeds nothing |
//!
//! Every f64 of a key is finite (spec.rs rejects NaN and ±inf: JSON would write each of them
//! as `null`, so two different configs would share a key).
//! The encoding is JSON with sorted object keys (serde_json's default map is a BTreeMap)
//! and no whitespace; f64 values print with ryu's shortest round-trip form.
use std::fmt;

use serde::{Deserialize, Serialize};

/// Key-scheme version: CHANGE THIS WHEN YOU CHANGE THE INPUTS TO THE HASH
/// ([`KeyComponents`] or its encoding).
/// 2: draws seeded by (seed, kind, iteration, row) instead of the key; judge params are the
/// selected backend's only; HF base directories and the
/// MiniLM embedder pinned file by file; judge@i / eval@i pin the embedder they load.
pub const KEY_SCHEME: u32 = 2;

/// Length in hex digits of keys and digests (full blake3: 256 bits).
pub const HEX_LEN: usize = 64;

/// A node's cache key: blake3 of its canonical [`KeyComponents`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Key(String);

/// The content digest of an artifact: blake3 over its files' names and digests.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

/// A string that is not 64 lowercase hex digits where a key or digest was expected.
#[derive(Debug, thiserror::Error)]
#[error("not a 64-digit lowercase hex key/digest: {0:?}")]
pub struct BadHex(pub String);

fn is_hex64(s: &str) -> bool {
    s.len() == HEX_LEN && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A sha256 pin as spec.rs accepts it and manifests hold it: exactly 64 lowercase hex digits
/// (ASCII only, so cutting one at byte 12 for display is always on a char boundary).
pub fn is_sha256_hex(s: &str) -> bool {
    is_hex64(s)
}

/// Serde check of [`FileDigest::sha256`]: a manifest whose pin is not 64 lowercase hex digits
/// does not decode, so the store treats it as no artifact (`Store::scan` skips it) instead of
/// `explain`/`status` slicing a non-ASCII string at byte 12 and panicking.
fn de_sha256<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if is_sha256_hex(&s) {
        Ok(s)
    } else {
        Err(serde::de::Error::custom(format!("sha256 must be 64 lowercase hex digits, got {s:?}")))
    }
}

macro_rules! hex_newtype {
    ($t:ident) => {
        impl $t {
            pub fn parse(s: &str) -> Result<Self, BadHex> {
                if is_hex64(s) {
                    Ok($t(s.to_string()))
                } else {
                    Err(BadHex(s.to_string()))
                }
            }
            pub fn from_hash(h: blake3::Hash) -> Self {
                $t(h.to_hex().to_string())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// The first 12 hex digits, for humans.
            pub fn short(&self) -> &str {
                &self.0[..12]
            }
        }
        impl TryFrom<String> for $t {
            type Error = BadHex;
            fn try_from(s: String) -> Result<Self, BadHex> {
                $t::parse(&s)
            }
        }
        impl From<$t> for String {
            fn from(k: $t) -> String {
                k.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
hex_newtype!(Key);
hex_newtype!(Digest);

/// One input of a node: its role for the consuming stage and the content digest of the
/// artifact that fills it. (The producing node's name is kept in the manifest, not here.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputDigest {
    pub role: String,
    pub digest: Digest,
}

/// A file read from outside the store, by logical name (never its path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub name: String,
    #[serde(deserialize_with = "de_sha256")]
    pub sha256: String,
}

/// Everything a key is computed from (see the table at the top of this file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyComponents {
    pub scheme: u32,
    pub kind: String,
    pub stage_version: u32,
    pub iteration: Option<u32>,
    pub params: serde_json::Value,
    pub inputs: Vec<InputDigest>,
    pub seed: u64,
    pub files: Vec<FileDigest>,
}

impl KeyComponents {
    /// The canonical bytes that are hashed.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // serde_json::Value objects are BTreeMaps (no `preserve_order` feature), so
        // re-encoding through Value sorts every object's keys.
        let value = serde_json::to_value(self).expect("KeyComponents is plain data");
        serde_json::to_vec(&value).expect("a JSON value always encodes")
    }

    pub fn key(&self) -> Key {
        Key::from_hash(blake3::hash(&self.canonical_bytes()))
    }
}

/// Content digest of a set of files: blake3 over sorted `(name, blake3)` pairs, so the same
/// bytes under the same names give the same digest whatever the key or the timings.
pub fn content_digest<'a>(files: impl IntoIterator<Item = (&'a str, &'a Digest)>) -> Digest {
    let mut pairs: Vec<(&str, &str)> = files.into_iter().map(|(n, d)| (n, d.as_str())).collect();
    pairs.sort();
    let mut h = blake3::Hasher::new();
    h.update(b"self-redteam content v1\n");
    for (name, digest) in pairs {
        h.update(name.as_bytes());
        h.update(b"\0");
        h.update(digest.as_bytes());
        h.update(b"\n");
    }
    Digest::from_hash(h.finalize())
}

/// blake3 of a file's bytes, streamed.
pub fn digest_file(path: &std::path::Path) -> std::io::Result<Digest> {
    let mut h = blake3::Hasher::new();
    let mut f = std::fs::File::open(path)?;
    std::io::copy(&mut f, &mut h)?;
    Ok(Digest::from_hash(h.finalize()))
}

/// sha256 of a file (pinned sources use sha256, as PyPI and scripts/pins.json do).
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    sha256::file(path)
}

/// A small self-contained SHA-256 (FIPS 180-4), so verifying pinned sources needs no
/// extra crate. Checked against the standard test vectors below.
mod sha256 {
    use std::io::Read;

    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
        0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
        0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ];

    pub struct Sha256 {
        h: [u32; 8],
        buf: [u8; 64],
        buf_len: usize,
        total: u64,
    }

    impl Sha256 {
        pub fn new() -> Self {
            Sha256 { h: [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19], buf: [0; 64], buf_len: 0, total: 0 }
        }
        fn block(&mut self, block: &[u8; 64]) {
            let mut w = [0u32; 64];
            for i in 0..16 {
                w[i] = u32::from_be_bytes([block[4 * i], block[4 * i + 1], block[4 * i + 2], block[4 * i + 3]]);
            }
            for i in 16..64 {
                let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
                let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
                w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
            }
            let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = self.h;
            for i in 0..64 {
                let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
                let ch = (e & f) ^ (!e & g);
                let t1 = h.wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
                let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
                let maj = (a & b) ^ (a & c) ^ (b & c);
                let t2 = s0.wrapping_add(maj);
                h = g;
                g = f;
                f = e;
                e = d.wrapping_add(t1);
                d = c;
                c = b;
                b = a;
                a = t1.wrapping_add(t2);
            }
            for (s, v) in self.h.iter_mut().zip([a, b, c, d, e, f, g, h]) {
                *s = s.wrapping_add(v);
            }
        }
        pub fn update(&mut self, mut data: &[u8]) {
            self.total += data.len() as u64;
            if self.buf_len > 0 {
                let take = (64 - self.buf_len).min(data.len());
                self.buf[self.buf_len..self.buf_len + take].copy_from_slice(&data[..take]);
                self.buf_len += take;
                data = &data[take..];
                if self.buf_len == 64 {
                    let b = self.buf;
                    self.block(&b);
                    self.buf_len = 0;
                }
            }
            while data.len() >= 64 {
                let mut b = [0u8; 64];
                b.copy_from_slice(&data[..64]);
                self.block(&b);
                data = &data[64..];
            }
            self.buf[..data.len()].copy_from_slice(data);
            self.buf_len += data.len();
        }
        pub fn hex(mut self) -> String {
            let bits = self.total.wrapping_mul(8);
            let mut pad = vec![0x80u8];
            while (self.buf_len + pad.len()) % 64 != 56 {
                pad.push(0);
            }
            pad.extend_from_slice(&bits.to_be_bytes());
            let total = self.total;
            self.update(&pad);
            self.total = total;
            self.h.iter().map(|w| format!("{w:08x}")).collect()
        }
    }

    pub fn file(path: &std::path::Path) -> std::io::Result<String> {
        let mut f = std::fs::File::open(path)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(h.hex())
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn sha256_matches_fips_vectors() {
            let hex = |d: &[u8]| {
                let mut h = super::Sha256::new();
                h.update(d);
                h.hex()
            };
            assert_eq!(hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
            assert_eq!(hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
            assert_eq!(hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
            let mut h = super::Sha256::new();
            for _ in 0..1000 {
                h.update(&[b'a'; 1000]);
            }
            assert_eq!(h.hex(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn components() -> KeyComponents {
        KeyComponents {
            scheme: KEY_SCHEME,
            kind: "prep".into(),
            stage_version: 1,
            iteration: Some(1),
            params: serde_json::json!({"seeds_per_iteration": 8, "harmful_fraction": 0.5}),
            inputs: vec![InputDigest { role: "dataset".into(), digest: Digest::from_hash(blake3::hash(b"a")) }],
            seed: 8888,
            files: vec![],
        }
    }

    #[test]
    fn key_changes_with_every_component() {
        let base = components().key();
        let mut c = components();
        c.stage_version = 2;
        assert_ne!(c.key(), base, "stage version");
        let mut c = components();
        c.inputs[0].digest = Digest::from_hash(blake3::hash(b"b"));
        assert_ne!(c.key(), base, "input digest");
        let mut c = components();
        c.seed = 1;
        assert_ne!(c.key(), base, "seed");
        let mut c = components();
        c.iteration = Some(2);
        assert_ne!(c.key(), base, "iteration");
        let mut c = components();
        c.params["harmful_fraction"] = serde_json::json!(0.25);
        assert_ne!(c.key(), base, "params");
        let mut c = components();
        c.files.push(FileDigest { name: "x".into(), sha256: "0".repeat(64) });
        assert_ne!(c.key(), base, "files");
        let mut c = components();
        c.kind = "judge".into();
        assert_ne!(c.key(), base, "kind");
    }

    #[test]
    fn key_ignores_param_key_order() {
        let mut c = components();
        c.params = serde_json::json!({"harmful_fraction": 0.5, "seeds_per_iteration": 8});
        assert_eq!(c.key(), components().key());
    }

    #[test]
    fn content_digest_ignores_listing_order() {
        let a = Digest::from_hash(blake3::hash(b"1"));
        let b = Digest::from_hash(blake3::hash(b"2"));
        assert_eq!(content_digest([("a", &a), ("b", &b)]), content_digest([("b", &b), ("a", &a)]));
        assert_ne!(content_digest([("a", &a), ("b", &b)]), content_digest([("a", &b), ("b", &a)]));
    }

    #[test]
    fn file_digest_refuses_a_pin_that_is_not_64_lowercase_hex() {
        let ok = format!("{{\"name\":\"x\",\"sha256\":\"{}\"}}", "a".repeat(64));
        assert!(serde_json::from_str::<FileDigest>(&ok).is_ok());
        // The first is 64 bytes like a real pin, but byte 12 is inside `é`: `[..12]` panics.
        for bad in ["a".repeat(11) + "é" + &"a".repeat(51), "a".repeat(63), "A".repeat(64), String::new()] {
            let text = serde_json::json!({"name": "x", "sha256": bad}).to_string();
            assert!(serde_json::from_str::<FileDigest>(&text).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hex_newtypes_refuse_paths() {
        assert!(Key::parse("../../etc/passwd").is_err());
        assert!(Key::parse(&"A".repeat(64)).is_err());
        assert!(Key::parse(&"a".repeat(64)).is_ok());
    }
}
