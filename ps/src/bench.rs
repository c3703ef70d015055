//! The cost of distribution, measured: push + pull of a model's worth of
//! parameters between one client and one PS on loopback gRPC, next to a raw
//! TCP loopback transfer of the same bytes in the same run
//! (`psflow bench transfer`); and the same push + pull through shared
//! memory, which clients on the PS's host use instead of the messages.

use std::time::{Duration, Instant};

use psflow_graph::train::optimizer::{Optimizer, SgdConfig};
use psflow_graph::train::schedule::Schedule;
use psflow_kernels::Tensor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{Error, Mode, PsClient, PsService, Result, ShardConfig, TensorRole};

/// Bytes per parameter tensor in the benchmark (a large MobileNet layer).
pub const TENSOR_BYTES: usize = 4 << 20;

/// Medians over the timed rounds; MB is 10⁶ bytes. Each round moves the
/// bytes through the PS and then over raw TCP, so that both sides of a
/// round's ratio see the same moment of a shared machine.
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
    /// The median over the rounds of each round's PS / TCP rate.
    pub ratio: f64,
    /// The lowest and highest round's ratio.
    pub ratio_range: (f64, f64),
    /// Push then pull with the data through shared memory (the default
    /// on one host), both directions' bytes over the total time.
    pub shm_mbps: f64,
    /// Each timed round: PS push, PS pull, raw TCP there and back, and
    /// push + pull through shared memory.
    pub rounds: Vec<[Duration; 4]>,
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn mbps(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e6
}

/// Runs the benchmark with `mib` MiB of parameters (in tensors of
/// [`TENSOR_BYTES`]), one warm-up and `repeats` timed rounds, each round a
/// push and a pull through the PS followed by the same bytes there and
/// back over raw TCP.
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
    // The gRPC figures are of the messages alone: this client does not
    // use shared memory; `shm_client` does.
    let mut client = PsClient::connect(&addr, "bench", Duration::from_secs(10)).await?;
    client.set_shm(false);
    let mut shm_client = PsClient::connect(&addr, "bench", Duration::from_secs(10)).await?;
    shm_client.set_shm(true);
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
    let mut tcp = TcpEcho::start(total as usize, repeats + 1).await?;
    let push_pull = |c: &mut PsClient, round: u64| {
        let mut c = c.clone();
        let grads = grads.clone();
        let n = tensors.len();
        async move {
            let t0 = Instant::now();
            let r = c.push(0, round, false, grads).await?;
            let t1 = Instant::now();
            let pulled = c.pull(&[], r.version, Duration::from_secs(60)).await?;
            let t2 = Instant::now();
            if pulled.tensors.len() != n {
                return Err(Error::Invalid(format!(
                    "pulled {} tensors, pushed {n}",
                    pulled.tensors.len(),
                )));
            }
            Ok::<_, Error>((t1 - t0, t2 - t1))
        }
    };
    // The shared-memory client learns the sizes and opens its regions.
    for round in 0..2 {
        push_pull(&mut shm_client, round).await?;
    }
    if let Some(why) = shm_client.shm_off() {
        return Err(Error::Invalid(format!(
            "shared memory is not in use: {why}"
        )));
    }

    // Each timed round: PS push, PS pull, raw TCP there and back, push and
    // pull through shared memory.
    let mut rounds: Vec<[Duration; 4]> = Vec::with_capacity(repeats);
    for round in 0..=repeats {
        let (push, pull) = push_pull(&mut client, round as u64).await?;
        let raw = tcp.round().await?;
        let (shm_push, shm_pull) = push_pull(&mut shm_client, round as u64).await?;
        if round > 0 {
            rounds.push([push, pull, raw, shm_push + shm_pull]);
        }
    }
    let _ = stop.send(());
    let _ = server.await;
    tcp.finish().await?;

    let of = |f: fn(&[Duration; 4]) -> Duration| median(rounds.iter().map(f).collect());
    // A round's ratio is the TCP time over the PS time (same bytes).
    let ratios: Vec<f64> = rounds
        .iter()
        .map(|[push, pull, raw, _]| raw.as_secs_f64() / (*push + *pull).as_secs_f64())
        .collect();
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(0.0, f64::max);
    Ok(TransferReport {
        bytes: total,
        tensors: tensors.len(),
        repeats,
        push_mbps: mbps(total, of(|r| r[0])),
        pull_mbps: mbps(total, of(|r| r[1])),
        ps_mbps: mbps(2 * total, of(|r| r[0] + r[1])),
        tcp_mbps: mbps(2 * total, of(|r| r[2])),
        ratio: median(ratios),
        ratio_range: (lo, hi),
        shm_mbps: mbps(2 * total, of(|r| r[3])),
        rounds,
    })
}

fn tcp_error(e: std::io::Error) -> Error {
    Error::Invalid(format!("raw TCP loopback transfer: {e}"))
}

/// A plain TCP connection to a loopback peer that echoes `bytes` back,
/// `rounds` times.
struct TcpEcho {
    stream: TcpStream,
    peer: tokio::task::JoinHandle<std::io::Result<()>>,
    out: Vec<u8>,
    back: Vec<u8>,
}

impl TcpEcho {
    async fn start(bytes: usize, rounds: usize) -> Result<TcpEcho> {
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(tcp_error)?;
        let addr = listener.local_addr().map_err(tcp_error)?;
        // The peer echoes each round: reads `bytes`, then writes them back.
        let peer = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await?;
            s.set_nodelay(true)?;
            let mut buf = vec![0u8; bytes];
            for _ in 0..rounds {
                s.read_exact(&mut buf).await?;
                s.write_all(&buf).await?;
            }
            Ok(())
        });
        let stream = TcpStream::connect(addr).await.map_err(tcp_error)?;
        stream.set_nodelay(true).map_err(tcp_error)?;
        Ok(TcpEcho {
            stream,
            peer,
            out: vec![1u8; bytes],
            back: vec![0u8; bytes],
        })
    }

    /// Time to send the bytes and receive them back (as push then pull).
    async fn round(&mut self) -> Result<Duration> {
        let t0 = Instant::now();
        // Write and read concurrently so neither side's buffers fill up.
        let (mut r, mut w) = self.stream.split();
        let (a, b) = tokio::join!(w.write_all(&self.out), r.read_exact(&mut self.back));
        a.map_err(tcp_error)?;
        b.map_err(tcp_error)?;
        Ok(t0.elapsed())
    }

    async fn finish(self) -> Result<()> {
        self.peer
            .await
            .map_err(|e| Error::Invalid(format!("raw TCP peer: {e}")))?
            .map_err(tcp_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_round_goes_through_the_ps_and_over_tcp() {
        let r = transfer(6, 3).await.unwrap();
        assert_eq!(r.bytes, 6 << 20);
        // 4 MiB tensors: one full, one of 2 MiB.
        assert_eq!(r.tensors, 2);
        assert_eq!(r.rounds.len(), 3);
        assert!(r.rounds.iter().flatten().all(|t| *t > Duration::ZERO));
        let (lo, hi) = r.ratio_range;
        assert!(lo > 0.0 && lo <= r.ratio && r.ratio <= hi, "{r:?}");
        assert!(r.ps_mbps > 0.0 && r.tcp_mbps > 0.0, "{r:?}");
    }
}
