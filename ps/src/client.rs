//! [`PsClient`]: the worker's (and coordinator's) side of the PS protocol.
//! It cuts tensors into chunks for Init and Push, and reassembles pulled
//! ones, with the same limits as the server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use http_body_util::BodyExt;
use psflow_kernels::Tensor;
use psflow_proto::ps as pb;
use psflow_proto::ps::parameter_server_client::ParameterServerClient;
use psflow_proto::ps::{PushOutcome, TensorRole};
use tonic::codegen::{http, Service};
use tonic::transport::{Channel, Endpoint};

use crate::config::ShardConfig;
use crate::limits::{
    Limits, CONNECTION_WINDOW_BYTES, MAX_FRAME_BYTES, MAX_MESSAGE_BYTES, STREAM_WINDOW_BYTES,
};
use crate::shard::PushReply;
use crate::shm::{self, Lease, Pool, Region, Use, Want};
use crate::wire::{decode_framed, encode_push_request, only, pack, pack_shm, Assembler, Start};
use crate::{Error, Result};

/// The gRPC path of Push.
const PUSH_PATH: &str = "/psflow.ps.ParameterServer/Push";

/// Values pulled from a shard.
#[derive(Debug, Clone, PartialEq)]
pub struct Pulled {
    /// The shard version the values belong to.
    pub version: u64,
    /// In the order asked for (by name when all were asked for).
    pub tensors: Vec<(String, Tensor)>,
}

/// A connection to one parameter server, for one job.
#[derive(Clone)]
pub struct PsClient {
    inner: ParameterServerClient<Channel>,
    /// The same connection, for Push sent without tonic's encoder.
    channel: Channel,
    push_uri: http::Uri,
    addr: String,
    job: String,
    limits: Limits,
    /// Shared-memory regions at this PS, shared by the clones (`None`:
    /// the PS is not on a loopback address, or shared memory is off).
    shm: Option<Arc<Pool>>,
}

/// Whether `addr` (`host:port`, optionally `http://`) names this host by a
/// loopback address or `localhost`.
pub fn is_loopback(addr: &str) -> bool {
    let hostport = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    let hostport = hostport.trim_end_matches('/');
    if let Ok(sa) = hostport.parse::<std::net::SocketAddr>() {
        return sa.ip().is_loopback();
    }
    let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    host.eq_ignore_ascii_case("localhost")
}

impl PsClient {
    /// Connects to the PS at `addr` (`host:port` or `http://host:port`),
    /// retrying until `timeout` passes (the server may still be starting).
    pub async fn connect(
        addr: &str,
        job: impl Into<String>,
        timeout: Duration,
    ) -> Result<PsClient> {
        let uri = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let connect_err = |detail: String| Error::Connect {
            addr: addr.to_string(),
            detail,
        };
        let push_uri = format!("{}{PUSH_PATH}", uri.trim_end_matches('/'))
            .parse()
            .map_err(|e| connect_err(format!("not a valid address: {e}")))?;
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| connect_err(format!("not a valid address: {e}")))?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .max_frame_size(MAX_FRAME_BYTES)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES);
        let deadline = Instant::now() + timeout;
        let mut backoff = Duration::from_millis(10);
        let channel = loop {
            match endpoint.connect().await {
                Ok(c) => break c,
                Err(e) if Instant::now() + backoff < deadline => {
                    tracing::debug!(addr, error = %e, "parameter server not reachable yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(e) => {
                    return Err(connect_err(format!(
                        "{e} (gave up after {} ms; is `psflow ps` running there?)",
                        timeout.as_millis()
                    )))
                }
            }
        };
        let inner = ParameterServerClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(PsClient {
            inner,
            channel,
            push_uri,
            addr: addr.to_string(),
            job: job.into(),
            limits: Limits::default(),
            shm: (is_loopback(addr) && shm::enabled_by_env()).then(Default::default),
        })
    }

    /// Moves tensor data through shared memory when the PS is on this
    /// host (the default for a loopback address, unless `PSFLOW_SHM=off`),
    /// or always in the gRPC messages. Applies to the clones made after.
    pub fn set_shm(&mut self, on: bool) {
        self.shm = on.then(Default::default);
    }

    /// Why this client moves tensor data in the gRPC messages rather than
    /// through shared memory (`None` while it uses or may use it).
    pub fn shm_off(&self) -> Option<String> {
        match &self.shm {
            None => Some(
                "not asked for (the PS is not on a loopback address, or PSFLOW_SHM=off)".into(),
            ),
            Some(pool) => pool.off(),
        }
    }

    /// Shared-memory regions this client (with its clones) holds at the PS.
    pub fn shm_regions(&self) -> usize {
        self.shm.as_ref().map_or(0, |p| p.count())
    }

    /// A region for the next push or pull, opening one at the PS when
    /// none free fits; `None` when the data go in the messages. A region
    /// that cannot be opened turns shared memory off for this client (and
    /// its clones), with a log line saying why.
    async fn lease(&mut self, kind: Use) -> Option<Lease> {
        let pool = self.shm.clone()?;
        // Regions given up since the last call are closed at the PS (it
        // may still hold them for a call that failed; it keeps its own
        // reference until that call ends).
        for region in pool.take_closing() {
            if let Err(e) = self.close_region(region).await {
                tracing::debug!(addr = %self.addr, region, error = %e, "closing a region given up");
            }
        }
        match pool.want(kind) {
            Want::None => None,
            Want::Lease(lease) => Some(lease),
            Want::Open(bytes) => match self.open_region(bytes).await {
                Ok(region) => {
                    let (lease, first) = pool.adopt(region);
                    if first {
                        tracing::info!(
                            addr = %self.addr,
                            "tensors to and from this parameter server go through shared memory"
                        );
                    }
                    Some(lease)
                }
                Err(why) => {
                    tracing::info!(
                        addr = %self.addr,
                        "not using shared memory with this parameter server ({why}); \
                         tensors travel in the gRPC messages"
                    );
                    pool.turn_off(why);
                    None
                }
            },
        }
    }

    /// Asks the PS for a region of `bytes` and maps it.
    async fn open_region(&mut self, bytes: u64) -> std::result::Result<Region, String> {
        let r = self
            .inner
            .open_region(pb::OpenRegionRequest {
                job_id: self.job.clone(),
                bytes,
            })
            .await
            .map_err(|s| format!("OpenRegion: {}", s.message()))?
            .into_inner();
        let capacity = usize::try_from(r.bytes).map_err(|_| "a region too large".to_string());
        let opened = capacity.and_then(|capacity| {
            Region::open(r.region, r.pid, r.fd, &r.token, capacity).map_err(|e| e.to_string())
        });
        if opened.is_err() {
            // The PS need not keep what this side cannot use.
            let _ = self.close_region(r.region).await;
        }
        opened
    }

    /// Tells the PS to forget region `region`.
    async fn close_region(&mut self, region: u64) -> std::result::Result<(), tonic::Status> {
        let close = pb::CloseRegionRequest {
            job_id: self.job.clone(),
            region,
        };
        self.inner.close_region(close).await.map(|_| ())
    }

    /// A push or pull of `bytes` tensor bytes ended well: the next one's
    /// region is sized from it, and its region, if it had one, may be lent
    /// again.
    fn call_done(&self, kind: Use, bytes: u64, lease: Option<Lease>) {
        if let Some(pool) = &self.shm {
            pool.learn(kind, bytes);
        }
        if let Some(lease) = lease {
            lease.done();
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn job(&self) -> &str {
        &self.job
    }

    /// The limits applied to pulled tensors (default: [`Limits::default`]).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Configures the shard (`config.job_id` must be this client's job) and
    /// loads `values`; `force` replaces a shard of the same job.
    pub async fn init(
        &mut self,
        config: &ShardConfig,
        values: &[(String, Tensor)],
        force: bool,
    ) -> Result<pb::InitResponse> {
        if config.job_id != self.job {
            return Err(Error::Invalid(format!(
                "this client is for job `{}`, the shard config for job `{}`",
                self.job, config.job_id
            )));
        }
        let header = config.to_header(force);
        let messages = pack(
            values
                .iter()
                .map(|(n, t)| (n.as_str(), TensorRole::Gradient, t)),
            Start::Full,
        );
        let requests = with_header(messages, header, |header, chunks| pb::InitRequest {
            header,
            chunks,
        });
        let r = self
            .inner
            .init(tokio_stream::iter(requests))
            .await
            .map_err(|status| Error::Rpc { op: "Init", status })?;
        Ok(r.into_inner())
    }

    /// The values of `names` (all when empty) once the shard's version is
    /// at least `min_version`, waiting up to `deadline` for it.
    pub async fn pull(
        &mut self,
        names: &[String],
        min_version: u64,
        deadline: Duration,
    ) -> Result<Pulled> {
        let mut tensors = Vec::with_capacity(names.len());
        let version = self
            .pull_each(names, min_version, deadline, |name, value| {
                tensors.push((name, value));
                Ok(())
            })
            .await?;
        Ok(Pulled { version, tensors })
    }

    /// [`PsClient::pull`], handing each tensor to `each` as soon as its
    /// last chunk arrives (in the order asked for), so that a step can
    /// start on the first layers while later ones are still on the wire.
    /// Returns the version. An error from `each` ends the pull with it.
    pub async fn pull_each(
        &mut self,
        names: &[String],
        min_version: u64,
        deadline: Duration,
        mut each: impl FnMut(String, Tensor) -> Result<()>,
    ) -> Result<u64> {
        // The PS writes the values into this region, if there is one; it is
        // lent again only once the whole answer has been read.
        let lease = self.lease(Use::Pull).await;
        let req = pb::PullRequest {
            job_id: self.job.clone(),
            names: names.to_vec(),
            min_version,
            deadline_ms: deadline.as_millis().min(u64::MAX as u128) as u64,
            shm_region: lease.as_ref().map_or(0, |l| l.region().id()),
        };
        let rpc = |status| Error::Rpc { op: "Pull", status };
        let mut stream = self.inner.pull(req).await.map_err(rpc)?.into_inner();
        let mut assembler = Assembler::new(self.limits);
        if let Some(lease) = &lease {
            assembler = assembler.with_regions(only(lease.region().clone()));
        }
        let mut version = None;
        while let Some(m) = stream.message().await.map_err(rpc)? {
            version.get_or_insert(m.version);
            for c in m.chunks {
                if let Some(r) = assembler.add(c)? {
                    each(r.name, r.value)?;
                }
            }
        }
        assembler.finish()?;
        let version = version.ok_or_else(|| {
            Error::Invalid("the parameter server ended Pull without a message".into())
        })?;
        self.call_done(Use::Pull, assembler.bytes(), lease);
        Ok(version)
    }

    /// Pushes worker `worker`'s gradients and assigned values computed on
    /// `base_version` (the step, in sync mode). `partial` says that more
    /// pushes for this step follow from this worker.
    pub async fn push<'a>(
        &mut self,
        worker: u32,
        base_version: u64,
        partial: bool,
        tensors: impl IntoIterator<Item = (&'a str, TensorRole, &'a Tensor)>,
    ) -> Result<PushReply> {
        let batch: Vec<(String, TensorRole, Tensor)> = tensors
            .into_iter()
            .map(|(name, role, t)| (name.to_string(), role, t.clone()))
            .collect();
        self.push_stream(
            worker,
            base_version,
            partial,
            futures::stream::iter([batch]),
        )
        .await
    }

    /// [`PsClient::push`] of tensors that are still being computed: each
    /// batch is sent as soon as `batches` yields it (packed into messages
    /// together), in one Push call that the shard applies when the stream
    /// ends. The stream must end only when the push is complete; to
    /// abandon it, drop the returned future (the call is reset and the
    /// shard discards what it received).
    pub async fn push_stream(
        &mut self,
        worker: u32,
        base_version: u64,
        partial: bool,
        batches: impl futures::Stream<Item = Vec<(String, TensorRole, Tensor)>> + Send + 'static,
    ) -> Result<PushReply> {
        let header = pb::PushRequest {
            header: Some(pb::PushHeader {
                job_id: self.job.clone(),
                worker,
                base_version,
                partial,
            }),
            chunks: vec![],
        };
        // The data go into this region while they fit (the PS reads them
        // before it replies); it is lent again only after a reply.
        let lease = self.lease(Use::Push).await;
        let region = lease.as_ref().map(|l| l.region().clone());
        let mut cursor = 0usize;
        let total = Arc::new(AtomicU64::new(0));
        let counted = total.clone();
        let body = batches.flat_map(move |batch| {
            let bytes: u64 = batch.iter().map(|(_, _, t)| t.nbytes() as u64).sum();
            counted.fetch_add(bytes, Ordering::Relaxed);
            let messages = pack_shm(
                batch
                    .iter()
                    .map(|(name, role, t)| (name.as_str(), *role, t)),
                Start::Full,
                region.as_deref().map(|r| (r, &mut cursor)),
            );
            futures::stream::iter(
                messages
                    .into_iter()
                    .map(|chunks| pb::PushRequest {
                        header: None,
                        chunks,
                    })
                    .collect::<Vec<_>>(),
            )
        });
        let requests = futures::stream::once(async { header }).chain(body);
        let reply = self.send_push(requests).await?;
        self.call_done(Use::Push, total.load(Ordering::Relaxed), lease);
        Ok(reply)
    }

    /// One Push call of `requests`, each written as its protobuf framing
    /// around the chunks' data, which stay the tensors' own buffers
    /// ([`encode_framed`]): tonic's encoder would copy every gradient into
    /// its buffer first. The reply is read as tonic would (a status in
    /// the headers or the trailers, one `PushResponse`).
    async fn send_push(
        &mut self,
        requests: impl futures::Stream<Item = pb::PushRequest> + Send + 'static,
    ) -> Result<PushReply> {
        let rpc = |status| Error::Rpc { op: "Push", status };
        let transport = |e: tonic::transport::Error| rpc(tonic::Status::from_error(Box::new(e)));
        let frames = requests.flat_map(|r| {
            let mut pieces = Vec::new();
            encode_push_request(r.header.as_ref(), r.chunks, &mut pieces);
            futures::stream::iter(
                pieces
                    .into_iter()
                    .map(|b| Ok::<_, std::convert::Infallible>(http_body::Frame::data(b))),
            )
        });
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(self.push_uri.clone())
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(tonic::body::Body::new(http_body_util::StreamBody::new(
                frames,
            )))
            .map_err(|e| {
                rpc(tonic::Status::internal(format!(
                    "building the request: {e}"
                )))
            })?;
        let mut channel = self.channel.clone();
        futures::future::poll_fn(|cx| channel.poll_ready(cx))
            .await
            .map_err(transport)?;
        let response = channel.call(request).await.map_err(transport)?;
        // A status in the headers is a trailers-only answer (an error).
        if let Some(status) = tonic::Status::from_header_map(response.headers()) {
            if status.code() != tonic::Code::Ok {
                return Err(rpc(status));
            }
        }
        if response.status() != http::StatusCode::OK {
            return Err(rpc(tonic::Status::unknown(format!(
                "the parameter server answered HTTP {}",
                response.status()
            ))));
        }
        let collected = response.into_body().collect().await.map_err(rpc)?;
        match collected
            .trailers()
            .and_then(tonic::Status::from_header_map)
        {
            Some(status) if status.code() != tonic::Code::Ok => return Err(rpc(status)),
            Some(_) => {}
            None => {
                return Err(rpc(tonic::Status::internal(
                    "the Push reply ended without a gRPC status",
                )))
            }
        }
        let r: pb::PushResponse = decode_framed(&collected.to_bytes()).map_err(rpc)?;
        Ok(PushReply {
            outcome: PushOutcome::try_from(r.outcome).unwrap_or(PushOutcome::Accepted),
            version: r.version,
            message: r.message,
        })
    }

    pub async fn stats(&mut self) -> Result<pb::StatsResponse> {
        let r = self
            .inner
            .stats(pb::StatsRequest {})
            .await
            .map_err(|status| Error::Rpc {
                op: "Stats",
                status,
            })?;
        Ok(r.into_inner())
    }

    /// Sync mode: the number of workers steps wait for from now on (a
    /// worker died or joined). Returns the shard's version after the change
    /// (a step that now has enough workers is applied at once).
    pub async fn set_workers(&mut self, workers: u32) -> Result<u64> {
        let r = self
            .inner
            .set_workers(pb::SetWorkersRequest {
                job_id: self.job.clone(),
                workers,
            })
            .await
            .map_err(|status| Error::Rpc {
                op: "SetWorkers",
                status,
            })?;
        Ok(r.into_inner().version)
    }
}

/// One request per message of chunks, the header in the first (a request
/// with no tensors is the header alone).
fn with_header<H, M>(
    messages: Vec<Vec<pb::TensorChunk>>,
    header: H,
    make: impl Fn(Option<H>, Vec<pb::TensorChunk>) -> M,
) -> Vec<M> {
    let mut header = Some(header);
    let mut out: Vec<M> = messages
        .into_iter()
        .map(|chunks| make(header.take(), chunks))
        .collect();
    if let Some(h) = header {
        out.push(make(Some(h), vec![]));
    }
    out
}
