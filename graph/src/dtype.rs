//! TensorFlow `DataType` numbers ↔ psflow dtypes.

use psflow_kernels::DType;
use psflow_proto::tensorflow::DataType;

/// The psflow dtype of a raw TensorFlow dtype number (reference types map
/// to their base type); `None` for types psflow cannot hold.
pub fn dtype_from_proto(raw: i32) -> Option<DType> {
    let base = if raw > 100 { raw - 100 } else { raw };
    match DataType::try_from(base).ok()? {
        DataType::DtFloat => Some(DType::F32),
        DataType::DtDouble => Some(DType::F64),
        DataType::DtInt32 => Some(DType::I32),
        DataType::DtInt64 => Some(DType::I64),
        DataType::DtUint8 => Some(DType::U8),
        DataType::DtBool => Some(DType::Bool),
        _ => None,
    }
}

pub fn dtype_to_proto(d: DType) -> DataType {
    match d {
        DType::F32 => DataType::DtFloat,
        DType::F64 => DataType::DtDouble,
        DType::I32 => DataType::DtInt32,
        DType::I64 => DataType::DtInt64,
        DType::U8 => DataType::DtUint8,
        DType::Bool => DataType::DtBool,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for d in [
            DType::F32,
            DType::F64,
            DType::I32,
            DType::I64,
            DType::U8,
            DType::Bool,
        ] {
            assert_eq!(dtype_from_proto(dtype_to_proto(d) as i32), Some(d));
        }
        assert_eq!(
            dtype_from_proto(DataType::DtFloatRef as i32),
            Some(DType::F32)
        );
        assert_eq!(dtype_from_proto(DataType::DtString as i32), None);
        assert_eq!(dtype_from_proto(DataType::DtHalf as i32), None);
        assert_eq!(dtype_from_proto(999), None);
    }
}
