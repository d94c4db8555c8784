//! Rust type ↔ Arrow column mapping used by `parquet_schema!`: one [`Column`] impl per
//! supported field type.
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, ListArray, ListBuilder, PrimitiveArray, PrimitiveBuilder, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Int32Type, Int64Type, UInt32Type, UInt64Type};

/// A Rust type that is one Arrow column.
pub trait Column: Sized {
    const NULLABLE: bool;
    fn data_type() -> DataType;
    fn to_array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef
    where
        Self: 'a;
    /// Decode a whole column; a type mismatch or an unexpected null is an error string.
    fn from_array(array: &dyn Array) -> Result<Vec<Self>, String>;
}

fn downcast<'a, T: 'static>(array: &'a dyn Array, what: &str) -> Result<&'a T, String> {
    array.as_any().downcast_ref::<T>().ok_or_else(|| format!("expected {what}, found {}", array.data_type()))
}

fn no_nulls(array: &dyn Array) -> Result<(), String> {
    if array.null_count() > 0 {
        Err(format!("{} unexpected nulls", array.null_count()))
    } else {
        Ok(())
    }
}

macro_rules! primitive_column {
    ($t:ty, $arrow:ty, $dt:expr) => {
        impl Column for $t {
            const NULLABLE: bool = false;
            fn data_type() -> DataType {
                $dt
            }
            fn to_array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
                Arc::new(PrimitiveArray::<$arrow>::from_iter_values(values.copied()))
            }
            fn from_array(array: &dyn Array) -> Result<Vec<Self>, String> {
                let a = downcast::<PrimitiveArray<$arrow>>(array, stringify!($dt))?;
                no_nulls(a)?;
                Ok(a.values().to_vec())
            }
        }
        impl Column for Option<$t> {
            const NULLABLE: bool = true;
            fn data_type() -> DataType {
                $dt
            }
            fn to_array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
                Arc::new(values.copied().collect::<PrimitiveArray<$arrow>>())
            }
            fn from_array(array: &dyn Array) -> Result<Vec<Self>, String> {
                let a = downcast::<PrimitiveArray<$arrow>>(array, stringify!($dt))?;
                Ok(a.iter().collect())
            }
        }
        impl Column for Vec<$t> {
            const NULLABLE: bool = false;
            fn data_type() -> DataType {
                DataType::List(Arc::new(Field::new("item", $dt, true)))
            }
            fn to_array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
                let mut b = ListBuilder::new(PrimitiveBuilder::<$arrow>::new());
                for v in values {
                    b.values().append_slice(v);
                    b.append(true);
                }
                Arc::new(b.finish())
            }
            fn from_array(array: &dyn Array) -> Result<Vec<Self>, String> {
                let a = downcast::<ListArray>(array, "List")?;
                no_nulls(a)?;
                (0..a.len())
                    .map(|i| {
                        let inner = a.value(i);
                        let p = downcast::<PrimitiveArray<$arrow>>(inner.as_ref(), stringify!($dt))?;
                        no_nulls(p)?;
                        Ok(p.values().to_vec())
                    })
                    .collect()
            }
        }
    };
}
primitive_column!(u32, UInt32Type, DataType::UInt32);
primitive_column!(u64, UInt64Type, DataType::UInt64);
primitive_column!(i32, Int32Type, DataType::Int32);
primitive_column!(i64, Int64Type, DataType::Int64);
primitive_column!(f32, Float32Type, DataType::Float32);
primitive_column!(f64, Float64Type, DataType::Float64);

impl Column for bool {
    const NULLABLE: bool = false;
    fn data_type() -> DataType {
        DataType::Boolean
    }
    fn to_array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
        Arc::new(values.map(|b| Some(*b)).collect::<BooleanArray>())
    }
    fn from_array(array: &dyn Array) -> Result<Vec<Self>, String> {
        let a = downcast::<BooleanArray>(array, "Boolean")?;
        no_nulls(a)?;
        Ok(a.values().iter().collect())
    }
}

impl Column for Option<bool> {
    const NULLABLE: bool = true;
    fn data_type() -> DataType {
        DataType::Boolean
    }
    fn to_array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
        Arc::new(values.copied().collect::<BooleanArray>())
    }
    fn from_array(array: &dyn Array) -> Result<Vec<Self>, String> {
        Ok(downcast::<BooleanArray>(array, "Boolean")?.iter().collect())
    }
}

impl Column for String {
    const NULLABLE: bool = false;
    fn data_type() -> DataType {
        DataType::Utf8
    }
    fn to_array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
        Arc::new(values.map(|s| Some(s.as_str())).collect::<StringArray>())
    }
    fn from_array(array: &dyn Array) -> Result<Vec<Self>, String> {
        let a = downcast::<StringArray>(array, "Utf8")?;
        no_nulls(a)?;
        Ok(a.iter().map(|s| s.unwrap_or_default().to_string()).collect())
    }
}

impl Column for Option<String> {
    const NULLABLE: bool = true;
    fn data_type() -> DataType {
        DataType::Utf8
    }
    fn to_array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
        Arc::new(values.map(|s| s.as_deref()).collect::<StringArray>())
    }
    fn from_array(array: &dyn Array) -> Result<Vec<Self>, String> {
        Ok(downcast::<StringArray>(array, "Utf8")?.iter().map(|s| s.map(str::to_string)).collect())
    }
}

impl Column for Vec<String> {
    const NULLABLE: bool = false;
    fn data_type() -> DataType {
        DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
    }
    fn to_array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
        let mut b = ListBuilder::new(StringBuilder::new());
        for v in values {
            for s in v {
                b.values().append_value(s);
            }
            b.append(true);
        }
        Arc::new(b.finish())
    }
    fn from_array(array: &dyn Array) -> Result<Vec<Self>, String> {
        let a = downcast::<ListArray>(array, "List")?;
        no_nulls(a)?;
        (0..a.len())
            .map(|i| {
                let inner = a.value(i);
                let s = downcast::<StringArray>(inner.as_ref(), "Utf8")?;
                no_nulls(s)?;
                Ok(s.iter().map(|x| x.unwrap_or_default().to_string()).collect())
            })
            .collect()
    }
}

/// A closed set of names stored as a Utf8 column — the same bytes as the plain string column it
/// types — and decoded strictly: a value outside the set is an error that names it. Used for
/// `label`, `split` and `data_type` (`text_enum_column!` below lists the types).
pub trait TextEnum: Sized + Copy + 'static {
    /// Every value, in the order error messages list them.
    const VALUES: &'static [Self];
    fn as_str(self) -> &'static str;
    fn from_text(s: &str) -> Option<Self> {
        Self::VALUES.iter().copied().find(|v| v.as_str() == s)
    }
}

fn text_enum_values<T: TextEnum>(array: &dyn Array) -> Result<Vec<Option<T>>, String> {
    downcast::<StringArray>(array, "Utf8")?
        .iter()
        .map(|v| match v {
            None => Ok(None),
            Some(s) => T::from_text(s).map(Some).ok_or_else(|| {
                let names: Vec<&str> = T::VALUES.iter().map(|v| v.as_str()).collect();
                format!("{s:?} is not one of {}", names.join(", "))
            }),
        })
        .collect()
}

macro_rules! text_enum_column {
    ($($t:ty),* $(,)?) => {$(
        impl Column for $t {
            const NULLABLE: bool = false;
            fn data_type() -> DataType {
                DataType::Utf8
            }
            fn to_array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
                Arc::new(values.map(|v| Some(TextEnum::as_str(*v))).collect::<StringArray>())
            }
            fn from_array(array: &dyn Array) -> Result<Vec<Self>, String> {
                no_nulls(array)?;
                Ok(text_enum_values::<$t>(array)?.into_iter().flatten().collect())
            }
        }
    )*};
}
text_enum_column!(crate::game::SeedLabel, crate::game::SeedKind, crate::schema::seeds::Split);

#[cfg(test)]
mod text_enum_tests {
    use super::*;
    use crate::game::SeedKind;

    #[test]
    fn text_enum_columns_are_plain_strings_and_reject_unknown_values() {
        let kinds = [SeedKind::VanillaBenign, SeedKind::GeneratedHarmful];
        let array = SeedKind::to_array(kinds.iter());
        let as_strings = String::from_array(array.as_ref()).expect("a Utf8 column");
        assert_eq!(as_strings, ["vanilla_benign", "generated_harmful"]);
        assert_eq!(SeedKind::from_array(array.as_ref()).expect("decodes"), kinds);
        let bad = String::to_array(["vanilla_benign".to_string(), "Harmful".to_string()].iter());
        let err = SeedKind::from_array(bad.as_ref()).expect_err("unknown value");
        assert!(err.contains("\"Harmful\" is not one of generated_harmful"), "{err}");
        let nulls = <Option<String>>::to_array([Some("vanilla_benign".to_string()), None].iter());
        assert!(SeedKind::from_array(nulls.as_ref()).is_err());
    }
}
