//! A parameter server on a loopback port, stopped when dropped.
#![allow(dead_code)]

use std::time::Duration;

use psflow_kernels::Tensor;
use psflow_ps::{Limits, PsClient, PsService};
use tokio::sync::oneshot;

pub struct Server {
    pub addr: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub async fn start() -> Server {
        Server::with_limits(Limits::default()).await
    }

    pub async fn with_limits(limits: Limits) -> Server {
        Server::with_service(PsService::new(limits)).await
    }

    pub async fn with_service(service: PsService) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            psflow_ps::serve_with(listener, service, async {
                let _ = rx.await;
            })
            .await
            .expect("server failed");
        });
        Server {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn client(&self, job: &str) -> PsClient {
        PsClient::connect(&self.addr, job, Duration::from_secs(5))
            .await
            .unwrap()
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Deterministic pseudo-random floats in [-1, 1).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

pub fn tensor(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(shape.to_vec(), values(n, seed)).unwrap()
}
