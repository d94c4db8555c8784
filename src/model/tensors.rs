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
    let st = safetensors::SafeTensors::deserialize(&mmap)
        .map_err(|source| ModelError::Safetensors { path: path.to_path_buf(), source })?;
    let mut out = TensorMap::new();
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype()).ok_or_else(|| ModelError::Unsupported {
            path: path.to_path_buf(),
            what: format!("dtype {:?} of tensor `{name}`", view.dtype()),
            detail: "expected F32, F16, BF16, F64 or an integer type".into(),
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
        out.insert(name, t);
    }
    Ok(out)
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
        let dtype = dtype_of(kind).ok_or_else(|| {
            ModelError::InvalidInput(format!("tensor `{name}` has kind {kind:?}, which safetensors cannot hold"))
        })?;
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
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Loads the weights of an HF directory: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`, or (failing both) every `*.safetensors` file in it.
pub fn load_hf_weights(dir: &Path) -> Result<TensorMap> {
    let index = dir.join("model.safetensors.index.json");
    let single = dir.join("model.safetensors");
    let files: Vec<PathBuf> = if single.is_file() {
        vec![single]
    } else if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(io_err(&index))?;
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let parsed: Index =
            serde_json::from_str(&text).map_err(|source| ModelError::Json { path: index.clone(), source })?;
        let shards: std::collections::BTreeSet<&String> = parsed.weight_map.values().collect();
        shards.into_iter().map(|s| dir.join(s)).collect()
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
        out.extend(load_safetensors(&f)?);
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
