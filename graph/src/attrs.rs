//! Typed access to a node's attributes, with errors that name the node,
//! its op and the attribute.

use psflow_kernels::{DType, Padding};
use psflow_proto::tensorflow::AttrValue;

use crate::dtype::dtype_from_proto;
use crate::ir::Node;
use crate::shape::Shape;
use crate::{Error, Result};

impl Node {
    pub fn attr_error(&self, attr: &str, detail: impl Into<String>) -> Error {
        Error::Attr {
            node: self.name.clone(),
            op: self.op.clone(),
            attr: attr.to_string(),
            detail: detail.into(),
        }
    }

    pub fn unsupported_attr(&self, attr: &str, detail: impl Into<String>) -> Error {
        Error::UnsupportedAttr {
            node: self.name.clone(),
            op: self.op.clone(),
            attr: attr.to_string(),
            detail: detail.into(),
        }
    }

    fn get_attr(&self, name: &str) -> Result<&AttrValue> {
        self.attrs
            .get(name)
            .ok_or_else(|| self.attr_error(name, "missing"))
    }

    fn wrong_kind(&self, name: &str, want: &str, v: &AttrValue) -> Error {
        self.attr_error(name, format!("expected {want}, found {}", v.kind()))
    }

    pub fn attr_int(&self, name: &str) -> Result<i64> {
        let v = self.get_attr(name)?;
        v.as_i().ok_or_else(|| self.wrong_kind(name, "an int", v))
    }

    pub fn attr_int_or(&self, name: &str, default: i64) -> Result<i64> {
        match self.attrs.get(name) {
            None => Ok(default),
            Some(_) => self.attr_int(name),
        }
    }

    pub fn attr_float_or(&self, name: &str, default: f32) -> Result<f32> {
        match self.attrs.get(name) {
            None => Ok(default),
            Some(v) => v.as_f().ok_or_else(|| self.wrong_kind(name, "a float", v)),
        }
    }

    pub fn attr_bool_or(&self, name: &str, default: bool) -> Result<bool> {
        match self.attrs.get(name) {
            None => Ok(default),
            Some(v) => v.as_b().ok_or_else(|| self.wrong_kind(name, "a bool", v)),
        }
    }

    pub fn attr_str(&self, name: &str) -> Result<&str> {
        let v = self.get_attr(name)?;
        v.as_s().ok_or_else(|| self.wrong_kind(name, "a string", v))
    }

    pub fn attr_str_or<'a>(&'a self, name: &str, default: &'a str) -> Result<&'a str> {
        match self.attrs.get(name) {
            None => Ok(default),
            Some(_) => self.attr_str(name),
        }
    }

    pub fn attr_ints(&self, name: &str) -> Result<&[i64]> {
        let v = self.get_attr(name)?;
        v.as_ints()
            .ok_or_else(|| self.wrong_kind(name, "a list of ints", v))
    }

    pub fn attr_ints_or<'a>(&'a self, name: &str, default: &'a [i64]) -> Result<&'a [i64]> {
        match self.attrs.get(name) {
            None => Ok(default),
            Some(_) => self.attr_ints(name),
        }
    }

    /// A type attribute as a psflow dtype; a type psflow cannot hold is an
    /// `UnsupportedDType` error naming the node.
    pub fn attr_dtype(&self, name: &str) -> Result<DType> {
        let v = self.get_attr(name)?;
        match v.as_type() {
            None => Err(self.wrong_kind(name, "a type", v)),
            Some(raw) => {
                let raw = raw.map_or_else(|r| r, |t| t as i32);
                dtype_from_proto(raw).ok_or_else(|| Error::UnsupportedDType {
                    node: self.name.clone(),
                    dtype: psflow_proto::ext::dtype_name(raw),
                })
            }
        }
    }

    pub fn attr_dtype_or(&self, name: &str, default: DType) -> Result<DType> {
        match self.attrs.get(name) {
            None => Ok(default),
            Some(_) => self.attr_dtype(name),
        }
    }

    /// A shape attribute; absent means unknown.
    pub fn attr_shape_or_unknown(&self, name: &str) -> Result<Shape> {
        match self.attrs.get(name) {
            None => Ok(Shape::Unknown),
            Some(v) => v
                .as_shape()
                .map(Shape::from_proto)
                .ok_or_else(|| self.wrong_kind(name, "a shape", v)),
        }
    }

    /// Requires `T` (when present) to be float32, the only dtype of the
    /// float kernels.
    pub fn require_f32(&self, attr: &str) -> Result<()> {
        if self.attrs.contains_key(attr) {
            let name = match self.attr_dtype(attr) {
                Ok(DType::F32) => return Ok(()),
                Ok(t) => t.to_string(),
                Err(Error::UnsupportedDType { dtype, .. }) => dtype,
                Err(e) => return Err(e),
            };
            return Err(self.unsupported_attr(attr, format!("{name} (only float32 is supported)")));
        }
        Ok(())
    }

    /// Checks `data_format` (absent or NHWC; NCHW changes results).
    pub fn require_nhwc(&self) -> Result<()> {
        let f = self.attr_str_or("data_format", "NHWC")?;
        if f != "NHWC" {
            return Err(
                self.unsupported_attr("data_format", format!("{f} (only NHWC is supported)"))
            );
        }
        Ok(())
    }

    /// `[1, h, w, 1]`-style attribute (strides, ksize, dilations) → `[h, w]`.
    pub fn attr_hw(&self, name: &str, default: Option<[usize; 2]>) -> Result<[usize; 2]> {
        let v = match (self.attrs.get(name), default) {
            (None, Some(d)) => return Ok(d),
            _ => self.attr_ints(name)?,
        };
        match *v {
            [1, h, w, 1] if h > 0 && w > 0 => Ok([h as usize, w as usize]),
            [_, _, _, _] => Err(self.unsupported_attr(
                name,
                format!("{v:?} (must be [1, h, w, 1] with positive h, w in NHWC)"),
            )),
            _ => Err(self.attr_error(name, format!("expected 4 values, got {v:?}"))),
        }
    }

    /// `padding` with `explicit_paddings` for EXPLICIT.
    pub fn attr_padding(&self) -> Result<Padding> {
        let p = self.attr_str("padding")?;
        match p {
            "SAME" => Ok(Padding::Same),
            "VALID" => Ok(Padding::Valid),
            "EXPLICIT" => {
                let e = self.attr_ints("explicit_paddings")?;
                match *e {
                    [0, 0, t, b, l, r, 0, 0] if t >= 0 && b >= 0 && l >= 0 && r >= 0 => {
                        Ok(Padding::Explicit([
                            t as usize, b as usize, l as usize, r as usize,
                        ]))
                    }
                    _ => Err(self.unsupported_attr(
                        "explicit_paddings",
                        format!("{e:?} (expected 8 values, no padding on batch and channels)"),
                    )),
                }
            }
            other => Err(self.unsupported_attr("padding", format!("{other:?}"))),
        }
    }

    /// Rejects dilations other than 1 (they would change results).
    pub fn require_no_dilation(&self) -> Result<()> {
        if let Some(v) = self.attrs.get("dilations") {
            let d = v
                .as_ints()
                .ok_or_else(|| self.wrong_kind("dilations", "a list of ints", v))?;
            if !d.iter().all(|&x| x == 1) {
                return Err(
                    self.unsupported_attr("dilations", format!("{d:?} (only 1 is supported)"))
                );
            }
        }
        Ok(())
    }
}
