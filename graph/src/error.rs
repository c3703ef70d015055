//! Errors of graph import, validation and execution. Every variant names
//! the node (or tensor, placeholder, file) it is about.

use psflow_kernels::DType;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes given as a GraphDef do not decode as one.
    #[error("{what} is not a TensorFlow GraphDef: {detail}")]
    Decode { what: String, detail: String },

    /// Ops that no registered kernel implements, as `(node, op)` pairs.
    #[error("unknown ops: {}", list_pairs(.ops))]
    UnknownOps { ops: Vec<(String, String)> },

    #[error("duplicate node name {node:?}")]
    DuplicateNode { node: String },

    /// An input naming a node that is not in the graph.
    #[error("node {node:?}: input {input:?} refers to a node that does not exist")]
    DanglingInput { node: String, input: String },

    /// An input naming an output port the producer does not have.
    #[error("node {node:?}: input {input:?} asks for output {port}, but {producer:?} has {outputs} output(s)")]
    BadInputPort {
        node: String,
        input: String,
        producer: String,
        port: usize,
        outputs: usize,
    },

    /// The graph has a cycle through these nodes.
    #[error("the graph has a cycle through nodes {}", .nodes.join(", "))]
    Cycle { nodes: Vec<String> },

    /// A malformed graph element (bad input string, node that is not well formed).
    #[error("node {node:?}: {detail}")]
    InvalidNode { node: String, detail: String },

    /// A missing or malformed attribute.
    #[error("node {node:?} ({op}): attr {attr:?}: {detail}")]
    Attr {
        node: String,
        op: String,
        attr: String,
        detail: String,
    },

    /// An attribute value TensorFlow supports but psflow does not, where
    /// ignoring it would change results.
    #[error("node {node:?} ({op}): attr {attr:?}: unsupported: {detail}")]
    UnsupportedAttr {
        node: String,
        op: String,
        attr: String,
        detail: String,
    },

    /// A dtype psflow cannot hold (string, half, complex, …).
    #[error("node {node:?}: unsupported dtype {dtype} (psflow supports float32, float64, int32, int64, uint8, bool)")]
    UnsupportedDType { node: String, dtype: String },

    /// Inputs whose shapes or dtypes do not fit the op, found before running.
    #[error("node {node:?} ({op}): {detail}")]
    Shape {
        node: String,
        op: String,
        detail: String,
    },

    /// A TensorProto that does not decode to a tensor.
    #[error("node {node:?}: bad tensor value: {detail}")]
    TensorProto { node: String, detail: String },

    /// A kernel failed while running a node.
    #[error("node {node:?} ({op}): {source}")]
    Kernel {
        node: String,
        op: String,
        #[source]
        source: psflow_kernels::Error,
    },

    #[error("invalid tensor name {name:?} (expected `node` or `node:port`)")]
    InvalidTensorName { name: String },

    /// A fetch or target naming a node that is not in the graph.
    #[error("unknown fetch {name:?}: {detail}")]
    UnknownFetch { name: String, detail: String },

    #[error("unknown feed {name:?}: no such tensor in the graph")]
    UnknownFeed { name: String },

    #[error("placeholder {placeholder:?} must be fed (a {dtype} tensor of shape {shape})")]
    MissingFeed {
        placeholder: String,
        dtype: String,
        shape: String,
    },

    #[error("feed for placeholder {placeholder:?}: shape {got:?} does not fit {expected}")]
    FeedShape {
        placeholder: String,
        expected: String,
        got: Vec<usize>,
    },

    #[error("feed for placeholder {placeholder:?}: cannot convert {got} to {expected}: {detail}")]
    FeedDType {
        placeholder: String,
        expected: DType,
        got: DType,
        detail: String,
    },

    #[error("tensor {name:?} is fed twice")]
    DuplicateFeed { name: String },

    /// A `.npy` file (or buffer) that cannot be read or written.
    #[error(".npy {what}: {detail}")]
    Npy { what: String, detail: String },

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// A graph that cannot be frozen or exported as asked (a variable with
    /// no value, a variable used other than by reading it, …).
    #[error("export: node {node:?}: {detail}")]
    Export { node: String, detail: String },

    /// A resource (variable) the graph refers to that does not exist.
    #[error("node {node:?}: resource {resource:?}: {detail}")]
    Resource {
        node: String,
        resource: String,
        detail: String,
    },
    /// A `_Recv` waited past its deadline: the sender is dead or slow.
    #[error("rendezvous key {key:?}: no tensor arrived within {waited:.1?} (is the sending task alive? a longer recv timeout may help a slow one)")]
    RecvTimeout {
        key: String,
        waited: std::time::Duration,
    },

    /// A send or receive that cannot happen (aborted rendezvous, bad key).
    #[error("rendezvous key {key:?}: {detail}")]
    Rendezvous { key: String, detail: String },

    /// A `_Send` / `_Recv` ran in a session that has no rendezvous.
    #[error("node {node:?} ({op}): the session has no rendezvous; partitioned graphs run in a session made with `Session::with_rendezvous`")]
    NoRendezvous { node: String, op: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn list_pairs(ops: &[(String, String)]) -> String {
    ops.iter()
        .map(|(node, op)| format!("{op} (node {node:?})"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Error {
    pub fn kernel(node: &str, op: &str, source: psflow_kernels::Error) -> Error {
        Error::Kernel {
            node: node.to_string(),
            op: op.to_string(),
            source,
        }
    }

    pub fn shape(node: &str, op: &str, detail: impl Into<String>) -> Error {
        Error::Shape {
            node: node.to_string(),
            op: op.to_string(),
            detail: detail.into(),
        }
    }

    pub fn npy(what: impl Into<String>, detail: impl Into<String>) -> Error {
        Error::Npy {
            what: what.into(),
            detail: detail.into(),
        }
    }
}
