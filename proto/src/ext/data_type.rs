//! Names of [`DataType`]s as TensorFlow's Python API spells them.

use crate::tensorflow::DataType;

impl DataType {
    /// `float32`, `int64`, … (the `_ref` suffix for reference types).
    pub fn short_name(self) -> String {
        let name = self.as_str_name().trim_start_matches("DT_").to_lowercase();
        match name.as_str() {
            "float" => "float32".into(),
            "double" => "float64".into(),
            "half" => "float16".into(),
            "float_ref" => "float32_ref".into(),
            "double_ref" => "float64_ref".into(),
            _ => name,
        }
    }
}

/// The name of a raw dtype number, also for numbers this build does not know.
pub fn dtype_name(raw: i32) -> String {
    match DataType::try_from(raw) {
        Ok(t) => t.short_name(),
        Err(_) => format!("DataType({raw})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(DataType::DtFloat as i32, 1);
        assert_eq!(DataType::DtInt64 as i32, 9);
        assert_eq!(DataType::DtBool as i32, 10);
        assert_eq!(DataType::DtFloatRef as i32, 101);
        assert_eq!(DataType::DtFloat.short_name(), "float32");
        assert_eq!(DataType::DtUint8.short_name(), "uint8");
        assert_eq!(DataType::DtHalf.short_name(), "float16");
        assert_eq!(dtype_name(1000), "DataType(1000)");
    }
}
