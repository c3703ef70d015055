//! Partitioning a graph per task.
//!
//! [`partition`] is TensorFlow's graph partitioner: given a task (a device
//! string such as `/job:worker/replica:0/task:1/device:CPU:0`) for every
//! node, it makes one graph per task; every edge whose ends are in
//! different tasks becomes a `_Send` in the producer's task and a `_Recv`
//! in the consumer's, with a unique rendezvous key. One send per (tensor,
//! destination task), however many consumers the tensor has there. A
//! control edge across tasks is carried as TensorFlow does: in the
//! producer's task a dummy scalar `Const` with a control input on the
//! producer is sent; in the consumer's task the `_Recv` becomes a control
//! input of the consumer.
//!
//! Names: a send is `_send/<node>/<port>/to_<i>`, its receive
//! `_recv/<node>/<port>/from_<j>` (for control edges `_ctrl_send/<node>/to_<i>`
//! and `_ctrl_recv/<node>/from_<j>`, the dummy `_ctrl/<node>/to_<i>`),
//! where `i` and `j` index [`Partitions::tasks`]. The rendezvous key's
//! `tensor_name` is `<node>:<port>` (`^<node>` for control).
//!
//! [`training`] builds on the same ops for what the cluster runs: the
//! between-graph-replicated worker graph whose variable edges become pulls
//! and pushes of parameter-server shards.

mod error;
pub mod training;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use psflow_graph::dtype::dtype_to_proto;
use psflow_graph::tensor_proto::tensor_to_proto;
use psflow_graph::{AttrValue, DType, Graph, Input, Node, RendezvousKey, Session, TensorName};
use psflow_proto::tensorflow::{attr_value::ListValue, TensorShapeProto};
use serde::Serialize;

pub use error::{Error, Result};

/// One cut edge.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transfer {
    /// The rendezvous key, in TensorFlow's string form.
    pub key: String,
    pub from_task: String,
    pub to_task: String,
    /// The tensor sent (`node:port`), or `^node` for a control edge.
    pub tensor: String,
    pub send_node: String,
    pub recv_node: String,
}

/// One graph per task, and the edges between them.
#[derive(Debug, Clone)]
pub struct Partitions {
    /// The tasks, sorted.
    pub tasks: Vec<String>,
    /// `graphs[i]` runs on `tasks[i]`.
    pub graphs: Vec<Graph>,
    pub transfers: Vec<Transfer>,
}

impl Partitions {
    pub fn index(&self, task: &str) -> Option<usize> {
        self.tasks.iter().position(|t| t == task)
    }

    /// The `_Send` and `_Recv` nodes of task `i`: targets of every run of
    /// its partition (with its own fetches), so that every transfer
    /// happens once per step and nothing is left in the rendezvous.
    pub fn transfer_nodes(&self, i: usize) -> Vec<String> {
        self.graphs[i]
            .nodes()
            .iter()
            .filter(|n| n.op == "_Send" || n.op == "_Recv")
            .map(|n| n.name.clone())
            .collect()
    }
}

/// What partitioning needs beyond the graph.
#[derive(Debug, Clone, Copy)]
pub struct PartitionOptions {
    /// The senders' incarnation, part of every key.
    pub incarnation: u64,
}

impl Default for PartitionOptions {
    fn default() -> PartitionOptions {
        PartitionOptions { incarnation: 1 }
    }
}

fn type_attr(d: DType) -> AttrValue {
    AttrValue::from_type(dtype_to_proto(d))
}

/// `_Send` of `input` under `key`.
pub fn send_node(name: &str, input: TensorName, dtype: DType, key: &RendezvousKey) -> Node {
    transfer_attrs(Node::new(name, "_Send").input(input), key).attr("T", type_attr(dtype))
}

/// `_Recv` of `key`; `shape` (when known) becomes `_output_shapes`.
pub fn recv_node(name: &str, dtype: DType, shape: Option<&[i64]>, key: &RendezvousKey) -> Node {
    let mut n = transfer_attrs(Node::new(name, "_Recv"), key).attr("tensor_type", type_attr(dtype));
    if let Some(dims) = shape {
        n = n.attr(
            "_output_shapes",
            AttrValue {
                value: Some(psflow_proto::tensorflow::attr_value::Value::List(
                    ListValue {
                        shape: vec![TensorShapeProto::from_dims(dims)],
                        ..Default::default()
                    },
                )),
            },
        );
    }
    n
}

fn transfer_attrs(n: Node, key: &RendezvousKey) -> Node {
    n.attr("tensor_name", AttrValue::from_s(&key.tensor_name))
        .attr("send_device", AttrValue::from_s(&key.send_device))
        .attr(
            "send_device_incarnation",
            AttrValue::from_i(key.send_device_incarnation as i64),
        )
        .attr("recv_device", AttrValue::from_s(&key.recv_device))
        .attr("client_terminated", AttrValue::from_b(false))
}

/// Splits `graph` by the task `task_of` gives each node (see the module
/// docs). The graph must validate (known ops, no cycles).
pub fn partition(
    graph: &Graph,
    task_of: &dyn Fn(&Node) -> String,
    opts: &PartitionOptions,
) -> Result<Partitions> {
    let session = Session::new(graph.clone())?;
    let node_task: Vec<String> = graph.nodes().iter().map(task_of).collect();
    for (n, t) in graph.nodes().iter().zip(&node_task) {
        if t.is_empty() || t.contains(';') {
            return Err(Error::Tasks(format!(
                "node {:?} was given task {t:?}; a task is a non-empty device string without ';'",
                n.name
            )));
        }
    }
    let tasks: Vec<String> = node_task
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let tix: HashMap<&str, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let task_index = |node: &str| tix[node_task[graph.id(node).expect("validated")].as_str()];

    let mut nodes: Vec<Vec<Node>> = vec![vec![]; tasks.len()];
    let mut recvs: Vec<Vec<Node>> = vec![vec![]; tasks.len()];
    let mut sends: Vec<Vec<Node>> = vec![vec![]; tasks.len()];
    let mut transfers = Vec::new();
    // (tensor or ^node, destination) → the receive's name there.
    let mut made: BTreeMap<(String, usize), String> = BTreeMap::new();

    for n in graph.nodes() {
        let b = task_index(&n.name);
        let mut node = n.clone();
        node.device = tasks[b].clone();
        for input in node.inputs.iter_mut() {
            let a = task_index(input.node());
            if a == b {
                continue;
            }
            let (label, dtype, shape) = match &*input {
                Input::Data(t) => {
                    let info = session.tensor_info(t).expect("validated input");
                    let dtype = info.dtype.ok_or_else(|| Error::InvalidGraph {
                        node: t.node.clone(),
                        detail: format!("the dtype of {t} is unknown, so it cannot be sent"),
                    })?;
                    (t.to_string(), dtype, info.shape.dims().map(<[i64]>::to_vec))
                }
                Input::Control(c) => (format!("^{c}"), DType::F32, Some(vec![])),
            };
            let recv_name = match made.get(&(label.clone(), b)) {
                Some(r) => r.clone(),
                None => {
                    let key = RendezvousKey::new(
                        tasks[a].clone(),
                        opts.incarnation,
                        tasks[b].clone(),
                        label.clone(),
                    );
                    let (send_name, recv_name, sent) = match &*input {
                        Input::Data(t) => (
                            format!("_send/{}/{}/to_{b}", t.node, t.port),
                            format!("_recv/{}/{}/from_{a}", t.node, t.port),
                            t.clone(),
                        ),
                        Input::Control(c) => {
                            let dummy = format!("_ctrl/{c}/to_{b}");
                            sends[a].push(
                                Node::new(&dummy, "Const")
                                    .attr("dtype", type_attr(DType::F32))
                                    .attr(
                                        "value",
                                        AttrValue::from_tensor(tensor_to_proto(
                                            &psflow_graph::Tensor::scalar(0f32),
                                        )),
                                    )
                                    .control_input(c.as_str()),
                            );
                            (
                                format!("_ctrl_send/{c}/to_{b}"),
                                format!("_ctrl_recv/{c}/from_{a}"),
                                TensorName::new(dummy, 0),
                            )
                        }
                    };
                    sends[a].push(send_node(&send_name, sent, dtype, &key));
                    recvs[b].push(recv_node(&recv_name, dtype, shape.as_deref(), &key));
                    transfers.push(Transfer {
                        key: key.to_string(),
                        from_task: tasks[a].clone(),
                        to_task: tasks[b].clone(),
                        tensor: label.clone(),
                        send_node: send_name,
                        recv_node: recv_name.clone(),
                    });
                    made.insert((label, b), recv_name.clone());
                    recv_name
                }
            };
            *input = match input {
                Input::Data(_) => Input::Data(TensorName::new(recv_name, 0)),
                Input::Control(_) => Input::Control(recv_name),
            };
        }
        nodes[b].push(node);
    }

    let mut graphs = Vec::with_capacity(tasks.len());
    for (i, ((r, n), s)) in recvs.into_iter().zip(nodes).zip(sends).enumerate() {
        let mut g = Graph::new();
        g.versions = graph.versions.clone();
        for mut node in r.into_iter().chain(n).chain(s) {
            if node.device.is_empty() {
                node.device = tasks[i].clone();
            }
            let name = node.name.clone();
            g.add(node).map_err(|_| Error::InvalidGraph {
                node: name,
                detail: "a node of the graph has a name the partitioner uses for transfers".into(),
            })?;
        }
        graphs.push(g);
    }
    Ok(Partitions {
        tasks,
        graphs,
        transfers,
    })
}

/// Partitions by each node's `device` field (TensorFlow's placement).
pub fn partition_by_device(graph: &Graph, opts: &PartitionOptions) -> Result<Partitions> {
    partition(graph, &|n: &Node| n.device.clone(), opts)
}
