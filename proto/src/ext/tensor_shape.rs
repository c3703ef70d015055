//! Shapes to and from plain dimension lists.

use crate::tensorflow::{tensor_shape_proto::Dim, TensorShapeProto};

impl TensorShapeProto {
    /// A shape of known rank; -1 marks an unknown dimension.
    pub fn from_dims(dims: &[i64]) -> TensorShapeProto {
        TensorShapeProto {
            dim: dims
                .iter()
                .map(|&size| Dim {
                    size,
                    name: String::new(),
                })
                .collect(),
            unknown_rank: false,
        }
    }

    /// A shape whose rank is not known.
    pub fn unknown() -> TensorShapeProto {
        TensorShapeProto {
            dim: vec![],
            unknown_rank: true,
        }
    }

    /// The dimensions (-1 for unknown ones), or `None` for an unknown rank.
    pub fn dims(&self) -> Option<Vec<i64>> {
        if self.unknown_rank {
            None
        } else {
            Some(self.dim.iter().map(|d| d.size).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dims_round_trip() {
        let s = TensorShapeProto::from_dims(&[-1, 32, 32, 3]);
        assert_eq!(s.dims(), Some(vec![-1, 32, 32, 3]));
        assert_eq!(TensorShapeProto::unknown().dims(), None);
        assert_eq!(TensorShapeProto::default().dims(), Some(vec![]));
    }
}
