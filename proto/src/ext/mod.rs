//! Conveniences beside the generated code: constructors and accessors for
//! attribute values and shapes, dtype names.

mod attr_value;
mod data_type;
pub use data_type::dtype_name;
mod tensor_shape;
