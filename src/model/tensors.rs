//! Named tensor maps <-> safetensors files (deterministic bytes), and HF weight directories
//! (single file or sharded with `model.safetensors.index.json`). Used by `policy.rs` for
//! checkpoints and by the update stage for optimiser state. Never reads pickle.
use super::error::{io_err, ModelError, Result};
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Tensors by name. A BTreeMap so that iteration (and thus every file written) is ordered.
pub type TensorMap = BTreeMap<String, Tensor>;

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

/// Reads every tensor of one safetensors file onto the CPU, in its stored dtype.
pub fn load_safetensors(path: &Path) -> Result<TensorMap> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    // SAFETY: the map is read-only and dropped before this function returns; the bytes are
    // copied into tensors. A concurrent writer would be a bug of the store (which publishes
    // by rename), not something this reader can guard against.
    #[allow(unsafe_code)]
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))?;
    check_header_length(path, &mmap)?;
    let st = safetensors::SafeTensors::deserialize(&mmap).map_err(|source| ModelError::Safetensors { path: path.to_path_buf(), source })?;
    let mut out = TensorMap::new();
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype()).ok_or_else(|| ModelError::Unsupported {
            path: path.to_path_buf(),
            what: format!("dtype {:?} of tensor `{name}`", view.dtype()),
            detail: "expected F32, F16, BF16, F64 or an integer type".into(),
        })?;
        // The crate checked that the data is exactly dtype × product(shape) bytes inside the
        // file (offsets contiguous, in order, product without overflow), so the copy below is
        // bounded by the file's size; a dim can still exceed i64 when another one is 0.
        let shape: Vec<i64> =
            view.shape().iter().map(|&d| i64::try_from(d)).collect::<std::result::Result<_, _>>().map_err(|_| ModelError::SafetensorsTensor {
                path: path.to_path_buf(),
                tensor: name.clone(),
                expected: format!("dims that fit in an i64, got {:?}", view.shape()),
            })?;
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
        out.insert(name, t);
    }
    Ok(out)
}

/// The 8-byte little-endian header length must leave room for the header inside the file.
/// The crate checks this too, but reports only `header too large` / `invalid header length`;
/// this names both numbers.
fn check_header_length(path: &Path, bytes: &[u8]) -> Result<()> {
    let err = |expected: String| ModelError::SafetensorsHeader { path: path.to_path_buf(), expected };
    let Some(len_bytes) = bytes.get(..8) else {
        return Err(err(format!("an 8-byte header length, but the file has {} bytes", bytes.len())));
    };
    let n = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
    let room = bytes.len() as u64 - 8;
    if n > room {
        return Err(err(format!("a header length of at most the {room} bytes after it, got {n}")));
    }
    Ok(())
}

/// Serialises tensors to safetensors bytes: same names and values give the same bytes
/// (names sorted, fixed metadata `{"format": "pt"}`, no timestamps).
pub fn safetensors_bytes<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>) -> Result<Vec<u8>> {
    struct Owned {
        dtype: Dtype,
        shape: Vec<usize>,
        data: Vec<u8>,
    }
    impl safetensors::View for &Owned {
        fn dtype(&self) -> Dtype {
            self.dtype
        }
        fn shape(&self) -> &[usize] {
            &self.shape
        }
        fn data(&self) -> std::borrow::Cow<'_, [u8]> {
            std::borrow::Cow::Borrowed(&self.data)
        }
        fn data_len(&self) -> usize {
            self.data.len()
        }
    }
    let mut owned: Vec<(String, Owned)> = Vec::new();
    for (name, t) in tensors {
        let t = t.detach().to_device(tch::Device::Cpu).contiguous();
        let kind = t.kind();
        let dtype = dtype_of(kind).ok_or_else(|| ModelError::InvalidInput(format!("tensor `{name}` has kind {kind:?}, which safetensors cannot hold")))?;
        let numel = t.numel();
        let mut data = vec![0u8; numel * kind.elt_size_in_bytes()];
        t.f_copy_data_u8(&mut data, numel)?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        owned.push((name.to_string(), Owned { dtype, shape, data }));
    }
    owned.sort_by(|a, b| a.0.cmp(&b.0));
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(owned.iter().map(|(n, o)| (n.as_str(), o)), Some(metadata))
        .map_err(|source| ModelError::Safetensors { path: PathBuf::from("<memory>"), source })
}

/// Writes tensors to `path` atomically (temporary file in the same directory, then rename).
pub fn save_safetensors<'a>(path: &Path, tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>) -> Result<()> {
    let bytes = safetensors_bytes(tensors)?;
    write_atomic(path, &bytes)
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("")));
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// A shard name from an index must be one plain `*.safetensors` file name: `dir.join` of an
/// absolute name replaces `dir`, and `..` leaves it, so either would load a file from
/// anywhere on the machine.
fn shard_path(dir: &Path, index: &Path, shard: &str) -> Result<PathBuf> {
    let mut parts = Path::new(shard).components();
    let plain = matches!((parts.next(), parts.next()), (Some(std::path::Component::Normal(_)), None))
        && !shard.contains(['/', '\\'])
        && shard.ends_with(".safetensors");
    if !plain {
        return Err(ModelError::ShardIndex {
            path: index.to_path_buf(),
            shard: shard.to_string(),
            expected: "a plain `*.safetensors` file name inside the model directory (no `..`, no `/`, not absolute)".into(),
        });
    }
    Ok(dir.join(shard))
}

/// Loads the weights of an HF directory: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`, or (failing both) every `*.safetensors` file in it.
/// A tensor name in two files is an error (one would silently replace the other), and so is
/// a tensor the index assigns to a shard that does not hold it.
pub fn load_hf_weights(dir: &Path) -> Result<TensorMap> {
    let index = dir.join("model.safetensors.index.json");
    let single = dir.join("model.safetensors");
    // Tensor names each shard must hold, per the index.
    let mut expected: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    let files: Vec<PathBuf> = if single.is_file() {
        vec![single]
    } else if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(io_err(&index))?;
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let parsed: Index = serde_json::from_str(&text).map_err(|source| ModelError::Json { path: index.clone(), source })?;
        for (name, shard) in parsed.weight_map {
            expected.entry(shard_path(dir, &index, &shard)?).or_default().push(name);
        }
        expected.keys().cloned().collect()
    } else {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        found.sort();
        found
    };
    if files.is_empty() {
        return Err(ModelError::NotAModel { path: dir.to_path_buf() });
    }
    let mut out = TensorMap::new();
    for f in files {
        let shard = load_safetensors(&f)?;
        for name in expected.get(&f).into_iter().flatten() {
            if !shard.contains_key(name) {
                return Err(ModelError::ShardIndex {
                    path: index.clone(),
                    shard: f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                    expected: format!("tensor `{name}` in this shard, as the index says"),
                });
            }
        }
        for (name, t) in shard {
            if out.contains_key(&name) {
                return Err(ModelError::DuplicateTensor { path: f.clone(), name });
            }
            out.insert(name, t);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_roundtrip_is_exact_and_deterministic() {
        let a = Tensor::from_slice(&[1.5f32, -2.0, 3.25, 0.0, 7.0, 8.0]).view([2, 3]);
        let b = Tensor::from_slice(&[1i64, 2, 3]);
        let c = a.to_kind(Kind::BFloat16);
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.safetensors");
        let items = [("b", &b), ("a", &a), ("c", &c)];
        save_safetensors(&p, items).expect("save");
        let first = std::fs::read(&p).expect("read");
        let reordered = [("c", &c), ("a", &a), ("b", &b)];
        assert_eq!(safetensors_bytes(reordered).expect("bytes"), first);
        let back = load_safetensors(&p).expect("load");
        assert_eq!(back.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(back["a"].equal(&a));
        assert!(back["b"].equal(&b));
        assert_eq!(back["c"].kind(), Kind::BFloat16);
        assert!(back["c"].equal(&c));
    }

    #[test]
    fn truncated_safetensors_is_a_typed_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.safetensors");
        let a = Tensor::from_slice(&[1.0f32; 64]);
        save_safetensors(&p, [("a", &a)]).expect("save");
        let bytes = std::fs::read(&p).expect("read");
        std::fs::write(&p, &bytes[..bytes.len() - 10]).expect("write");
        match load_safetensors(&p) {
            Err(ModelError::Safetensors { path, .. }) => assert_eq!(path, p),
            other => panic!("expected a Safetensors error, got {other:?}"),
        }
    }
}
