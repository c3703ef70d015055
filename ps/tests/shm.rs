//! Tensor data through shared memory, over real gRPC on loopback: the same
//! values as through the messages, a PS that has it off, and regions a
//! request may not name.

mod common;

use std::time::Duration;

use common::{tensor, Server};
use psflow_kernels::Tensor;
use psflow_proto::ps as pb;
use psflow_proto::ps::parameter_server_client::ParameterServerClient;
use psflow_ps::{Limits, PsClient, PsService, ShardConfig, TensorRole};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

fn variables() -> Vec<(String, Tensor)> {
    vec![
        ("conv/weights".to_string(), tensor(&[3, 3, 8, 16], 1)),
        ("conv/bias".to_string(), tensor(&[16], 2)),
        ("fc/weights".to_string(), tensor(&[300, 1000], 3)), // 1.2 MB
        (
            "bn/moving_mean".to_string(),
            Tensor::new(vec![16], vec![0.0f32; 16]).unwrap(),
        ),
    ]
}

/// Five sync steps of one worker; the values pulled after each.
async fn train(c: &mut PsClient) -> Vec<Vec<(String, Tensor)>> {
    let vars = variables();
    c.init(&ShardConfig::new("job", 0.01, 1), &vars, false)
        .await
        .unwrap();
    let names: Vec<String> = vars.iter().map(|(n, _)| n.clone()).collect();
    let mut pulled = vec![];
    for step in 0..5u64 {
        let grads: Vec<(String, Tensor)> = vars
            .iter()
            .enumerate()
            .map(|(i, (n, t))| (n.clone(), tensor(t.shape(), 100 * step + i as u64)))
            .collect();
        let pushed = grads.iter().map(|(n, t)| {
            let role = if n.starts_with("bn/") {
                TensorRole::Assign
            } else {
                TensorRole::Gradient
            };
            (n.as_str(), role, t)
        });
        let r = c.push(0, step, false, pushed).await.unwrap();
        assert_eq!(r.version, step + 1);
        pulled.push(c.pull(&names, step + 1, WAIT).await.unwrap().tensors);
    }
    pulled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_memory_carries_the_same_values_as_the_messages() {
    let (a, b) = (Server::start().await, Server::start().await);
    let mut shm = a.client("job").await;
    let mut messages = b.client("job").await;
    messages.set_shm(false);
    let (x, y) = (train(&mut shm).await, train(&mut messages).await);
    assert_eq!(x, y);
    // The first push and pull teach the client their sizes; the rest went
    // through regions.
    assert_eq!(shm.shm_off(), None);
    assert!(shm.shm_regions() >= 1, "{}", shm.shm_regions());
    assert_eq!(messages.shm_regions(), 0);
    // Bytes are counted the same either way.
    let (sa, sb) = (shm.stats().await.unwrap(), messages.stats().await.unwrap());
    assert_eq!((sa.bytes_in, sa.bytes_out), (sb.bytes_in, sb.bytes_out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ps_with_shared_memory_off_is_used_through_the_messages() {
    let on = Server::start().await;
    let off = Server::with_service(PsService::with_shm(Limits::default(), false)).await;
    let mut c = off.client("job").await;
    let x = train(&mut c).await;
    let off_why = c.shm_off().expect("the client noticed");
    assert!(
        off_why.contains("off on this parameter server"),
        "{off_why}"
    );
    assert_eq!(c.shm_regions(), 0);
    assert_eq!(x, train(&mut on.client("job").await).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_naming_a_region_it_may_not_use_is_refused_or_answered_in_messages() {
    let server = Server::start().await;
    let mut c = server.client("job").await;
    let vars = variables();
    c.init(&ShardConfig::new("job", 0.01, 1), &vars, false)
        .await
        .unwrap();
    let mut raw = ParameterServerClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    // A push whose gradient is in a region this PS never made: refused,
    // nothing applied.
    let push = pb::PushRequest {
        header: Some(pb::PushHeader {
            job_id: "job".into(),
            worker: 0,
            base_version: 0,
            partial: false,
        }),
        chunks: vec![pb::TensorChunk {
            name: "conv/bias".into(),
            dtype: 1, // DT_FLOAT
            shape: vec![16],
            total_bytes: 64,
            shm_region: 77,
            ..Default::default()
        }],
    };
    let e = raw.push(tokio_stream::iter([push])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("region 77"), "{}", e.message());
    assert_eq!(c.stats().await.unwrap().version, 0);

    // Another job cannot open regions here.
    let e = raw
        .open_region(pb::OpenRegionRequest {
            job_id: "other".into(),
            bytes: 4096,
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("other"), "{}", e.message());

    // A pull naming an unknown region gets its values in the messages.
    let mut stream = raw
        .pull(pb::PullRequest {
            job_id: "job".into(),
            names: vec!["conv/bias".into()],
            shm_region: 77,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let m = stream.message().await.unwrap().unwrap();
    assert_eq!(m.chunks[0].shm_region, 0);
    assert_eq!(m.chunks[0].data.len(), 64);

    // Closing a region: once, and only the job's own.
    let r = raw
        .open_region(pb::OpenRegionRequest {
            job_id: "job".into(),
            bytes: 4096,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.pid, std::process::id());
    let close = |job: &str| pb::CloseRegionRequest {
        job_id: job.into(),
        region: r.region,
    };
    assert_eq!(
        raw.close_region(close("other")).await.unwrap_err().code(),
        Code::NotFound
    );
    raw.close_region(close("job")).await.unwrap();
    assert_eq!(
        raw.close_region(close("job")).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_given_up_after_a_failed_push_is_closed_at_the_ps() {
    let server = Server::start().await;
    let mut c = server.client("job").await;
    train(&mut c).await;
    let held = c.stats().await.unwrap().shm_regions as usize;
    assert!(held >= 1);
    assert_eq!(held, c.shm_regions());
    // The PS reads this push from a region, then refuses it: the client
    // gives the region up (it does not know how far the PS got).
    let t = tensor(&[300, 1000], 9);
    let e = c
        .push(0, 5, false, [("nope", TensorRole::Gradient, &t)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert_eq!(c.shm_regions(), held - 1);
    // The next call tells the PS to close it.
    let names: Vec<String> = variables().into_iter().map(|(n, _)| n).collect();
    c.pull(&names, 5, WAIT).await.unwrap();
    let s = c.stats().await.unwrap();
    assert_eq!(s.shm_regions as usize, c.shm_regions());
    assert!(s.shm_bytes > 0);
}
