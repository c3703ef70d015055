//! The cost of distribution, measured: push + pull of a model's worth of
//! parameters between one client and one PS on loopback gRPC, next to a raw
//! TCP loopback transfer of the same bytes in the same run
//! (`psflow bench transfer`).

use std::time::{Duration, Instant};

use psflow_graph::train::optimizer::{Optimizer, SgdConfig};
use psflow_graph::train::schedule::Schedule;
use psflow_kernels::Tensor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{Error, Mode, PsClient, PsService, Result, ShardConfig, TensorRole};

/// Bytes per parameter tensor in the benchmark (a large MobileNet layer).
pub const TENSOR_BYTES: usize = 4 << 20;

/// Medians over the timed repeats; MB is 10⁶ bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferReport {
    /// Parameter bytes moved each way.
    pub bytes: u64,
    pub tensors: usize,
    pub repeats: usize,
    /// Push (gradients in, SGD applied) alone.
    pub push_mbps: f64,
    /// Pull (values out) alone.
    pub pull_mbps: f64,
    /// Push then pull, both directions' bytes over the total time.
    pub ps_mbps: f64,
    /// The same bytes one way then back over a plain TCP connection.
    pub tcp_mbps: f64,
    /// `ps_mbps / tcp_mbps`.
    pub ratio: f64,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mbps(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e6
}

/// Runs the benchmark with `mib` MiB of parameters (in tensors of
/// [`TENSOR_BYTES`]), one warm-up and `repeats` timed rounds.
pub async fn transfer(mib: usize, repeats: usize) -> Result<TransferReport> {
    let bytes = mib.max(1) << 20;
    let repeats = repeats.max(1);
    let tensors: Vec<(String, Tensor)> = (0..bytes.div_ceil(TENSOR_BYTES))
        .map(|i| {
            let n = (bytes - i * TENSOR_BYTES).min(TENSOR_BYTES) / 4;
            (format!("layer_{i}/weights"), Tensor::full(vec![n], 0.5f32))
        })
        .collect();
    let total: u64 = tensors.iter().map(|(_, t)| t.nbytes() as u64).sum();

    // The PS, on an ephemeral loopback port, stopped at the end.
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::Invalid(format!("binding a loopback port: {e}")))?;
    let addr = listener.local_addr().expect("bound").to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::serve_with(listener, PsService::default(), async {
        let _ = stopped.await;
    }));
    let mut client = PsClient::connect(&addr, "bench", Duration::from_secs(10)).await?;
    let config = ShardConfig {
        optimizer: Optimizer::Sgd(SgdConfig {}),
        schedule: Schedule::Constant(0.0),
        mode: Mode::Async,
        ..ShardConfig::new("bench", 0.0, 1)
    };
    client.init(&config, &tensors, false).await?;
    let grads: Vec<_> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), TensorRole::Gradient, t))
        .collect();

    let (mut push_t, mut pull_t, mut both_t) = (vec![], vec![], vec![]);
    for round in 0..=repeats {
        let t0 = Instant::now();
        let r = client.push(0, round as u64, false, grads.clone()).await?;
        let t1 = Instant::now();
        let pulled = client.pull(&[], r.version, Duration::from_secs(60)).await?;
        let t2 = Instant::now();
        if pulled.tensors.len() != tensors.len() {
            return Err(Error::Invalid(format!(
                "pulled {} tensors, pushed {}",
                pulled.tensors.len(),
                tensors.len()
            )));
        }
        if round > 0 {
            push_t.push(t1 - t0);
            pull_t.push(t2 - t1);
            both_t.push(t2 - t0);
        }
    }
    let _ = stop.send(());
    let _ = server.await;

    let tcp = tcp_round_trips(total as usize, repeats).await?;
    let (push, pull, both) = (median(push_t), median(pull_t), median(both_t));
    let ps_mbps = mbps(2 * total, both);
    let tcp_mbps = mbps(2 * total, tcp);
    Ok(TransferReport {
        bytes: total,
        tensors: tensors.len(),
        repeats,
        push_mbps: mbps(total, push),
        pull_mbps: mbps(total, pull),
        ps_mbps,
        tcp_mbps,
        ratio: ps_mbps / tcp_mbps,
    })
}

/// Median time to send `bytes` to a loopback peer and receive them back
/// (as push then pull), over one plain TCP connection.
async fn tcp_round_trips(bytes: usize, repeats: usize) -> Result<Duration> {
    let io = |e: std::io::Error| Error::Invalid(format!("raw TCP loopback transfer: {e}"));
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(io)?;
    let addr = listener.local_addr().map_err(io)?;
    // The peer echoes each round: reads `bytes`, then writes them back.
    let peer = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        let mut buf = vec![0u8; bytes];
        for _ in 0..=repeats {
            s.read_exact(&mut buf).await?;
            s.write_all(&buf).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut s = TcpStream::connect(addr).await.map_err(io)?;
    s.set_nodelay(true).map_err(io)?;
    let out = vec![1u8; bytes];
    let mut back = vec![0u8; bytes];
    let mut times = Vec::new();
    for round in 0..=repeats {
        let t0 = Instant::now();
        // Write and read concurrently so neither side's buffers fill up.
        let (mut r, mut w) = s.split();
        let (a, b) = tokio::join!(w.write_all(&out), r.read_exact(&mut back));
        a.map_err(io)?;
        b.map_err(io)?;
        if round > 0 {
            times.push(t0.elapsed());
        }
    }
    peer.await
        .map_err(|e| Error::Invalid(format!("raw TCP peer: {e}")))?
        .map_err(io)?;
    Ok(median(times))
}
