//! Round trips, limits and bad requests over real gRPC on loopback: a
//! refused request is a clear error and leaves the shard as it was.

mod common;

use std::time::Duration;

use common::{tensor, Server};
use psflow_kernels::Tensor;
use psflow_ps::{Limits, Mode, PsClient, PushOutcome, ShardConfig, TensorRole};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

fn sync2() -> ShardConfig {
    ShardConfig::new("job", 0.1, 2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mib_tensor_round_trips_in_chunks() {
    let server = Server::start().await;
    let mut c = server.client("job").await;
    let big = tensor(&[5 * 1024, 1024], 7); // 20 MiB of f32
    let vars = vec![
        ("big".to_string(), big.clone()),
        ("small".to_string(), tensor(&[3], 8)),
        ("step".to_string(), Tensor::scalar(41i64)),
        (
            "empty".to_string(),
            Tensor::new(vec![0], Vec::<f32>::new()).unwrap(),
        ),
    ];
    let r = c.init(&sync2(), &vars, false).await.unwrap();
    assert_eq!((r.variables, r.bytes), (4, 20 * 1024 * 1024 + 12 + 8));
    let all = c.pull(&[], 0, WAIT).await.unwrap();
    let mut want = vars.clone();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(all.tensors, want);
    // In the order asked for.
    let two = c
        .pull(&["small".into(), "big".into()], 0, WAIT)
        .await
        .unwrap();
    assert_eq!(two.tensors[0].0, "small");
    assert_eq!(two.tensors[1].1, big);
    let s = c.stats().await.unwrap();
    // All (20 MiB + 12 + 8 + 0 bytes), then `small` and `big` again.
    assert_eq!(s.bytes_out, 2 * (20 * 1024 * 1024 + 12) + 8);
    let v: Vec<_> = s
        .variables
        .iter()
        .map(|v| (v.name.as_str(), v.bytes))
        .collect();
    assert!(v.contains(&("big", 20 * 1024 * 1024)));
    // RMSProp keeps two slots per float32 variable, none for the int64.
    let big_stats = s.variables.iter().find(|v| v.name == "big").unwrap();
    assert_eq!(big_stats.slot_bytes, 2 * 20 * 1024 * 1024);
    assert_eq!(
        s.variables
            .iter()
            .find(|v| v.name == "step")
            .unwrap()
            .slot_bytes,
        0
    );
}

/// The shard's values and version, to check that nothing changed.
async fn snapshot(c: &mut PsClient) -> (u64, Vec<(String, Tensor)>, u64) {
    let p = c.pull(&[], 0, WAIT).await.unwrap();
    let s = c.stats().await.unwrap();
    (p.version, p.tensors, s.pushes_accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pushes_are_clear_errors_that_change_nothing() {
    let limits = Limits {
        max_tensor_bytes: 4096,
        max_request_bytes: 8192,
    };
    let server = Server::with_limits(limits).await;
    let mut c = server.client("job").await;
    let vars = vec![
        ("w".to_string(), tensor(&[4, 4], 1)),
        ("b".to_string(), tensor(&[4], 2)),
    ];
    c.init(&sync2(), &vars, false).await.unwrap();
    let before = snapshot(&mut c).await;
    let g = |shape: &[usize]| tensor(shape, 9);
    let good = g(&[4, 4]);

    // Each case carries a good gradient too: it must not be applied.
    let cases: Vec<(&str, Tensor, TensorRole, Code, &str)> = vec![
        (
            "nope",
            g(&[4]),
            TensorRole::Gradient,
            Code::NotFound,
            "`nope` is not on this shard",
        ),
        (
            "b",
            g(&[5]),
            TensorRole::Gradient,
            Code::InvalidArgument,
            "has shape [4], the gradient has shape [5]",
        ),
        (
            "b",
            Tensor::new(vec![4], vec![1i32; 4]).unwrap(),
            TensorRole::Gradient,
            Code::InvalidArgument,
            "float32",
        ),
        (
            "b",
            g(&[2048]),
            TensorRole::Gradient,
            Code::ResourceExhausted,
            "`b`: 8192 bytes",
        ),
        (
            "b",
            g(&[2, 2]),
            TensorRole::Assign,
            Code::InvalidArgument,
            "assigned value has shape [2, 2]",
        ),
    ];
    for (name, t, role, want, text) in cases {
        let e = c
            .push(
                0,
                0,
                false,
                [("w", TensorRole::Gradient, &good), (name, role, &t)],
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), want, "{name}: {e}");
        assert!(e.to_string().contains(text), "{name}: {e}");
        assert_eq!(snapshot(&mut c).await, before, "{name}: the shard changed");
    }
    let e = c
        .push(
            0,
            0,
            false,
            [
                ("w", TensorRole::Gradient, &good),
                ("w", TensorRole::Gradient, &good),
            ],
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");

    // Over the tensor limit: named, with the limit and the setting.
    let huge = tensor(&[2048], 3);
    let e = c
        .push(0, 0, false, [("x", TensorRole::Gradient, &huge)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    let msg = e.to_string();
    assert!(
        msg.contains("`x`") && msg.contains("4096") && msg.contains("max_tensor_bytes"),
        "{msg}"
    );
    // Over the request limit.
    let t = tensor(&[1000], 3);
    let e = c
        .push(0, 0, false, (0..3).map(|_| ("w", TensorRole::Gradient, &t)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.to_string().contains("max_request_bytes"), "{e}");
    // Ahead of the shard.
    let e = c
        .push(0, 3, false, [("w", TensorRole::Gradient, &good)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.to_string().contains("pull version 3"), "{e}");
    assert_eq!(snapshot(&mut c).await, before);

    // The shard still works.
    let r = c
        .push(0, 0, false, [("w", TensorRole::Gradient, &good)])
        .await
        .unwrap();
    assert_eq!(r.outcome, PushOutcome::Accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_pull_and_jobs() {
    let server = Server::start().await;
    let mut c = server.client("job").await;
    // Nothing to pull before Init.
    let e = c.pull(&[], 0, WAIT).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.to_string().contains("Init"), "{e}");
    let s = c.stats().await.unwrap();
    assert!(!s.initialized);

    let vars = vec![("w".to_string(), tensor(&[8], 1))];
    c.init(&sync2(), &vars, false).await.unwrap();
    // Re-init of the same job needs force.
    let e = c.init(&sync2(), &vars, false).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(e.to_string().contains("force"), "{e}");
    let other = vec![("w".to_string(), tensor(&[8], 2))];
    c.init(&sync2(), &other, true).await.unwrap();
    assert_eq!(c.pull(&[], 0, WAIT).await.unwrap().tensors, other);

    // Unknown variable in a pull; another job's client.
    let e = c.pull(&["v".into()], 0, WAIT).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let mut stranger = server.client("other").await;
    let e = stranger.pull(&[], 0, WAIT).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.to_string().contains("serves job `job`, not `other`"),
        "{e}"
    );

    // Bad configs are refused before any data.
    let mut bad = ShardConfig::new("job", 0.1, 0);
    bad.mode = Mode::Sync {
        workers: 0,
        backup: 0,
    };
    let e = c.init(&bad, &vars, true).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // A waiting pull learns that its shard was replaced.
    let mut waiter = server.client("job").await;
    let pull = tokio::spawn(async move { waiter.pull(&[], 5, WAIT).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.init(&sync2(), &vars, true).await.unwrap();
    let e = pull.await.unwrap().unwrap_err();
    assert_eq!(e.code(), Code::Aborted, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_connect_timeout_and_clean_shutdown() {
    let server = Server::start().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "psflow.ps.ParameterServer".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let addr = server.addr.clone();
    server.stop().await;

    // Nobody listens any more: connect gives up at its timeout, clearly.
    let t0 = std::time::Instant::now();
    let e = PsClient::connect(&addr, "job", Duration::from_millis(300))
        .await
        .err()
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.to_string().contains(&addr), "{e}");
}
