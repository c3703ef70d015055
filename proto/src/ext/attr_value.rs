//! Constructors and typed accessors for [`AttrValue`].

use crate::tensorflow::attr_value::{ListValue, Value};
use crate::tensorflow::{AttrValue, DataType, TensorProto, TensorShapeProto};

impl AttrValue {
    fn of(value: Value) -> AttrValue {
        AttrValue { value: Some(value) }
    }

    pub fn from_i(i: i64) -> AttrValue {
        Self::of(Value::I(i))
    }

    pub fn from_f(f: f32) -> AttrValue {
        Self::of(Value::F(f))
    }

    pub fn from_b(b: bool) -> AttrValue {
        Self::of(Value::B(b))
    }

    /// A string attribute (stored as bytes).
    pub fn from_s(s: impl AsRef<str>) -> AttrValue {
        Self::of(Value::S(bytes::Bytes::copy_from_slice(
            s.as_ref().as_bytes(),
        )))
    }

    pub fn from_type(t: DataType) -> AttrValue {
        Self::of(Value::Type(t as i32))
    }

    pub fn from_shape(shape: TensorShapeProto) -> AttrValue {
        Self::of(Value::Shape(shape))
    }

    pub fn from_tensor(tensor: TensorProto) -> AttrValue {
        Self::of(Value::Tensor(tensor))
    }

    /// A `list(int)` attribute.
    pub fn from_ints(values: impl Into<Vec<i64>>) -> AttrValue {
        Self::of(Value::List(ListValue {
            i: values.into(),
            ..Default::default()
        }))
    }

    /// A `list(type)` attribute.
    pub fn from_types(values: &[DataType]) -> AttrValue {
        Self::of(Value::List(ListValue {
            r#type: values.iter().map(|&t| t as i32).collect(),
            ..Default::default()
        }))
    }

    pub fn as_i(&self) -> Option<i64> {
        match self.value {
            Some(Value::I(i)) => Some(i),
            _ => None,
        }
    }

    pub fn as_f(&self) -> Option<f32> {
        match self.value {
            Some(Value::F(f)) => Some(f),
            _ => None,
        }
    }

    pub fn as_b(&self) -> Option<bool> {
        match self.value {
            Some(Value::B(b)) => Some(b),
            _ => None,
        }
    }

    /// A string attribute, if it is one and valid UTF-8.
    pub fn as_s(&self) -> Option<&str> {
        match &self.value {
            Some(Value::S(s)) => std::str::from_utf8(s).ok(),
            _ => None,
        }
    }

    /// A type attribute; `Some(Err(raw))` for a number this build does not
    /// know.
    pub fn as_type(&self) -> Option<Result<DataType, i32>> {
        match self.value {
            Some(Value::Type(t)) => Some(DataType::try_from(t).map_err(|_| t)),
            _ => None,
        }
    }

    pub fn as_shape(&self) -> Option<&TensorShapeProto> {
        match &self.value {
            Some(Value::Shape(s)) => Some(s),
            _ => None,
        }
    }

    pub fn as_tensor(&self) -> Option<&TensorProto> {
        match &self.value {
            Some(Value::Tensor(t)) => Some(t),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&ListValue> {
        match &self.value {
            Some(Value::List(l)) => Some(l),
            _ => None,
        }
    }

    /// A `list(int)` attribute. An empty list decodes as an empty
    /// `ListValue`, so it is returned as an empty slice.
    pub fn as_ints(&self) -> Option<&[i64]> {
        self.as_list().map(|l| l.i.as_slice())
    }

    /// Short name of the kind held, for error messages ("int", "list", …).
    pub fn kind(&self) -> &'static str {
        match &self.value {
            None => "unset",
            Some(Value::S(_)) => "string",
            Some(Value::I(_)) => "int",
            Some(Value::F(_)) => "float",
            Some(Value::B(_)) => "bool",
            Some(Value::Type(_)) => "type",
            Some(Value::Shape(_)) => "shape",
            Some(Value::Tensor(_)) => "tensor",
            Some(Value::List(_)) => "list",
            Some(Value::Func(_)) => "func",
            Some(Value::Placeholder(_)) => "placeholder",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn constructors_and_accessors_agree() {
        assert_eq!(AttrValue::from_i(-3).as_i(), Some(-3));
        assert_eq!(AttrValue::from_f(0.5).as_f(), Some(0.5));
        assert_eq!(AttrValue::from_b(true).as_b(), Some(true));
        assert_eq!(AttrValue::from_s("SAME").as_s(), Some("SAME"));
        assert_eq!(
            AttrValue::from_type(DataType::DtInt64).as_type(),
            Some(Ok(DataType::DtInt64))
        );
        assert_eq!(
            AttrValue::from_ints(vec![1, 2, 2, 1]).as_ints(),
            Some(&[1, 2, 2, 1][..])
        );
        assert_eq!(AttrValue::from_i(1).as_s(), None);
        assert_eq!(AttrValue::from_i(1).kind(), "int");
    }

    #[test]
    fn wire_format_matches_tensorflow_field_numbers() {
        // AttrValue.i is field 3 (varint): tag 0x18.
        assert_eq!(AttrValue::from_i(5).encode_to_vec(), vec![0x18, 5]);
        // AttrValue.s is field 2 (bytes): tag 0x12.
        assert_eq!(
            AttrValue::from_s("ab").encode_to_vec(),
            vec![0x12, 2, b'a', b'b']
        );
        // AttrValue.type is field 6: DT_FLOAT = 1.
        assert_eq!(
            AttrValue::from_type(DataType::DtFloat).encode_to_vec(),
            vec![0x30, 1]
        );
        // list(int) is field 1 holding ListValue.i, field 3 packed.
        assert_eq!(
            AttrValue::from_ints(vec![1, 2]).encode_to_vec(),
            vec![0x0a, 4, 0x1a, 2, 1, 2]
        );
    }

    #[test]
    fn unknown_type_number_is_reported() {
        let v = AttrValue {
            value: Some(Value::Type(77)),
        };
        assert_eq!(v.as_type(), Some(Err(77)));
    }
}
