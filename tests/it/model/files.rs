//! Hostile model files (issue 10): hand-made GGUF and safetensors inputs for every overflow
//! and bound the loaders check, each of which must give a typed error naming the file and
//! the key or tensor, and the fuzz targets `fuzz_gguf`, `fuzz_safetensors_hf_dir` and
//! `fuzz_tokenizer_json` (harness: tests/it/fuzz.rs), whose seeds are built here so that
//! no input depends on a downloaded model.
use crate::fuzz;
use self_redteam::model::{self, tiny_random_llama, ChatMessage, ModelError, Policy, SamplingParams};
use std::path::Path;
use tch::{Device, Kind};

// ---------------------------------------------------------------------------------------
// A GGUF writer (ggml/docs/gguf.md, version 3) small enough to build every hostile case.

const F32: u32 = 0;

/// A GGUF file under construction: metadata in order, tensors with F32 data (offsets laid
/// out with 32-byte alignment unless a test overrides one).
struct Gguf {
    kv: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<Tensor>,
}

struct Tensor {
    name: String,
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
    offset: Option<u64>,
}

fn gguf_string(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

impl Gguf {
    fn kv(&mut self, key: &str, ty: u32, payload: Vec<u8>) -> &mut Self {
        self.kv.retain(|(k, _, _)| k != key);
        self.kv.push((key.into(), ty, payload));
        self
    }
    fn u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.kv(key, 4, v.to_le_bytes().to_vec())
    }
    fn f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.kv(key, 6, v.to_le_bytes().to_vec())
    }
    fn str(&mut self, key: &str, v: &str) -> &mut Self {
        self.kv(key, 8, gguf_string(v))
    }
    fn strs(&mut self, key: &str, items: &[&str]) -> &mut Self {
        let mut b = 8u32.to_le_bytes().to_vec();
        b.extend_from_slice(&(items.len() as u64).to_le_bytes());
        for s in items {
            b.extend(gguf_string(s));
        }
        self.kv(key, 9, b)
    }
    fn i32s(&mut self, key: &str, items: &[i32]) -> &mut Self {
        let mut b = 5u32.to_le_bytes().to_vec();
        b.extend_from_slice(&(items.len() as u64).to_le_bytes());
        for v in items {
            b.extend_from_slice(&v.to_le_bytes());
        }
        self.kv(key, 9, b)
    }
    /// An F32 tensor with GGUF dims (fastest first) and values 0.01·i·(-1)^i.
    fn tensor(&mut self, name: &str, dims: &[u64]) -> &mut Self {
        let n: u64 = dims.iter().product();
        let data = (0..n).flat_map(|i| (0.01 * i as f32 * if i % 2 == 0 { 1.0 } else { -1.0 }).to_le_bytes()).collect();
        self.tensors.push(Tensor { name: name.into(), dims: dims.to_vec(), ty: F32, data, offset: None });
        self
    }
    fn tensor_mut(&mut self, name: &str) -> &mut Tensor {
        self.tensors.iter_mut().find(|t| t.name == name).expect("tensor in the builder")
    }
    fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        for (k, ty, payload) in &self.kv {
            b.extend(gguf_string(k));
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(payload);
        }
        let mut data = Vec::new();
        for t in &self.tensors {
            b.extend(gguf_string(&t.name));
            b.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&t.ty.to_le_bytes());
            b.extend_from_slice(&t.offset.unwrap_or(data.len() as u64).to_le_bytes());
            data.extend_from_slice(&t.data);
            data.resize(data.len().div_ceil(32) * 32, 0);
        }
        b.resize(b.len().div_ceil(32) * 32, 0);
        b.extend(data);
        b
    }
}

const VOCAB: [&str; 16] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "c", "d", "e", "h", "i", "l", "o", "Ġ", "Ċ", "u", "hi"];

/// A complete tiny Llama (hidden 8, 2 heads of 4, 1 KV head, 1 layer, vocab 16, tied head)
/// with a byte-level BPE tokenizer and the ChatML template.
fn tiny_gguf() -> Gguf {
    let mut g = Gguf { kv: Vec::new(), tensors: Vec::new() };
    g.str("general.architecture", "llama")
        .u32("llama.context_length", 64)
        .u32("llama.embedding_length", 8)
        .u32("llama.block_count", 1)
        .u32("llama.feed_forward_length", 8)
        .u32("llama.attention.head_count", 2)
        .u32("llama.attention.head_count_kv", 1)
        .f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .f32("llama.rope.freq_base", 10000.0)
        .str("tokenizer.ggml.model", "gpt2")
        .str("tokenizer.ggml.pre", "default")
        .strs("tokenizer.ggml.tokens", &VOCAB)
        .i32s("tokenizer.ggml.token_type", &[3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])
        .strs("tokenizer.ggml.merges", &["h i"])
        .u32("tokenizer.ggml.bos_token_id", 1)
        .u32("tokenizer.ggml.eos_token_id", 2)
        .u32("tokenizer.ggml.padding_token_id", 2)
        .str("tokenizer.chat_template", model::tokenizer::CHATML_TEMPLATE);
    g.tensor("token_embd.weight", &[8, 16])
        .tensor("output_norm.weight", &[8])
        .tensor("blk.0.attn_norm.weight", &[8])
        .tensor("blk.0.ffn_norm.weight", &[8])
        .tensor("blk.0.attn_q.weight", &[8, 8])
        .tensor("blk.0.attn_k.weight", &[8, 4])
        .tensor("blk.0.attn_v.weight", &[8, 4])
        .tensor("blk.0.attn_output.weight", &[8, 8])
        .tensor("blk.0.ffn_gate.weight", &[8, 8])
        .tensor("blk.0.ffn_up.weight", &[8, 8])
        .tensor("blk.0.ffn_down.weight", &[8, 8]);
    g
}

/// Writes `bytes` as `<dir>/m.gguf` and loads it.
fn load_gguf(dir: &Path, bytes: &[u8]) -> Result<Policy, ModelError> {
    let p = dir.join("m.gguf");
    std::fs::write(&p, bytes).expect("write");
    Policy::load(&p, Device::Cpu, Kind::Float)
}

/// Loads `g` and returns the error's message, which must name the file and `needle`.
fn gguf_error(g: &Gguf, needle: &str) -> ModelError {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = load_gguf(dir.path(), &g.bytes()).expect_err("a hostile GGUF must not load");
    let msg = err.to_string();
    assert!(msg.contains("m.gguf") && msg.contains(needle), "message should name the file and `{needle}`: {msg}");
    err
}

#[test]
fn tiny_gguf_seed_loads_and_generates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = load_gguf(dir.path(), &tiny_gguf().bytes()).expect("the seed is a valid model");
    assert_eq!((p.config().vocab_size, p.config().num_kv_heads(), p.config().head_dim()), (16, 1, 4));
    let ids = p.tokenizer().encode_chat(&[ChatMessage::user("hi")], true, None).expect("encode");
    assert_eq!(ids[0], 1);
    let out = p.generate(&[ids], &[0], &SamplingParams::greedy(3)).expect("generate");
    assert!(!out[0].token_ids.is_empty());
}

#[test]
fn gguf_tensor_offset_near_2_pow_64_is_an_error_not_a_wraparound() {
    // 2^64 − 32 is aligned, so only the overflow check stands between it and offset
    // (2^64 − 32) + data_start wrapping to a small number inside the file.
    let mut g = tiny_gguf();
    g.tensor_mut("token_embd.weight").offset = Some(u64::MAX - 31);
    assert!(matches!(gguf_error(&g, "token_embd.weight"), ModelError::GgufFormat { .. }));
    // The reviewer's 2^64 − 16 (not even aligned).
    g.tensor_mut("token_embd.weight").offset = Some(u64::MAX - 15);
    gguf_error(&g, "token_embd.weight");
}

#[test]
fn gguf_dims_whose_product_overflows_are_an_error() {
    let mut g = tiny_gguf();
    g.tensor_mut("output_norm.weight").dims = vec![1 << 62];
    assert!(matches!(gguf_error(&g, "output_norm.weight"), ModelError::GgufTensor { .. }));
    g.tensor_mut("output_norm.weight").dims = vec![1 << 62, 1 << 3];
    gguf_error(&g, "output_norm.weight");
}

#[test]
fn gguf_arrays_nested_100k_deep_are_an_error_not_a_stack_overflow() {
    let mut payload = Vec::new();
    for _ in 0..100_000 {
        payload.extend_from_slice(&9u32.to_le_bytes());
        payload.extend_from_slice(&1u64.to_le_bytes());
    }
    payload.extend_from_slice(&4u32.to_le_bytes());
    payload.extend_from_slice(&0u64.to_le_bytes());
    let mut g = tiny_gguf();
    g.kv("evil.nested", 9, payload);
    assert!(matches!(gguf_error(&g, "evil.nested"), ModelError::GgufFormat { .. }));
}

#[test]
fn gguf_array_length_2_pow_60_is_an_error_before_any_allocation() {
    let mut payload = 0u32.to_le_bytes().to_vec(); // u8 elements
    payload.extend_from_slice(&(1u64 << 60).to_le_bytes());
    let mut g = tiny_gguf();
    g.kv("evil.long", 9, payload);
    assert!(matches!(gguf_error(&g, "evil.long"), ModelError::GgufFormat { .. }));
}

#[test]
fn gguf_head_count_zero_is_a_config_error() {
    let mut g = tiny_gguf();
    g.u32("llama.attention.head_count", 0);
    match gguf_error(&g, "llama.attention.head_count") {
        ModelError::InvalidConfig { key, .. } => assert_eq!(key, "llama.attention.head_count"),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    // Heads that do not divide the hidden size, and KV heads that do not divide the heads.
    let mut g = tiny_gguf();
    g.u32("llama.attention.head_count", 3);
    gguf_error(&g, "hidden_size");
    let mut g = tiny_gguf();
    g.u32("llama.attention.head_count_kv", 3);
    gguf_error(&g, "num_key_value_heads");
}

#[test]
fn gguf_attn_q_with_odd_or_zero_dim_shape_is_an_error() {
    for (dims, needle) in [(vec![8, 6], "blk.0.attn_q.weight"), (vec![], "blk.0.attn_q.weight"), (vec![8, 0], "q_proj.weight")] {
        let mut g = tiny_gguf();
        g.tensors.retain(|t| t.name != "blk.0.attn_q.weight");
        g.tensor("blk.0.attn_q.weight", &dims);
        assert!(matches!(gguf_error(&g, needle), ModelError::GgufTensor { .. } | ModelError::ShapeMismatch { .. }), "{dims:?}");
    }
}

#[test]
fn gguf_duplicate_and_overlapping_tensors_are_errors() {
    let mut g = tiny_gguf();
    g.tensor("output_norm.weight", &[8]);
    assert!(matches!(gguf_error(&g, "output_norm.weight"), ModelError::DuplicateTensor { .. }));
    let mut g = tiny_gguf();
    g.tensor_mut("blk.0.ffn_norm.weight").offset = Some(0);
    gguf_error(&g, "does not overlap");
}

#[test]
fn gguf_token_id_past_u32_or_vocab_is_an_error() {
    let mut g = tiny_gguf();
    g.kv("tokenizer.ggml.eos_token_id", 10, (1u64 << 32).to_le_bytes().to_vec());
    gguf_error(&g, "tokenizer.ggml.eos_token_id");
    let mut g = tiny_gguf();
    g.u32("tokenizer.ggml.eos_token_id", 16);
    gguf_error(&g, "eos_token_id");
}

// ---------------------------------------------------------------------------------------
// safetensors and HF directories.

/// A safetensors file from a raw JSON header and data bytes.
fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

fn safetensors_error(bytes: &[u8], needle: &str) -> ModelError {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("w.safetensors");
    std::fs::write(&p, bytes).expect("write");
    let err = model::tensors::load_safetensors(&p).expect_err("a hostile safetensors file must not load");
    // The whole chain, as `main` prints it: the crate's own error is the source.
    let mut msg = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        msg = format!("{msg}: {s}");
        source = s.source();
    }
    assert!(msg.contains("w.safetensors") && msg.contains(needle), "message should name the file and `{needle}`: {msg}");
    err
}

#[test]
fn safetensors_header_length_past_the_file_is_an_error() {
    let mut bytes = safetensors(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, &[0; 4]);
    bytes[..8].copy_from_slice(&(1u64 << 63).to_le_bytes());
    assert!(matches!(safetensors_error(&bytes, "header length"), ModelError::SafetensorsHeader { .. }));
    safetensors_error(&bytes[..5], "8-byte header length");
}

#[test]
fn safetensors_offsets_out_of_range_overlapping_or_mismatched_are_errors() {
    let cases = [
        // Data past the end of the file.
        (r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, 8),
        // Overlapping: b starts inside a.
        (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, 12),
        // Size not dtype × shape.
        (r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, 8),
        // Shape whose product overflows.
        (r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}"#, 8),
    ];
    for (header, n) in cases {
        let err = safetensors_error(&safetensors(header, &vec![0; n]), "invalid safetensors");
        assert!(matches!(err, ModelError::Safetensors { .. }), "{header}: {err:?}");
    }
    // A dim past i64 (allowed by the crate when another dim is 0).
    let header = r#"{"a":{"dtype":"F32","shape":[18446744073709551615,0],"data_offsets":[0,0]}}"#;
    assert!(matches!(safetensors_error(&safetensors(header, &[]), "`a`"), ModelError::SafetensorsTensor { .. }));
}

/// A tiny policy whose tokenizer fits its vocabulary (the byte tokenizer's 259), saved.
fn saved_tiny(dir: &Path) {
    tiny_random_llama(2).save_hf_dir(dir).expect("save");
}

#[test]
fn shard_names_escaping_the_model_directory_are_errors() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("model");
    saved_tiny(&dir);
    // A real checkpoint outside the directory, which `..` would otherwise load.
    std::fs::rename(dir.join("model.safetensors"), root.path().join("outside.safetensors")).expect("mv");
    let abs = root.path().join("outside.safetensors").to_string_lossy().into_owned();
    for shard in ["../outside.safetensors", abs.as_str(), "sub/outside.safetensors", "model.bin"] {
        let index = serde_json::json!({"weight_map": {"model.embed_tokens.weight": shard}});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).expect("index");
        match Policy::load(&dir, Device::Cpu, Kind::Float) {
            Err(ModelError::ShardIndex { path, shard: s, .. }) => {
                assert!(path.ends_with("model.safetensors.index.json"));
                assert_eq!(s, shard);
            }
            other => panic!("{shard}: expected ShardIndex, got {:?}", other.err()),
        }
    }
}

#[test]
fn hf_config_that_breaks_the_math_is_an_error_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    saved_tiny(dir.path());
    let cfg_path = dir.path().join("config.json");
    let good: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).expect("read")).expect("json");
    for (key, value) in [
        ("num_attention_heads", serde_json::json!(0)),
        ("num_attention_heads", serde_json::json!(5)),
        ("num_key_value_heads", serde_json::json!(3)),
        ("vocab_size", serde_json::json!(0)),
        ("hidden_size", serde_json::json!(1u64 << 40)),
        ("rms_norm_eps", serde_json::json!(-1.0)),
    ] {
        let mut cfg = good.clone();
        cfg[key] = value;
        std::fs::write(&cfg_path, cfg.to_string()).expect("write");
        match Policy::load(dir.path(), Device::Cpu, Kind::Float) {
            Err(e @ ModelError::InvalidConfig { .. }) => assert!(e.to_string().contains("config.json"), "{e}"),
            other => panic!("{key}: expected InvalidConfig, got {:?}", other.err()),
        }
    }
    // A vocabulary smaller than the tokenizer's: encode could yield ids past the embedding.
    let mut cfg = good.clone();
    cfg["vocab_size"] = serde_json::json!(100);
    std::fs::write(&cfg_path, cfg.to_string()).expect("write");
    assert!(matches!(Policy::load(dir.path(), Device::Cpu, Kind::Float), Err(ModelError::TokenIdOutOfRange { .. })));
}

#[test]
fn token_ids_past_the_vocabulary_are_an_error_not_a_torch_panic() {
    let policy = tiny_random_llama(1);
    let v = policy.config().vocab_size as u32;
    let err = policy.generate(&[vec![1, 5, v]], &[0], &SamplingParams::greedy(2)).expect_err("id = vocab_size");
    assert!(matches!(err, ModelError::TokenIdOutOfRange { id, .. } if id == v as u64), "{err:?}");
    let params = SamplingParams { stop_token_ids: vec![u32::MAX], ..SamplingParams::greedy(2) };
    assert!(matches!(policy.generate(&[vec![1, 5]], &[0], &params), Err(ModelError::TokenIdOutOfRange { .. })));
    assert!(matches!(policy.sequence_batch(&[vec![1]], &[vec![v + 7]]), Err(ModelError::TokenIdOutOfRange { .. })));
    assert!(policy.sequence_batch(&[vec![1]], &[vec![v - 1]]).is_ok());
}

// ---------------------------------------------------------------------------------------
// Fuzz targets. CI budgets keep each one to a few seconds in a debug build; scripts/fuzz.sh
// runs them longer.

/// Loads a (possibly mutated) GGUF, and when it loads, encodes a chat and generates from it,
/// so that whatever the file says reaches the tokenizer, the config and the sampler.
fn load_and_use(path: &Path) {
    if let Ok(p) = Policy::load(path, Device::Cpu, Kind::Float) {
        if let Ok(ids) = p.tokenizer().encode_chat(&[ChatMessage::user("hi all")], true, None) {
            if !ids.is_empty() {
                let _ = p.generate(&[ids], &[1], &SamplingParams { max_new_tokens: 2, ..Default::default() });
            }
        }
    }
}

#[test]
fn fuzz_gguf() {
    // Two seeds: the whole tiny model, and its metadata alone (so that most mutations land
    // in the header, where the length and offset arithmetic is).
    let full = tiny_gguf().bytes();
    let mut header_only = tiny_gguf();
    header_only.tensors.clear();
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("f.gguf");
    // Regression inputs found by longer runs stay as seeds: a zero dimension beside huge
    // ones (libtorch stride overflow in the reshape, FUZZ_ITERS=20000 FUZZ_SEED=7).
    let found = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz/gguf_zero_dim_stride_overflow.gguf")).expect("fixture");
    fuzz::run("fuzz_gguf", &[full, header_only.bytes(), found], fuzz::iterations(300), |bytes| {
        std::fs::write(&p, bytes).expect("write");
        load_and_use(&p);
    });
}

/// A tiny HF directory's files: (name, bytes), sharded in two when `sharded`.
fn hf_dir_files(sharded: bool) -> Vec<(String, Vec<u8>)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let tok = model::tokenizer::tiny_byte_tokenizer();
    let mut cfg = tiny_random_llama(0).config().clone();
    // As small as the 259-token vocabulary allows, so mutations often hit the header.
    (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.tie_word_embeddings) = (4, 4, 1, true);
    (cfg.num_attention_heads, cfg.num_key_value_heads) = (1, Some(1));
    let policy = model::random_policy(cfg, tok, 3, 0.2, Device::Cpu).expect("tiny policy");
    policy.save_hf_dir(dir.path()).expect("save");
    if sharded {
        let all = model::tensors::load_safetensors(&dir.path().join("model.safetensors")).expect("load");
        std::fs::remove_file(dir.path().join("model.safetensors")).expect("rm");
        let names: Vec<&String> = all.keys().collect();
        let (first, second) = names.split_at(names.len() / 2);
        let mut map = serde_json::Map::new();
        for (file, part) in [("a.safetensors", first), ("b.safetensors", second)] {
            model::tensors::save_safetensors(&dir.path().join(file), part.iter().map(|n| (n.as_str(), &all[*n]))).expect("shard");
            for n in part {
                map.insert((*n).clone(), file.into());
            }
        }
        let index = serde_json::json!({"metadata": {}, "weight_map": map});
        std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).expect("index");
    }
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| {
            let e = e.expect("entry");
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).expect("read"))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn fuzz_safetensors_hf_dir() {
    // Input: one selector byte, then the bytes of the file it selects; the other files of
    // the directory stay valid. 0: model.safetensors, 1: config.json (single file),
    // 2: model.safetensors.index.json, 3: a shard (sharded directory).
    let single = hf_dir_files(false);
    let sharded = hf_dir_files(true);
    type Target<'a> = (&'a [(String, Vec<u8>)], &'a str);
    let targets: [Target; 4] =
        [(&single, "model.safetensors"), (&single, "config.json"), (&sharded, "model.safetensors.index.json"), (&sharded, "a.safetensors")];
    let seeds: Vec<Vec<u8>> = targets
        .iter()
        .enumerate()
        .map(|(i, (files, name))| {
            let mut s = vec![i as u8];
            s.extend_from_slice(&files.iter().find(|(n, _)| n == name).expect("file").1);
            s
        })
        .collect();
    let root = tempfile::tempdir().expect("tempdir");
    let counter = std::cell::Cell::new(0u64);
    fuzz::run("fuzz_safetensors_hf_dir", &seeds, fuzz::iterations(200), |bytes| {
        let Some((&sel, rest)) = bytes.split_first() else { return };
        let (files, name) = targets[sel as usize % targets.len()];
        counter.set(counter.get() + 1);
        let dir = root.path().join(counter.get().to_string());
        std::fs::create_dir_all(&dir).expect("mkdir");
        for (n, b) in files {
            std::fs::write(dir.join(n), if n == name { rest } else { b.as_slice() }).expect("write");
        }
        let _ = model::tensors::load_safetensors(&dir.join(name));
        load_and_use(&dir);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn fuzz_tokenizer_json() {
    // Input: a selector byte (0: mutate tokenizer.json, 1: tokenizer_config.json), then the
    // document. Seeds: the byte-level ChatML tokenizer, and the tiny GGUF's BPE tokenizer
    // (merges, added tokens, a bos post-processor).
    let byte_dir = tempfile::tempdir().expect("tempdir");
    model::tokenizer::tiny_byte_tokenizer().save_hf_dir(byte_dir.path()).expect("save");
    let gguf_dir = tempfile::tempdir().expect("tempdir");
    let mut g = tiny_gguf();
    g.kv("tokenizer.ggml.add_bos_token", 7, vec![1]);
    std::fs::write(gguf_dir.path().join("t.gguf"), g.bytes()).expect("write");
    let gguf = model::gguf::GgufFile::open(&gguf_dir.path().join("t.gguf")).expect("open");
    let docs = [
        (std::fs::read(byte_dir.path().join("tokenizer.json")).expect("read"), std::fs::read(byte_dir.path().join("tokenizer_config.json")).expect("read")),
        (
            gguf.tokenizer_json().expect("tokenizer.json").to_string().into_bytes(),
            gguf.tokenizer_config_json().expect("tokenizer_config.json").to_string().into_bytes(),
        ),
    ];
    let mut seeds = Vec::new();
    for (d, (tj, tc)) in docs.iter().enumerate() {
        for (which, doc) in [tj, tc].into_iter().enumerate() {
            let mut s = vec![(2 * d + which) as u8];
            s.extend_from_slice(doc);
            seeds.push(s);
        }
    }
    // Regression input (FUZZ_ITERS=20000 FUZZ_SEED=7): a template post-processor naming a
    // special token it does not define made the crate panic at encode time.
    seeds
        .push(std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz/tokenizer_json_template_undefined_special.bin")).expect("fixture"));
    fuzz::run("fuzz_tokenizer_json", &seeds, fuzz::iterations(300), |bytes| {
        let Some((&sel, rest)) = bytes.split_first() else { return };
        let (tj, tc) = &docs[(sel as usize / 2) % docs.len()];
        let (tj, tc) = if sel % 2 == 0 { (rest, tc.as_slice()) } else { (tj.as_slice(), rest) };
        let Ok(tc) = serde_json::from_slice::<serde_json::Value>(tc) else { return };
        let tj = String::from_utf8_lossy(tj);
        if let Ok(tok) = model::ChatTokenizer::from_json(&tj, tc, &[2], Path::new("fuzz/tokenizer.json")) {
            let _ = tok.encode("<|im_start|>user\nhello, hi 2024<|im_end|>", true);
            if let Ok(ids) = tok.encode_chat(&[ChatMessage::system("s"), ChatMessage::user("hi")], true, Some("x")) {
                let _ = tok.decode(&ids, true);
                let _ = tok.decode(&ids, false);
            }
            let _ = tok.decode(&[0, 1, 2, 3, u32::MAX], true);
        }
    });
}

/// Regression (found by `fuzz_tokenizer_json`, FUZZ_SEED 1, input 5): a tokenizer.json whose
/// decoder entry is broken by a non-UTF-8 run made the tokenizers crate panic inside its
/// deserialiser; it must be a tokenizer error naming the file.
#[test]
fn tokenizer_json_that_panics_the_tokenizers_crate_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    model::tokenizer::tiny_byte_tokenizer().save_hf_dir(dir.path()).expect("save");
    let tc: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("tokenizer_config.json")).expect("read")).expect("json");
    let tj = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz/tokenizer_json_decoder_panic.json")).expect("fixture");
    let err = model::ChatTokenizer::from_json(&String::from_utf8_lossy(&tj), tc, &[2], Path::new("fuzz/tokenizer.json"))
        .expect_err("a malformed tokenizer.json is an error");
    assert!(err.to_string().contains("fuzz/tokenizer.json"), "{err}");
}
