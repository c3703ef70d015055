//! The rendezvous of one RunGraph step: worker-to-worker edges.
//!
//! As in TensorFlow, a `_Send` always hands its value to the step's
//! rendezvous on the worker that runs it; the receiving side pulls. A
//! `_Recv` whose sender is a task of this worker takes the value from the
//! same local rendezvous; one whose sender is another task calls that
//! task's worker ([`Peer`]): RecvTensor(step, key) waits there for the
//! `_Send` and streams the value back in chunks (`psflow_ps::wire`).
//! The executor never holds a thread for it: the call runs on the tokio
//! runtime and completes the `_Recv` through its callback.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use psflow_graph::executor::RecvDone;
use psflow_graph::{LocalRendezvous, Rendezvous, RendezvousKey};
use psflow_kernels::Tensor;
use psflow_proto::worker::worker_client::WorkerClient;
use psflow_proto::worker::RecvTensorRequest;
use psflow_ps::limits::{
    Limits, CONNECTION_WINDOW_BYTES, MAX_FRAME_BYTES, MAX_MESSAGE_BYTES, STREAM_WINDOW_BYTES,
};
use psflow_ps::wire::Assembler;
use tokio::runtime::Handle;
use tokio::task::AbortHandle;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use super::{Result, TaskError};

/// How long connecting to a peer worker may take.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a RecvTensor call may take beyond the wait it asks the peer for
/// (the transfer itself).
const RPC_SLACK: Duration = Duration::from_secs(30);

/// The task a device belongs to: `/job:worker/replica:0/task:1` of
/// `/job:worker/replica:0/task:1/device:CPU:0` (a task name is its own
/// task).
pub fn task_of(device: &str) -> &str {
    match device.find("/device:") {
        Some(i) => &device[..i],
        None => device,
    }
}

/// Another task's worker, as this worker's graphs receive from it.
#[derive(Clone)]
pub struct Peer {
    task: String,
    addr: String,
    client: WorkerClient<Channel>,
}

impl Peer {
    /// A peer at `addr` (`host:port` or a URI). Connects on first use.
    pub fn new(task: &str, addr: &str) -> Result<Peer> {
        let uri = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| {
                TaskError::Invalid(format!(
                    "the address {addr:?} given for peer task {task} is not valid: {e}"
                ))
            })?
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .max_frame_size(MAX_FRAME_BYTES)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES);
        let client = WorkerClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Peer {
            task: task.to_string(),
            addr: addr.to_string(),
            client,
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The value the peer's step `step` sends under `key`, waiting up to
    /// `wait` for its `_Send`.
    pub async fn recv(&self, step: u64, key: &RendezvousKey, wait: Duration) -> Result<Tensor> {
        let err = |code: Code, detail: String| TaskError::Peer {
            task: self.task.clone(),
            addr: self.addr.clone(),
            key: key.to_string(),
            step,
            code,
            detail,
        };
        let mut request = tonic::Request::new(RecvTensorRequest {
            key: key.to_string(),
            deadline_ms: wait.as_millis().max(1) as u64,
            step_id: step,
        });
        request.set_timeout(wait + RPC_SLACK);
        let mut stream = self
            .client
            .clone()
            .recv_tensor(request)
            .await
            .map_err(|s| err(s.code(), status_detail(&s)))?
            .into_inner();
        let mut assembler = Assembler::new(Limits::default());
        let mut value = None;
        while let Some(message) = stream
            .message()
            .await
            .map_err(|s| err(s.code(), status_detail(&s)))?
        {
            for chunk in message.chunks {
                let done = assembler
                    .add(chunk)
                    .map_err(|e| err(e.code(), e.to_string()))?;
                if let Some(r) = done {
                    if value.is_some() {
                        return Err(err(
                            Code::Internal,
                            "the peer sent more than one tensor".into(),
                        ));
                    }
                    value = Some(r.value);
                }
            }
        }
        assembler
            .finish()
            .map_err(|e| err(e.code(), e.to_string()))?;
        value.ok_or_else(|| {
            err(
                Code::Internal,
                "the peer's stream ended with no tensor".into(),
            )
        })
    }
}

/// A status's message, or its code where it has none (a refused
/// connection says little else).
fn status_detail(s: &tonic::Status) -> String {
    let detail = if s.message().is_empty() {
        format!("{:?}", s.code())
    } else {
        format!("{} ({:?})", s.message(), s.code())
    };
    if s.code() == Code::Unavailable {
        format!("{detail}; is that task's worker running and reachable there?")
    } else {
        detail
    }
}

/// A receive from a peer in flight: its callback (taken by whoever comes
/// first, the call or a cancel) and the call.
type Pending = (Arc<Mutex<Option<RecvDone>>>, AbortHandle);

/// The rendezvous one RunGraph call runs its partition with (see the
/// module docs).
pub struct PeerRendezvous {
    step: u64,
    /// This worker's task for the graph.
    task: String,
    /// The step's rendezvous on this worker (shared with RecvTensor and
    /// the step's other graphs here).
    local: Arc<LocalRendezvous>,
    peers: Arc<HashMap<String, Peer>>,
    wait: Duration,
    runtime: Handle,
    next: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
    /// The first failed receive from a peer: it explains a failed run
    /// better than the `_Recv` error it caused.
    failure: Arc<Mutex<Option<TaskError>>>,
}

impl PeerRendezvous {
    pub fn new(
        step: u64,
        task: String,
        local: Arc<LocalRendezvous>,
        peers: Arc<HashMap<String, Peer>>,
        wait: Duration,
        runtime: Handle,
    ) -> PeerRendezvous {
        PeerRendezvous {
            step,
            task,
            local,
            peers,
            wait,
            runtime,
            next: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            failure: Arc::new(Mutex::new(None)),
        }
    }

    /// The first failed receive from a peer, if any.
    pub fn take_failure(&self) -> Option<TaskError> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    fn is_local(&self, key: &RendezvousKey) -> bool {
        task_of(&key.send_device) == self.task
    }
}

impl Rendezvous for PeerRendezvous {
    fn send(&self, key: &RendezvousKey, value: Tensor) -> psflow_graph::Result<()> {
        // The receiver takes it from here, locally or by RecvTensor.
        self.local.send(key, value)
    }

    fn recv_async(&self, key: &RendezvousKey, done: RecvDone) -> u64 {
        if self.is_local(key) {
            return self.local.recv_async(key, done);
        }
        let from = task_of(&key.send_device);
        let Some(peer) = self.peers.get(from).cloned() else {
            // RegisterGraph checked every `_Recv`: only a key built
            // elsewhere lands here.
            done(Err(psflow_graph::Error::Rendezvous {
                key: key.to_string(),
                detail: format!("no address is known for task {from}"),
            }));
            return 0;
        };
        let ticket = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let slot = Arc::new(Mutex::new(Some(done)));
        let call = {
            let (slot, key, failure) = (slot.clone(), key.clone(), self.failure.clone());
            let (step, wait) = (self.step, self.wait);
            self.runtime.spawn(async move {
                let r = peer.recv(step, &key, wait).await.map_err(|e| {
                    let detail = e.to_string();
                    failure
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e);
                    psflow_graph::Error::Rendezvous {
                        key: key.to_string(),
                        detail,
                    }
                });
                let done = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(done) = done {
                    done(r);
                }
            })
        };
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ticket, (slot, call.abort_handle()));
        ticket
    }

    fn cancel(&self, key: &RendezvousKey, ticket: u64) -> bool {
        if self.is_local(key) {
            return self.local.cancel(key, ticket);
        }
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ticket);
        match pending {
            Some((slot, call)) => {
                let waiting = slot
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .is_some();
                call.abort();
                waiting
            }
            None => false,
        }
    }
}

impl Drop for PeerRendezvous {
    /// Calls still running belong to a finished run: stop them.
    fn drop(&mut self) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, (_, call)) in pending {
            call.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::task_of;

    #[test]
    fn a_device_belongs_to_its_task() {
        assert_eq!(
            task_of("/job:worker/replica:0/task:1/device:CPU:0"),
            "/job:worker/replica:0/task:1"
        );
        assert_eq!(
            task_of("/job:worker/replica:0/task:1"),
            "/job:worker/replica:0/task:1"
        );
    }
}
