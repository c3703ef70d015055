//! The in-memory graph: nodes with named inputs and TensorFlow attributes,
//! imported from and exported to GraphDef.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use prost::Message;
use psflow_proto::tensorflow::{AttrValue, GraphDef, NodeDef, VersionDef};

use crate::{Error, Result};

/// One output of a node: `node:port` (`node` alone is port 0).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorName {
    pub node: String,
    pub port: usize,
}

impl TensorName {
    pub fn new(node: impl Into<String>, port: usize) -> TensorName {
        TensorName {
            node: node.into(),
            port,
        }
    }

    /// Parses `node` or `node:port`. A trailing `:digits` is the port; node
    /// names may themselves contain `:` only before it (as TF's never do).
    pub fn parse(s: &str) -> Result<TensorName> {
        let bad = || Error::InvalidTensorName {
            name: s.to_string(),
        };
        if s.is_empty() || s.starts_with('^') {
            return Err(bad());
        }
        match s.rsplit_once(':') {
            None => Ok(TensorName::new(s, 0)),
            Some((node, port)) => {
                if node.is_empty() || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                let port = port.parse().map_err(|_| bad())?;
                Ok(TensorName::new(node, port))
            }
        }
    }

    /// The form GraphDef inputs use: `node` for port 0, else `node:port`.
    pub fn to_input_string(&self) -> String {
        if self.port == 0 {
            self.node.clone()
        } else {
            format!("{}:{}", self.node, self.port)
        }
    }
}

impl fmt::Display for TensorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.node, self.port)
    }
}

impl FromStr for TensorName {
    type Err = Error;
    fn from_str(s: &str) -> Result<TensorName> {
        TensorName::parse(s)
    }
}

impl From<&str> for TensorName {
    /// Parses like [`TensorName::parse`]; a malformed name becomes a node
    /// name of that exact text (port 0), which lookups then report as
    /// unknown.
    fn from(s: &str) -> TensorName {
        TensorName::parse(s).unwrap_or_else(|_| TensorName::new(s, 0))
    }
}

/// An input edge: a data tensor or a control dependency (`^node`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Data(TensorName),
    Control(String),
}

impl Input {
    pub fn parse(s: &str) -> Result<Input> {
        match s.strip_prefix('^') {
            Some(node) if !node.is_empty() => Ok(Input::Control(node.to_string())),
            Some(_) => Err(Error::InvalidTensorName {
                name: s.to_string(),
            }),
            None => Ok(Input::Data(TensorName::parse(s)?)),
        }
    }

    /// The node this input comes from.
    pub fn node(&self) -> &str {
        match self {
            Input::Data(t) => &t.node,
            Input::Control(n) => n,
        }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Data(t) => f.write_str(&t.to_input_string()),
            Input::Control(n) => write!(f, "^{n}"),
        }
    }
}

/// One node: an op, its inputs (data inputs first, then control inputs)
/// and attributes as TensorFlow stores them.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub op: String,
    pub inputs: Vec<Input>,
    pub device: String,
    pub attrs: BTreeMap<String, AttrValue>,
}

impl Node {
    pub fn new(name: impl Into<String>, op: impl Into<String>) -> Node {
        Node {
            name: name.into(),
            op: op.into(),
            inputs: vec![],
            device: String::new(),
            attrs: BTreeMap::new(),
        }
    }

    /// Adds a data input (`node` or `node:port`).
    pub fn input(mut self, tensor: impl Into<TensorName>) -> Node {
        self.inputs.push(Input::Data(tensor.into()));
        self
    }

    /// Adds a control input on `node`.
    pub fn control_input(mut self, node: impl Into<String>) -> Node {
        self.inputs.push(Input::Control(node.into()));
        self
    }

    pub fn attr(mut self, name: impl Into<String>, value: AttrValue) -> Node {
        self.attrs.insert(name.into(), value);
        self
    }

    pub fn data_inputs(&self) -> impl Iterator<Item = &TensorName> {
        self.inputs.iter().filter_map(|i| match i {
            Input::Data(t) => Some(t),
            Input::Control(_) => None,
        })
    }

    pub fn control_inputs(&self) -> impl Iterator<Item = &str> {
        self.inputs.iter().filter_map(|i| match i {
            Input::Control(n) => Some(n.as_str()),
            Input::Data(_) => None,
        })
    }

    pub fn num_data_inputs(&self) -> usize {
        self.data_inputs().count()
    }

    pub fn from_node_def(def: NodeDef) -> Result<Node> {
        if def.name.is_empty() {
            return Err(Error::InvalidNode {
                node: String::new(),
                detail: format!("a node of op {:?} has no name", def.op),
            });
        }
        let mut inputs = Vec::with_capacity(def.input.len());
        let mut seen_control = false;
        for s in &def.input {
            let input = Input::parse(s).map_err(|_| Error::InvalidNode {
                node: def.name.clone(),
                detail: format!("malformed input {s:?}"),
            })?;
            match input {
                Input::Control(_) => seen_control = true,
                Input::Data(_) if seen_control => {
                    return Err(Error::InvalidNode {
                        node: def.name.clone(),
                        detail: format!("data input {s:?} after a control input"),
                    })
                }
                Input::Data(_) => {}
            }
            inputs.push(input);
        }
        Ok(Node {
            name: def.name,
            op: def.op,
            inputs,
            device: def.device,
            attrs: def.attr,
        })
    }

    pub fn to_node_def(&self) -> NodeDef {
        NodeDef {
            name: self.name.clone(),
            op: self.op.clone(),
            input: self.inputs.iter().map(|i| i.to_string()).collect(),
            device: self.device.clone(),
            attr: self.attrs.clone(),
        }
    }
}

/// A dataflow graph. Node names are unique; nodes keep their insertion
/// order (a GraphDef's order), which need not be topological.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    nodes: Vec<Node>,
    index: HashMap<String, usize>,
    /// The GraphDef versions, kept for export.
    pub versions: Option<VersionDef>,
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    /// Adds a node; its inputs may refer to nodes added later.
    pub fn add(&mut self, node: Node) -> Result<usize> {
        if self.index.contains_key(&node.name) {
            return Err(Error::DuplicateNode { node: node.name });
        }
        let id = self.nodes.len();
        self.index.insert(node.name.clone(), id);
        self.nodes.push(node);
        Ok(id)
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    /// The position of a node in [`Graph::nodes`].
    pub fn id(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn from_graph_def(def: GraphDef) -> Result<Graph> {
        let mut graph = Graph {
            versions: def.versions,
            ..Graph::default()
        };
        for node in def.node {
            graph.add(Node::from_node_def(node)?)?;
        }
        Ok(graph)
    }

    /// Decodes serialized GraphDef bytes (a frozen `.pb`).
    pub fn from_graph_def_bytes(bytes: &[u8]) -> Result<Graph> {
        let what = || format!("input of {} bytes", bytes.len());
        let def = GraphDef::decode(bytes).map_err(|e| Error::Decode {
            what: what(),
            detail: e.to_string(),
        })?;
        if def.node.is_empty() && !bytes.is_empty() {
            // Protobuf decodes many byte strings "successfully" into an
            // empty message by skipping unknown fields; a GraphDef with no
            // nodes from non-empty input is not what the caller meant.
            return Err(Error::Decode {
                what: what(),
                detail: "it decodes to a graph with no nodes".into(),
            });
        }
        Graph::from_graph_def(def)
    }

    /// Reads a GraphDef file.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Graph> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            what: format!("reading {}", path.display()),
            source,
        })?;
        Graph::from_graph_def_bytes(&bytes).map_err(|e| match e {
            Error::Decode { detail, .. } => Error::Decode {
                what: path.display().to_string(),
                detail,
            },
            e => e,
        })
    }

    pub fn to_graph_def(&self) -> GraphDef {
        GraphDef {
            node: self.nodes.iter().map(Node::to_node_def).collect(),
            versions: self.versions.clone(),
            version: 0,
        }
    }

    pub fn to_graph_def_bytes(&self) -> Vec<u8> {
        self.to_graph_def().encode_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_names_parse() {
        assert_eq!(
            TensorName::parse("conv").unwrap(),
            TensorName::new("conv", 0)
        );
        assert_eq!(
            TensorName::parse("bn/FusedBatchNormV3:2").unwrap(),
            TensorName::new("bn/FusedBatchNormV3", 2)
        );
        for bad in ["", ":1", "x:", "x:a", "^x", "x:-1"] {
            assert!(TensorName::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(TensorName::new("a", 0).to_input_string(), "a");
        assert_eq!(TensorName::new("a", 3).to_input_string(), "a:3");
        assert_eq!(TensorName::new("a", 0).to_string(), "a:0");
    }

    #[test]
    fn inputs_parse_and_print() {
        assert_eq!(
            Input::parse("^init").unwrap(),
            Input::Control("init".into())
        );
        assert_eq!(Input::parse("x:1").unwrap().to_string(), "x:1");
        assert_eq!(Input::parse("^init").unwrap().to_string(), "^init");
        assert!(Input::parse("^").is_err());
    }

    #[test]
    fn control_before_data_is_rejected() {
        let def = NodeDef {
            name: "n".into(),
            op: "Add".into(),
            input: vec!["^a".into(), "b".into()],
            ..Default::default()
        };
        let err = Node::from_node_def(def).unwrap_err().to_string();
        assert!(
            err.contains("\"n\"") && err.contains("after a control"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let mut g = Graph::new();
        g.add(Node::new("a", "NoOp")).unwrap();
        let err = g.add(Node::new("a", "NoOp")).unwrap_err().to_string();
        assert!(err.contains("duplicate") && err.contains("\"a\""), "{err}");
    }

    #[test]
    fn garbage_is_not_a_graph_def() {
        let err = Graph::from_graph_def_bytes(b"\x93NUMPY\x01\x00garbage")
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a TensorFlow GraphDef"), "{err}");
        let err = Graph::from_graph_def_bytes(b"hello world, this is text")
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a TensorFlow GraphDef"), "{err}");
    }
}
