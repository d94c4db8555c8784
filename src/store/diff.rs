//! Where two versions of one artifact file first differ, in the file's own terms: a Parquet
//! file by column and row (with both values), a safetensors file by tensor (with how many
//! elements differ and by how much), anything else by byte offset. `verify --recompute` and
//! the reproducibility tests report this instead of printing the bytes.
use std::path::Path;

/// Longest excerpt of one value in a report.
const EXCERPT: usize = 96;

/// `None` when the two files have the same bytes; otherwise one sentence naming the first
/// difference. A file that cannot be parsed as its extension says falls back to bytes.
pub fn first_difference(a: &Path, b: &Path) -> std::io::Result<Option<String>> {
    let (x, y) = (std::fs::read(a)?, std::fs::read(b)?);
    if x == y {
        return Ok(None);
    }
    let ext = a.extension().and_then(|e| e.to_str()).unwrap_or("");
    let structured = match ext {
        "parquet" => parquet_difference(x.clone(), y.clone()),
        "safetensors" => safetensors_difference(&x, &y),
        _ => None,
    };
    Ok(Some(structured.unwrap_or_else(|| byte_difference(&x, &y))))
}

fn byte_difference(x: &[u8], y: &[u8]) -> String {
    let at = x.iter().zip(y).position(|(p, q)| p != q).unwrap_or(x.len().min(y.len()));
    format!("bytes differ from offset {at} (sizes {} and {})", x.len(), y.len())
}

/// Every cell of a Parquet file as display text, column-major: (column names, rows).
fn parquet_cells(bytes: Vec<u8>) -> Option<(Vec<String>, Vec<Vec<String>>)> {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes)).ok()?;
    let columns: Vec<String> = builder.schema().fields().iter().map(|f| f.name().clone()).collect();
    let mut rows = Vec::new();
    let opts = FormatOptions::default().with_null("null");
    for batch in builder.build().ok()? {
        let batch = batch.ok()?;
        let fmts: Vec<ArrayFormatter> = batch.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &opts)).collect::<Result<_, _>>().ok()?;
        for r in 0..batch.num_rows() {
            rows.push(fmts.iter().map(|f| f.value(r).to_string()).collect());
        }
    }
    Some((columns, rows))
}

fn parquet_difference(x: Vec<u8>, y: Vec<u8>) -> Option<String> {
    let (cols_a, rows_a) = super::super::schema::catch_reader_panic(|| parquet_cells(x).ok_or(()), |_| ()).ok()?;
    let (cols_b, rows_b) = super::super::schema::catch_reader_panic(|| parquet_cells(y).ok_or(()), |_| ()).ok()?;
    if cols_a != cols_b {
        return Some(format!("columns differ: {cols_a:?} vs {cols_b:?}"));
    }
    for (r, (ra, rb)) in rows_a.iter().zip(&rows_b).enumerate() {
        if let Some(c) = ra.iter().zip(rb).position(|(p, q)| p != q) {
            let differing = rows_a.iter().zip(&rows_b).filter(|(p, q)| p[c] != q[c]).count();
            let (p, q) = excerpts(&ra[c], &rb[c]);
            return Some(format!("column {}, row {r} (first of {differing} differing rows in it): {p} vs {q}", cols_a[c]));
        }
    }
    if rows_a.len() != rows_b.len() {
        return Some(format!("{} vs {} rows (the common rows are equal)", rows_a.len(), rows_b.len()));
    }
    Some("equal columns and values; the files differ in encoding or metadata".into())
}

/// The two values around their first differing character, each at most `EXCERPT` long.
fn excerpts(a: &str, b: &str) -> (String, String) {
    let (ca, cb): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if ca.len() <= EXCERPT && cb.len() <= EXCERPT {
        return (a.to_string(), b.to_string());
    }
    let at = ca.iter().zip(&cb).position(|(p, q)| p != q).unwrap_or(ca.len().min(cb.len()));
    let start = at.saturating_sub(EXCERPT / 2);
    let cut = |c: &[char]| -> String {
        let end = (start + EXCERPT).min(c.len());
        let s: String = c[start.min(c.len())..end].iter().collect();
        format!("{}{s}{}", if start > 0 { "…" } else { "" }, if end < c.len() { "…" } else { "" })
    };
    (cut(&ca), cut(&cb))
}

fn safetensors_difference(x: &[u8], y: &[u8]) -> Option<String> {
    use safetensors::SafeTensors;
    let (a, b) = (SafeTensors::deserialize(x).ok()?, SafeTensors::deserialize(y).ok()?);
    let mut names_a: Vec<String> = a.names().into_iter().map(str::to_string).collect();
    let mut names_b: Vec<String> = b.names().into_iter().map(str::to_string).collect();
    names_a.sort();
    names_b.sort();
    if names_a != names_b {
        return Some(format!("tensor names differ: {} vs {} tensors", names_a.len(), names_b.len()));
    }
    let mut differing = Vec::new();
    for name in &names_a {
        let (ta, tb) = (a.tensor(name).ok()?, b.tensor(name).ok()?);
        if ta.dtype() != tb.dtype() || ta.shape() != tb.shape() {
            differing.push(format!("{name} ({:?} {:?} vs {:?} {:?})", ta.dtype(), ta.shape(), tb.dtype(), tb.shape()));
        } else if ta.data() != tb.data() {
            differing.push(match (values(ta.dtype(), ta.data()), values(tb.dtype(), tb.data())) {
                (Some(va), Some(vb)) => {
                    let n = va.iter().zip(&vb).filter(|(p, q)| p.to_bits() != q.to_bits()).count();
                    let max = va.iter().zip(&vb).map(|(p, q)| (p - q).abs()).fold(0.0f64, f64::max);
                    format!("{name} ({n} of {} elements, max |Δ| {max:.3e})", va.len())
                }
                _ => format!("{name} (bytes)"),
            });
        }
    }
    let first = differing.first().cloned().unwrap_or_else(|| "equal tensors; the files differ in their header".into());
    Some(if differing.len() > 1 { format!("tensor {first}, and {} more tensors", differing.len() - 1) } else { format!("tensor {first}") })
}

fn values(dtype: safetensors::Dtype, data: &[u8]) -> Option<Vec<f64>> {
    use safetensors::Dtype;
    let v = match dtype {
        Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect(),
        Dtype::F64 => data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect(),
        Dtype::BF16 => data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
        _ => return None,
    };
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_report_names_the_tensor_and_the_size_of_the_change() {
        let tmp = tempfile::tempdir().expect("tmp");
        let write = |name: &str, w: [f32; 3]| {
            let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
            let same: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
            let views = vec![
                ("a.weight".to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &same).expect("view")),
                ("b.weight".to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3], &bytes).expect("view")),
            ];
            let p = tmp.path().join(name);
            std::fs::write(&p, safetensors::serialize(views, None).expect("serialize")).expect("write");
            p
        };
        let a = write("a.safetensors", [1.0, 2.0, 3.0]);
        let b = write("b.safetensors", [1.0, 2.0, 3.0 + 2.0f32.powi(-20)]);
        assert_eq!(first_difference(&a, &a).expect("read"), None);
        let d = first_difference(&a, &b).expect("read").expect("differs");
        assert!(d.starts_with("tensor b.weight (1 of 3 elements, max |Δ| 9.537e-7)"), "{d}");
    }

    #[test]
    fn other_files_report_the_first_differing_byte() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (a, b) = (tmp.path().join("a.json"), tmp.path().join("b.json"));
        std::fs::write(&a, b"{\"x\": 1}").expect("write");
        std::fs::write(&b, b"{\"x\": 2}").expect("write");
        assert_eq!(first_difference(&a, &b).expect("read").as_deref(), Some("bytes differ from offset 6 (sizes 8 and 8)"));
    }

    #[test]
    fn long_values_are_cut_around_their_first_difference() {
        let a = format!("[{}1]", "0, ".repeat(100));
        let b = format!("[{}2]", "0, ".repeat(100));
        let (p, q) = excerpts(&a, &b);
        assert!(p.starts_with('…') && p.contains("0, 1]") && q.contains("0, 2]"), "{p} / {q}");
        assert!(p.chars().count() <= EXCERPT + 2, "{p}");
    }
}
