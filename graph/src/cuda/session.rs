//! [`CudaSession`]: a [`Session`] whose float32 variables live on a CUDA
//! device and whose ops run there when [`place::decide`] says so.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use psflow_kernels::cuda::{CudaDevice, DeviceTensor};
use psflow_kernels::Tensor;

use super::ops;
use super::place::{self, Where, SHAPE_ONLY};
use crate::executor::{Rendezvous, ResourceStore, Session, DEFAULT_RECV_TIMEOUT};
use crate::ir::{Node, TensorName};
use crate::registry::{check_received, OpContext, Registry};
use crate::{DType, Error, Graph, Result};

/// A value of a run: on the host or on the device (shared, so a variable
/// read costs no copy).
#[derive(Clone)]
pub(crate) enum Value {
    Host(Tensor),
    Dev(Arc<DeviceTensor>),
}

/// Host↔device copies made by runs, other than feeds and fetches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferCounts {
    /// Device values read on the host (each a round trip).
    pub downloads: u64,
    pub download_bytes: u64,
    /// Host values other than feeds copied to the device (constants only
    /// once).
    pub uploads: u64,
    pub upload_bytes: u64,
    /// Fed tensors uploaded, fetched tensors downloaded.
    pub feeds: u64,
    pub fetches: u64,
}

/// A graph on a CUDA device.
pub struct CudaSession {
    host: Session,
    device: Arc<CudaDevice>,
    /// Float32 variables, by name.
    vars: Mutex<HashMap<String, Arc<DeviceTensor>>>,
    /// Constants already uploaded, by node id.
    consts: Mutex<HashMap<usize, Arc<DeviceTensor>>>,
    counts: Mutex<TransferCounts>,
    /// Where the graph's `_Send`s and `_Recv`s (host ops) meet their peers.
    rendezvous: Option<Arc<dyn Rendezvous>>,
    /// How long a `_Recv` waits for its value.
    recv_timeout: Duration,
    /// Per graph node: [`place::float_out`], computed once.
    float_out: Vec<bool>,
}

impl CudaSession {
    /// Validates `graph` (as [`Session::with_resources`]); `host` holds the
    /// variables that are not float32 (e.g. `global_step`).
    pub fn new(
        graph: Graph,
        registry: &Registry,
        host: Arc<ResourceStore>,
        device: Arc<CudaDevice>,
    ) -> Result<CudaSession> {
        let host = Session::with_resources(graph, registry, host)?;
        let float_out = (0..host.graph().len())
            .map(|id| place::float_out(&host, id))
            .collect();
        Ok(CudaSession {
            host,
            float_out,
            device,
            vars: Mutex::new(HashMap::new()),
            consts: Mutex::new(HashMap::new()),
            counts: Mutex::new(TransferCounts::default()),
            rendezvous: None,
            recv_timeout: DEFAULT_RECV_TIMEOUT,
        })
    }

    /// How long a run waits for one `_Recv` before failing with an error
    /// naming its key (default [`DEFAULT_RECV_TIMEOUT`]).
    pub fn with_recv_timeout(mut self, timeout: Duration) -> CudaSession {
        self.recv_timeout = timeout;
        self
    }

    /// The graph's `_Send`s and `_Recv`s meet their peers in `rendezvous`
    /// (a `_Recv` blocks the run until its value arrives; a device value a
    /// `_Send` sends is downloaded first).
    pub fn with_rendezvous(mut self, rendezvous: Arc<dyn Rendezvous>) -> CudaSession {
        self.rendezvous = Some(rendezvous);
        self
    }

    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.device
    }

    /// Copies every variable of `store` in: float32 ones to the device,
    /// the others to the host resources.
    pub fn load_variables(&self, store: &ResourceStore) -> Result<()> {
        let mut vars = self.vars.lock().expect("variables lock");
        for name in store.names() {
            let Some(t) = store.get(&name) else { continue };
            if t.dtype() == DType::F32 {
                let d = self.device.upload(&t).map_err(|e| dev_err(&name, e))?;
                vars.insert(name, Arc::new(d));
            } else {
                self.host.resources().set(&name, t);
            }
        }
        Ok(())
    }

    /// Every variable, device ones downloaded, sorted by name.
    pub fn variables(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (name, d) in self.vars.lock().expect("variables lock").iter() {
            let t = self.device.download(d).map_err(|e| dev_err(name, e))?;
            out.push((name.clone(), t));
        }
        let host = self.host.resources();
        for name in host.names() {
            if let Some(t) = host.get(&name) {
                out.push((name, t));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// What runs have copied between host and device so far.
    pub fn transfer_counts(&self) -> TransferCounts {
        *self.counts.lock().expect("counts lock")
    }

    /// Runs the graph as [`Session::run`] does: fed tensors are uploaded
    /// where a device op reads them, fetches come back to the host.
    pub fn run(
        &self,
        feeds: &[(TensorName, Tensor)],
        fetches: &[TensorName],
        targets: &[String],
    ) -> Result<Vec<Tensor>> {
        self.run_with_device_feeds(feeds, Vec::new(), fetches, targets)
    }

    /// [`run`](Self::run) with some feeds already on the device (e.g. a
    /// batch prefetched on the copy stream, `CudaDevice::prefetch`).
    pub fn run_with_device_feeds(
        &self,
        feeds: &[(TensorName, Tensor)],
        device_feeds: Vec<(TensorName, DeviceTensor)>,
        fetches: &[TensorName],
        targets: &[String],
    ) -> Result<Vec<Tensor>> {
        let mut names: Vec<TensorName> = feeds
            .iter()
            .map(|(t, _)| t.clone())
            .chain(device_feeds.iter().map(|(t, _)| t.clone()))
            .collect();
        names.sort();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::DuplicateFeed {
                name: w[0].to_string(),
            });
        }
        let plan = self.host.plan(names, fetches, targets)?;
        let mut slots: Vec<Option<Value>> = vec![None; plan.uses.len()];
        let mut uses_left = plan.uses.clone();
        for (name, t) in feeds {
            slots[plan.feed_slots[name]] = Some(Value::Host(self.host.check_feed(name, t)?));
        }
        for (name, d) in device_feeds {
            let fits = self.host.tensor_info(&name).is_some_and(|i| {
                i.dtype.is_none_or(|t| t == DType::F32) && i.shape.accepts(d.shape())
            });
            if !fits {
                return Err(Error::FeedShape {
                    placeholder: name.to_string(),
                    expected: self
                        .host
                        .tensor_info(&name)
                        .map_or("?".into(), |i| format!("{:?} {}", i.dtype, i.shape)),
                    got: d.shape().to_vec(),
                });
            }
            slots[plan.feed_slots[&name]] = Some(Value::Dev(Arc::new(d)));
        }
        let graph = self.host.graph();
        for (pi, &id) in plan.nodes.iter().enumerate() {
            if plan.skip[pi] {
                continue;
            }
            let node = &graph.nodes()[id];
            let kinds: Vec<Where> = plan.inputs[pi]
                .iter()
                .map(|&s| match slots[s] {
                    Some(Value::Dev(_)) => Where::Device,
                    _ => Where::Host,
                })
                .collect();
            // Uploading inputs below only adds device inputs: the decision
            // stands.
            let w = place::decide(&node.op, &kinds, self.float_out[id]);
            if w == Where::Device {
                self.upload_shared_inputs(node, &plan.inputs[pi], &mut slots, &uses_left)?;
            }
            let inputs: Vec<Value> = plan.inputs[pi]
                .iter()
                .map(|&s| take(&mut slots, &mut uses_left, s))
                .collect();
            let outputs = self.run_node(id, node, w, inputs)?;
            for (port, slot) in plan.outputs[pi].iter().enumerate() {
                if let Some(s) = *slot {
                    let v = outputs
                        .get(port)
                        .cloned()
                        .ok_or_else(|| Error::InvalidNode {
                            node: node.name.clone(),
                            detail: format!(
                                "produced {} outputs, port {port} is read",
                                outputs.len()
                            ),
                        })?;
                    slots[s] = Some(v);
                }
            }
        }
        let mut out = Vec::with_capacity(plan.fetch_slots.len());
        for &s in &plan.fetch_slots {
            match take(&mut slots, &mut uses_left, s) {
                Value::Host(t) => out.push(t),
                Value::Dev(d) => {
                    self.counts.lock().expect("counts lock").fetches += 1;
                    out.push(
                        self.device
                            .download(&d)
                            .map_err(|e| dev_err("a fetch", e))?,
                    );
                }
            }
        }
        Ok(out)
    }

    /// Before a device node runs: a host value it reads as data that other
    /// nodes read too is uploaded once and kept in its slot on the device
    /// (as [`place::plan`] assumes), so the fed images cross once per step.
    fn upload_shared_inputs(
        &self,
        node: &Node,
        input_slots: &[usize],
        slots: &mut [Option<Value>],
        uses_left: &[usize],
    ) -> Result<()> {
        let params = place::host_inputs(&node.op, input_slots.len());
        for (i, &s) in input_slots.iter().enumerate() {
            if params.contains(&i) || uses_left[s] <= 1 {
                continue;
            }
            if let Some(Value::Host(t)) = &slots[s] {
                let v = Value::Host(t.clone());
                let d = self.to_device(node, self.producer(node, i), v)?;
                slots[s] = Some(Value::Dev(d));
            }
        }
        Ok(())
    }

    /// Runs `node` where [`place::decide`] put it (`w`).
    fn run_node(&self, id: usize, node: &Node, w: Where, inputs: Vec<Value>) -> Result<Vec<Value>> {
        match w {
            Where::Device if node.op == "_Recv" => {
                let out = self.run_on_host(id, node, inputs)?;
                out.into_iter()
                    .map(|v| Ok(Value::Dev(self.to_device(node, None, v)?)))
                    .collect()
            }
            Where::Device => ops::run(self, id, node, inputs),
            Where::Host => self.run_on_host(id, node, inputs),
        }
    }

    pub(crate) fn run_on_host(
        &self,
        id: usize,
        node: &Node,
        inputs: Vec<Value>,
    ) -> Result<Vec<Value>> {
        if let Some(key) = self.host.kernels[id].recv_key() {
            // A receive waits as long as this session allows, and must be
            // what it declares.
            let r = self
                .rendezvous
                .as_deref()
                .ok_or_else(|| Error::NoRendezvous {
                    node: node.name.clone(),
                    op: node.op.clone(),
                })?;
            let t = r.recv(key, Instant::now() + self.recv_timeout)?;
            let info = &self.host.infos[id][0];
            let dtype = info.dtype.unwrap_or(t.dtype());
            return Ok(vec![Value::Host(check_received(
                node,
                key,
                dtype,
                &info.shape,
                t,
            )?)]);
        }
        if SHAPE_ONLY.contains(&node.op.as_str()) {
            if let [Value::Dev(d)] = inputs.as_slice() {
                return Ok(vec![Value::Host(shape_tensor(node, d.shape())?)]);
            }
        }
        let mut host_inputs = Vec::with_capacity(inputs.len());
        for v in inputs {
            host_inputs.push(self.to_host(node, v)?);
        }
        let mut ctx = OpContext {
            node,
            inputs: host_inputs,
            resources: self.host.resources(),
            rendezvous: self.rendezvous.as_deref(),
        };
        let out = self.host.kernels[id].compute(&mut ctx)?;
        Ok(out.into_iter().map(Value::Host).collect())
    }

    /// A value on the host; a device value is downloaded (and counted).
    pub(crate) fn to_host(&self, node: &Node, v: Value) -> Result<Tensor> {
        match v {
            Value::Host(t) => Ok(t),
            Value::Dev(d) => {
                let t = self
                    .device
                    .download(&d)
                    .map_err(|e| Error::kernel(&node.name, &node.op, e))?;
                let mut c = self.counts.lock().expect("counts lock");
                c.downloads += 1;
                c.download_bytes += 4 * d.len() as u64;
                Ok(t)
            }
        }
    }

    /// A value on the device; a host value is uploaded (constants once).
    pub(crate) fn to_device(
        &self,
        node: &Node,
        producer: Option<usize>,
        v: Value,
    ) -> Result<Arc<DeviceTensor>> {
        let t = match v {
            Value::Dev(d) => return Ok(d),
            Value::Host(t) => t,
        };
        let producer_op = producer.map(|p| self.host.graph().nodes()[p].op.as_str());
        let is_const = producer_op == Some("Const");
        let is_feed = producer_op.is_some_and(|op| op.starts_with("Placeholder"));
        if is_const {
            if let Some(d) = self
                .consts
                .lock()
                .expect("consts lock")
                .get(&producer.unwrap())
            {
                return Ok(d.clone());
            }
        }
        let t = if t.dtype() == DType::F32 {
            t
        } else {
            Tensor::new(
                t.shape().to_vec(),
                t.to_f64_vec()
                    .into_iter()
                    .map(|x| x as f32)
                    .collect::<Vec<f32>>(),
            )
            .map_err(|e| Error::kernel(&node.name, &node.op, e))?
        };
        // Through a pinned staging buffer: queued, the host goes on.
        let d = Arc::new(
            self.device
                .upload_async(&t)
                .map_err(|e| Error::kernel(&node.name, &node.op, e))?,
        );
        let mut c = self.counts.lock().expect("counts lock");
        if is_const {
            self.consts
                .lock()
                .expect("consts lock")
                .insert(producer.unwrap(), d.clone());
        }
        if is_feed {
            c.feeds += 1;
        } else {
            c.uploads += 1;
            c.upload_bytes += 4 * t.len() as u64;
        }
        Ok(d)
    }

    /// The device variable `name`.
    pub(crate) fn variable(&self, node: &Node, name: &str) -> Result<Arc<DeviceTensor>> {
        self.vars
            .lock()
            .expect("variables lock")
            .get(name)
            .cloned()
            .ok_or_else(|| Error::InvalidNode {
                node: node.name.clone(),
                detail: format!(
                    "variable {name:?} is not on the device: run the init target or \
                     CudaSession::load_variables first"
                ),
            })
    }

    /// Takes variable `name` out for an in-place update (a copy when a
    /// read of it is still alive).
    pub(crate) fn take_variable(&self, node: &Node, name: &str) -> Result<DeviceTensor> {
        let d = self
            .vars
            .lock()
            .expect("variables lock")
            .remove(name)
            .ok_or_else(|| Error::InvalidNode {
                node: node.name.clone(),
                detail: format!(
                    "variable {name:?} is not on the device: run the init target or \
                     CudaSession::load_variables first"
                ),
            })?;
        match Arc::try_unwrap(d) {
            Ok(d) => Ok(d),
            Err(shared) => self
                .device
                .copy(&shared)
                .map_err(|e| Error::kernel(&node.name, &node.op, e)),
        }
    }

    pub(crate) fn put_variable(&self, name: &str, d: DeviceTensor) {
        self.vars
            .lock()
            .expect("variables lock")
            .insert(name.to_string(), Arc::new(d));
    }

    /// The node id producing data input `i` of `node`.
    pub(crate) fn producer(&self, node: &Node, i: usize) -> Option<usize> {
        node.data_inputs()
            .nth(i)
            .and_then(|t| self.host.graph().id(&t.node))
    }
}

fn dev_err(what: &str, e: psflow_kernels::Error) -> Error {
    Error::InvalidNode {
        node: what.to_string(),
        detail: format!("copying between host and device: {e}"),
    }
}

/// Takes slot `s` for one read (the last read moves it out).
fn take(slots: &mut [Option<Value>], uses_left: &mut [usize], s: usize) -> Value {
    uses_left[s] = uses_left[s].saturating_sub(1);
    if uses_left[s] == 0 {
        slots[s].take().expect("the plan orders producers first")
    } else {
        slots[s].clone().expect("the plan orders producers first")
    }
}

/// `Shape` of a device tensor, in the node's `out_type`.
fn shape_tensor(node: &Node, dims: &[usize]) -> Result<Tensor> {
    let dtype = node.attr_dtype_or("out_type", DType::I32)?;
    let t = match dtype {
        DType::I64 => Tensor::new(
            vec![dims.len()],
            dims.iter().map(|&d| d as i64).collect::<Vec<_>>(),
        ),
        _ => Tensor::new(
            vec![dims.len()],
            dims.iter().map(|&d| d as i32).collect::<Vec<_>>(),
        ),
    };
    t.map_err(|e| Error::kernel(&node.name, &node.op, e))
}
