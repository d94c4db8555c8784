//! Parquet artifacts: one submodule per artifact schema, each declared once with
//! [`parquet_schema!`]; fixed writer properties so the same rows always give the same
//! bytes. Stages write through `OutputWriter::write_parquet` (stages/mod.rs) and read
//! through `StageContext::read_parquet`; the CLI previews any file with [`preview`].
//!
//! Defining a new artifact schema takes a few lines:
//! ```
//! self_redteam::parquet_schema! {
//!     /// One verdict per game.
//!     pub struct VerdictRow in VerdictSchema ("verdicts", 1) {
//!         /// Game id.
//!         pub game_id: String,
//!         pub refusal: Option<bool>,
//!         pub score: f32,
//!         pub token_ids: Vec<u32>,
//!     }
//! }
//! use self_redteam::schema::ArtifactSchema;
//! let rows = vec![VerdictRow { game_id: "g1".into(), refusal: None, score: 0.5, token_ids: vec![1, 2] }];
//! let bytes = self_redteam::schema::to_parquet_bytes::<VerdictSchema>(&rows).unwrap();
//! assert_eq!(self_redteam::schema::from_parquet_bytes::<VerdictSchema>(bytes).unwrap(), rows);
//! ```
//! Column types: `String`, `bool`, `u32`, `u64`, `i32`, `i64`, `f32`, `f64`, `Option<_>` of
//! those (nullable column), and `Vec<u32|i32|i64|f32|f64|String>` (list column).
pub mod column;
pub mod eval;
pub mod generation;
pub mod judge_fit;
pub mod judge_train;
pub mod judged;
pub mod prep;
pub mod rollout;
pub mod seeds;
pub mod sft_demos;
pub mod update_steps;

pub use column::TextEnum;

use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};

pub use column::Column;

/// Errors of writing or reading an artifact file; each names the schema or file.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("schema {schema}: column {column}: {reason}")]
    Column { schema: &'static str, column: &'static str, reason: String },
    #[error("schema {schema}: {source}")]
    Arrow { schema: &'static str, source: arrow::error::ArrowError },
    #[error("{file}: parquet: {source}")]
    Parquet { file: String, source: parquet::errors::ParquetError },
    #[error("{file}: {source}")]
    Io { file: String, source: std::io::Error },
    /// The Parquet reader panicked on the file's bytes (seen on corrupt column metadata:
    /// "column start and length should not be negative"); caught here so a bad file is an
    /// error that names it, never a crash.
    #[error("{file}: corrupt Parquet file: {message}")]
    Corrupt { file: String, message: String },
}

/// Run a Parquet/Arrow read of `file`, turning a panic of those libraries into
/// [`SchemaError::Corrupt`].
fn guarded<T>(file: &str, read: impl FnOnce() -> Result<T, SchemaError>) -> Result<T, SchemaError> {
    catch_reader_panic(read, |message| SchemaError::Corrupt { file: file.to_string(), message })
}

/// Run a read of a file through a third-party decoder (Parquet, Arrow) that may panic on
/// corrupt bytes: a panic becomes `on_panic(message)`, the caller's error naming the file.
/// Used by every Parquet reader (artifacts, `show`, `judge FILE`, custom suites).
/// The default panic hook's "thread panicked at …" line is not printed for a caught reader
/// panic: the error that names the file says it once.
pub fn catch_reader_panic<T, E>(read: impl FnOnce() -> Result<T, E>, on_panic: impl FnOnce(String) -> E) -> Result<T, E> {
    quiet_panics_hook();
    QUIET_PANICS.with(|q| q.set(q.get() + 1));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read));
    QUIET_PANICS.with(|q| q.set(q.get() - 1));
    out.unwrap_or_else(|payload| {
        let message = crate::engine::panic_message(payload.as_ref()).unwrap_or_default();
        Err(on_panic(format!("the Parquet reader failed on the file's bytes: {message}")))
    })
}

thread_local! {
    /// > 0 while this thread runs a read whose panics `catch_reader_panic` reports itself.
    static QUIET_PANICS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Install (once per process) a panic hook that stays silent on threads inside
/// `catch_reader_panic` and hands every other panic to the hook that was there before.
fn quiet_panics_hook() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET_PANICS.with(|q| q.get()) == 0 {
                previous(info);
            }
        }));
    });
}

/// One Parquet artifact's schema. Implemented by [`parquet_schema!`].
pub trait ArtifactSchema {
    /// The row type (a plain struct).
    type Row;
    /// Schema name (also the conventional file stem: `NAME.parquet`).
    const NAME: &'static str;
    /// Bump when columns change.
    const VERSION: u32;
    fn arrow_schema() -> SchemaRef;
    fn to_batch(rows: &[Self::Row]) -> Result<RecordBatch, SchemaError>;
    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self::Row>, SchemaError>;
    /// `name@version`, recorded in manifests.
    fn tag() -> String {
        format!("{}@{}", Self::NAME, Self::VERSION)
    }
    /// Conventional file name `NAME.parquet`.
    fn file_name() -> String {
        format!("{}.parquet", Self::NAME)
    }
}

/// Rows per row group. Fixed so the byte layout depends on the rows only.
pub const ROW_GROUP_ROWS: usize = 64 * 1024;
/// zstd level of every artifact.
pub const ZSTD_LEVEL: i32 = 3;

/// The one set of writer properties: no timestamps or versions in the footer
/// (`created_by` is a constant), fixed compression and row group size.
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_created_by("self-redteam".to_string())
        .set_writer_version(WriterVersion::PARQUET_1_0)
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL).expect("level 3 is a valid zstd level")))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_max_row_group_bytes(None)
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .build()
}

/// Encode rows as Parquet bytes.
pub fn to_parquet_bytes<S: ArtifactSchema>(rows: &[S::Row]) -> Result<Vec<u8>, SchemaError> {
    let batch = S::to_batch(rows)?;
    let mut buf = Vec::new();
    {
        let mut w = ArrowWriter::try_new(&mut buf, S::arrow_schema(), Some(writer_properties()))
            .map_err(|source| SchemaError::Parquet { file: S::file_name(), source })?;
        w.write(&batch).map_err(|source| SchemaError::Parquet { file: S::file_name(), source })?;
        w.close().map_err(|source| SchemaError::Parquet { file: S::file_name(), source })?;
    }
    Ok(buf)
}

/// Write rows to `path` (a plain write; the store does the fsync and publish).
pub fn write_parquet<S: ArtifactSchema>(path: &Path, rows: &[S::Row]) -> Result<(), SchemaError> {
    let bytes = to_parquet_bytes::<S>(rows)?;
    std::fs::write(path, bytes).map_err(|source| SchemaError::Io { file: path.display().to_string(), source })
}

/// Decode Parquet bytes into rows, checking the columns against the schema.
pub fn from_parquet_bytes<S: ArtifactSchema>(bytes: Vec<u8>) -> Result<Vec<S::Row>, SchemaError> {
    read_batches::<S, _>(bytes::Bytes::from(bytes), &S::file_name())
}

/// Read rows from a Parquet file.
pub fn read_parquet<S: ArtifactSchema>(path: &Path) -> Result<Vec<S::Row>, SchemaError> {
    let file = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| SchemaError::Io { file: file.clone(), source })?;
    read_batches::<S, _>(f, &file)
}

fn read_batches<S: ArtifactSchema, R: parquet::file::reader::ChunkReader + 'static>(src: R, file: &str) -> Result<Vec<S::Row>, SchemaError> {
    guarded(file, || read_batches_unguarded::<S, R>(src, file))
}

fn read_batches_unguarded<S: ArtifactSchema, R: parquet::file::reader::ChunkReader + 'static>(src: R, file: &str) -> Result<Vec<S::Row>, SchemaError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(src)
        .map_err(|source| SchemaError::Parquet { file: file.to_string(), source })?
        .build()
        .map_err(|source| SchemaError::Parquet { file: file.to_string(), source })?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|source| SchemaError::Arrow { schema: S::NAME, source })?;
        rows.extend(S::from_batch(&batch)?);
    }
    Ok(rows)
}

/// The first rows of a Parquet file as display strings.
#[derive(Debug, Clone, PartialEq)]
pub struct Preview {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Rows in the whole file.
    pub total_rows: u64,
}

/// Column names and the first `n` rows of any Parquet file as display strings (`show`).
pub fn preview(path: &Path, n: usize) -> Result<Preview, SchemaError> {
    guarded(&path.display().to_string(), || preview_unguarded(path, n))
}

fn preview_unguarded(path: &Path, n: usize) -> Result<Preview, SchemaError> {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let file = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| SchemaError::Io { file: file.clone(), source })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(f).map_err(|source| SchemaError::Parquet { file: file.clone(), source })?;
    let total = builder.metadata().file_metadata().num_rows().max(0) as u64;
    let columns: Vec<String> = builder.schema().fields().iter().map(|f| f.name().clone()).collect();
    let reader = builder.with_batch_size(n.max(1)).build().map_err(|source| SchemaError::Parquet { file: file.clone(), source })?;
    let mut rows = Vec::new();
    let opts = FormatOptions::default().with_null("null");
    for batch in reader {
        let batch = batch.map_err(|source| SchemaError::Arrow { schema: "preview", source })?;
        let fmts: Vec<ArrayFormatter> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
            .collect::<Result<_, _>>()
            .map_err(|source| SchemaError::Arrow { schema: "preview", source })?;
        for r in 0..batch.num_rows() {
            if rows.len() >= n {
                break;
            }
            rows.push(fmts.iter().map(|f| f.value(r).to_string()).collect());
        }
        if rows.len() >= n {
            break;
        }
    }
    Ok(Preview { columns, rows, total_rows: total })
}

#[doc(hidden)]
pub use arrow as __arrow;
#[doc(hidden)]
pub fn __arc<T>(t: T) -> Arc<T> {
    Arc::new(t)
}

/// Declare a Parquet artifact: a row struct and a schema type implementing
/// [`ArtifactSchema`]. Columns are the struct's fields, in order, declared once.
#[macro_export]
macro_rules! parquet_schema {
    (
        $(#[$meta:meta])*
        pub struct $row:ident in $schema:ident ($name:literal, $version:literal) {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $row {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        #[doc = concat!("Parquet schema `", $name, "` (rows: [`", stringify!($row), "`]).")]
        #[derive(Debug, Clone, Copy)]
        pub struct $schema;

        impl $crate::schema::ArtifactSchema for $schema {
            type Row = $row;
            const NAME: &'static str = $name;
            const VERSION: u32 = $version;

            fn arrow_schema() -> $crate::schema::__arrow::datatypes::SchemaRef {
                use $crate::schema::Column;
                $crate::schema::__arc($crate::schema::__arrow::datatypes::Schema::new(vec![
                    $( $crate::schema::__arrow::datatypes::Field::new(stringify!($field), <$ty as Column>::data_type(), <$ty as Column>::NULLABLE), )*
                ]))
            }

            fn to_batch(rows: &[$row]) -> Result<$crate::schema::__arrow::array::RecordBatch, $crate::schema::SchemaError> {
                use $crate::schema::Column;
                let columns: Vec<$crate::schema::__arrow::array::ArrayRef> = vec![
                    $( <$ty as Column>::to_array(rows.iter().map(|r| &r.$field)), )*
                ];
                $crate::schema::__arrow::array::RecordBatch::try_new(Self::arrow_schema(), columns)
                    .map_err(|source| $crate::schema::SchemaError::Arrow { schema: $name, source })
            }

            fn from_batch(batch: &$crate::schema::__arrow::array::RecordBatch) -> Result<Vec<$row>, $crate::schema::SchemaError> {
                use $crate::schema::Column;
                let n = batch.num_rows();
                $(
                    let mut $field = {
                        let col = batch.column_by_name(stringify!($field)).ok_or_else(|| $crate::schema::SchemaError::Column {
                            schema: $name, column: stringify!($field), reason: "missing".into(),
                        })?;
                        <$ty as Column>::from_array(col.as_ref()).map_err(|reason| $crate::schema::SchemaError::Column {
                            schema: $name, column: stringify!($field), reason,
                        })?.into_iter()
                    };
                )*
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    out.push($row { $( $field: $field.next().expect("column length equals batch rows"), )* });
                }
                Ok(out)
            }
        }
    };
}
