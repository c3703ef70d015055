//! Partially known shapes for shape inference: an unknown rank, or a list
//! of dimensions where -1 is unknown (TensorFlow's convention).

use std::fmt;

use psflow_proto::tensorflow::TensorShapeProto;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Shape {
    Unknown,
    Known(Vec<i64>),
}

impl Shape {
    pub fn known(dims: &[usize]) -> Shape {
        Shape::Known(dims.iter().map(|&d| d as i64).collect())
    }

    /// A shape of known rank whose dimensions are all unknown.
    pub fn of_rank(rank: usize) -> Shape {
        Shape::Known(vec![-1; rank])
    }

    pub fn scalar() -> Shape {
        Shape::Known(vec![])
    }

    pub fn from_proto(p: &TensorShapeProto) -> Shape {
        match p.dims() {
            None => Shape::Unknown,
            Some(d) => Shape::Known(d.into_iter().map(|x| if x < 0 { -1 } else { x }).collect()),
        }
    }

    pub fn to_proto(&self) -> TensorShapeProto {
        match self {
            Shape::Unknown => TensorShapeProto::unknown(),
            Shape::Known(d) => TensorShapeProto::from_dims(d),
        }
    }

    pub fn rank(&self) -> Option<usize> {
        match self {
            Shape::Unknown => None,
            Shape::Known(d) => Some(d.len()),
        }
    }

    pub fn dims(&self) -> Option<&[i64]> {
        match self {
            Shape::Unknown => None,
            Shape::Known(d) => Some(d),
        }
    }

    /// Dimension `i` (-1 when unknown or the rank is unknown).
    pub fn dim(&self, i: usize) -> i64 {
        match self {
            Shape::Known(d) if i < d.len() => d[i],
            _ => -1,
        }
    }

    /// The concrete shape when every dimension is known.
    pub fn concrete(&self) -> Option<Vec<usize>> {
        match self {
            Shape::Known(d) if d.iter().all(|&x| x >= 0) => {
                Some(d.iter().map(|&x| x as usize).collect())
            }
            _ => None,
        }
    }

    pub fn num_elements(&self) -> Option<usize> {
        self.concrete().map(|d| d.iter().product())
    }

    /// Whether a concrete shape fits this one (same rank, equal known dims).
    pub fn accepts(&self, dims: &[usize]) -> bool {
        match self {
            Shape::Unknown => true,
            Shape::Known(d) => {
                d.len() == dims.len() && d.iter().zip(dims).all(|(&a, &b)| a < 0 || a as usize == b)
            }
        }
    }

    /// The most specific shape compatible with both, or `None` if they
    /// contradict each other.
    pub fn merge(&self, other: &Shape) -> Option<Shape> {
        match (self, other) {
            (Shape::Unknown, s) | (s, Shape::Unknown) => Some(s.clone()),
            (Shape::Known(a), Shape::Known(b)) => {
                if a.len() != b.len() {
                    return None;
                }
                a.iter()
                    .zip(b)
                    .map(|(&x, &y)| match (x, y) {
                        (-1, y) => Some(y),
                        (x, -1) => Some(x),
                        (x, y) if x == y => Some(x),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()
                    .map(Shape::Known)
            }
        }
    }
}

/// Merges two dimensions (-1 unknown); `Err` when both are known and differ.
pub fn merge_dim(a: i64, b: i64) -> Result<i64, (i64, i64)> {
    match (a, b) {
        (-1, b) => Ok(b),
        (a, -1) => Ok(a),
        (a, b) if a == b => Ok(a),
        _ => Err((a, b)),
    }
}

/// NumPy broadcasting of two partial shapes; `Err` with a message when
/// known dimensions cannot broadcast.
pub fn broadcast(a: &Shape, b: &Shape) -> Result<Shape, String> {
    let (Shape::Known(a), Shape::Known(b)) = (a, b) else {
        return Ok(Shape::Unknown);
    };
    let rank = a.len().max(b.len());
    let mut out = vec![0i64; rank];
    for i in 0..rank {
        let x = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            1
        };
        let y = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            1
        };
        out[i] = match (x, y) {
            (1, y) => y,
            (x, 1) => x,
            (-1, _) | (_, -1) => -1,
            (x, y) if x == y => x,
            _ => {
                return Err(format!(
                    "shapes {} and {} cannot broadcast",
                    Shape::Known(a.clone()),
                    Shape::Known(b.clone())
                ))
            }
        };
    }
    Ok(Shape::Known(out))
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shape::Unknown => f.write_str("<unknown rank>"),
            Shape::Known(d) => {
                f.write_str("[")?;
                for (i, x) in d.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    if *x < 0 {
                        f.write_str("?")?;
                    } else {
                        write!(f, "{x}")?;
                    }
                }
                f.write_str("]")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_partial() {
        let s = Shape::Known(vec![-1, 32, 32, 3]);
        assert!(s.accepts(&[7, 32, 32, 3]));
        assert!(!s.accepts(&[7, 32, 31, 3]));
        assert!(!s.accepts(&[32, 32, 3]));
        assert!(Shape::Unknown.accepts(&[1]));
        assert_eq!(s.to_string(), "[?, 32, 32, 3]");
    }

    #[test]
    fn broadcast_partial() {
        let a = Shape::Known(vec![-1, 4, 1]);
        let b = Shape::Known(vec![5]);
        assert_eq!(broadcast(&a, &b).unwrap(), Shape::Known(vec![-1, 4, 5]));
        assert!(broadcast(&Shape::known(&[3]), &Shape::known(&[4])).is_err());
        assert_eq!(broadcast(&Shape::Unknown, &b).unwrap(), Shape::Unknown);
    }

    #[test]
    fn merge() {
        let a = Shape::Known(vec![-1, 3]);
        assert_eq!(a.merge(&Shape::known(&[2, 3])), Some(Shape::known(&[2, 3])));
        assert_eq!(a.merge(&Shape::known(&[2, 4])), None);
        assert_eq!(a.merge(&Shape::Unknown), Some(a.clone()));
    }
}
