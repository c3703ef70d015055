//! Sync, backup workers, async, bounded staleness, assign averaging,
//! waiting pulls, concurrency and worker-count changes, over real gRPC on
//! loopback.

mod common;

use std::time::{Duration, Instant};

use common::{tensor, Server};
use psflow_graph::train::optimizer::{Optimizer, RmsPropConfig, SgdConfig};
use psflow_graph::train::schedule::Schedule;
use psflow_kernels::ops::optim as kopt;
use psflow_kernels::Tensor;
use psflow_ps::{Mode, PushOutcome, ShardConfig, TensorRole};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

fn config(optimizer: Optimizer, schedule: Schedule, mode: Mode) -> ShardConfig {
    ShardConfig {
        job_id: "job".into(),
        shard: 0,
        optimizer,
        schedule,
        mode,
        version: 0,
        moving_average_decay: None,
    }
}

fn sgd(mode: Mode) -> ShardConfig {
    config(Optimizer::Sgd(SgdConfig {}), Schedule::Constant(1.0), mode)
}

fn sync(workers: u32, backup: u32) -> Mode {
    Mode::Sync { workers, backup }
}

fn grad<'a>(name: &'a str, t: &'a Tensor) -> (&'a str, TensorRole, &'a Tensor) {
    (name, TensorRole::Gradient, t)
}

fn code(e: psflow_ps::Error) -> Code {
    e.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_rmsprop_equals_the_kernel_on_the_averaged_gradient() {
    let server = Server::start().await;
    let (shape, n) = ([64, 33], 64 * 33);
    let w0 = tensor(&shape, 1);
    let b0 = tensor(&[33], 2);
    let rms = RmsPropConfig::default();
    // A schedule that changes every step, so the step's rate is checked.
    let schedule = Schedule::Exponential {
        initial: 0.05,
        rate: 0.5,
        decay_steps: 1,
        staircase: true,
    };
    let mut c = server.client("job").await;
    let cfg = config(Optimizer::RmsProp(rms), schedule, sync(2, 0));
    c.init(
        &cfg,
        &[("w".into(), w0.clone()), ("b".into(), b0.clone())],
        false,
    )
    .await
    .unwrap();
    let mut c1 = server.client("job").await;

    // The reference: the kernel on the average, ms starting at ones.
    let mut w = w0.f32s("t").unwrap().to_vec();
    let (mut ms, mut mom) = (vec![1f32; n], vec![0f32; n]);
    for step in 0..3u64 {
        let g0 = tensor(&shape, 10 + step);
        let g1 = tensor(&shape, 20 + step);
        let gb = tensor(&[33], 30 + step);
        let r = c
            .push(0, step, false, [grad("w", &g0), grad("b", &gb)])
            .await
            .unwrap();
        assert_eq!((r.outcome, r.version), (PushOutcome::Accepted, step));
        let r = c1.push(1, step, false, [grad("w", &g1)]).await.unwrap();
        assert_eq!((r.outcome, r.version), (PushOutcome::Applied, step + 1));

        let avg: Vec<f32> = g0
            .f32s("t")
            .unwrap()
            .iter()
            .zip(g1.f32s("t").unwrap())
            .map(|(a, b)| (a + b) / 2.0)
            .collect();
        let h = kopt::RmsPropHyper {
            lr: schedule.at(step),
            rho: rms.decay,
            momentum: rms.momentum,
            epsilon: rms.epsilon,
        };
        kopt::apply_rmsprop(&mut w, &mut ms, &mut mom, &avg, h).unwrap();
        let pulled = c.pull(&["w".into()], step + 1, WAIT).await.unwrap();
        assert_eq!(pulled.version, step + 1);
        let got = pulled.tensors[0].1.f32s("t").unwrap();
        assert!(
            got.iter().zip(&w).all(|(a, b)| a.to_bits() == b.to_bits()),
            "step {step}: the PS update differs from apply_rmsprop on the average"
        );
    }
    let stats = c.stats().await.unwrap();
    assert_eq!(
        (stats.version, stats.updates_applied, stats.pushes_accepted),
        (3, 3, 6)
    );
    // Only worker 0 sent `b`: its mean is its own gradient.
    let b = c.pull(&["b".into()], 0, WAIT).await.unwrap().tensors[0]
        .1
        .clone();
    assert_ne!(b, b0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_workers_apply_after_n_minus_b_and_drop_the_late() {
    let server = Server::start().await;
    let mut c = server.client("job").await;
    c.init(
        &sgd(sync(3, 1)),
        &[("w".into(), Tensor::full(vec![4], 0f32))],
        false,
    )
    .await
    .unwrap();
    let g = |x: f32| Tensor::full(vec![4], x);
    let (g0, g1, g2) = (g(1.0), g(3.0), g(100.0));
    let r = c.push(0, 0, false, [grad("w", &g0)]).await.unwrap();
    assert_eq!(r.outcome, PushOutcome::Accepted);
    let r = c.push(2, 0, false, [grad("w", &g1)]).await.unwrap();
    assert_eq!((r.outcome, r.version), (PushOutcome::Applied, 1));
    let r = c.push(1, 0, false, [grad("w", &g2)]).await.unwrap();
    assert_eq!(r.outcome, PushOutcome::DroppedLate);
    assert!(r.message.contains("step 0 was applied"), "{}", r.message);
    let w = c.pull(&[], 1, WAIT).await.unwrap();
    assert_eq!(w.tensors[0].1, g(-2.0), "the late gradient must not count");
    let s = c.stats().await.unwrap();
    assert_eq!((s.pushes_dropped_late, s.updates_applied), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_applies_every_push_at_once() {
    let server = Server::start().await;
    let mut c = server.client("job").await;
    c.init(
        &sgd(Mode::Async),
        &[("w".into(), Tensor::full(vec![3], 10f32))],
        false,
    )
    .await
    .unwrap();
    for (i, x) in [1f32, 2.0, 3.0].into_iter().enumerate() {
        let g = Tensor::full(vec![3], x);
        let r = c.push(i as u32, 0, false, [grad("w", &g)]).await.unwrap();
        assert_eq!((r.outcome, r.version), (PushOutcome::Applied, i as u64 + 1));
    }
    let w = c.pull(&[], 3, WAIT).await.unwrap();
    assert_eq!(w.tensors[0].1, Tensor::full(vec![3], 4f32));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_staleness_drops_pushes_too_old() {
    let server = Server::start().await;
    let mut c = server.client("job").await;
    let mode = Mode::Bounded { staleness: 1 };
    c.init(
        &sgd(mode),
        &[("w".into(), Tensor::full(vec![2], 0f32))],
        false,
    )
    .await
    .unwrap();
    let g = Tensor::full(vec![2], 1f32);
    // Computed on version 0: applied at versions 0 and 1 (lag 0, 1).
    for want in [1, 2] {
        let r = c.push(0, 0, false, [grad("w", &g)]).await.unwrap();
        assert_eq!((r.outcome, r.version), (PushOutcome::Applied, want));
    }
    // Lag 2 > 1: dropped, and said so.
    let r = c.push(1, 0, false, [grad("w", &g)]).await.unwrap();
    assert_eq!((r.outcome, r.version), (PushOutcome::DroppedStale, 2));
    assert!(r.message.contains("2 versions old"), "{}", r.message);
    // Fresh enough again.
    let r = c.push(1, 1, false, [grad("w", &g)]).await.unwrap();
    assert_eq!(r.outcome, PushOutcome::Applied);
    let s = c.stats().await.unwrap();
    assert_eq!(
        (s.pushes_dropped_stale, s.updates_applied, s.version),
        (1, 3, 3)
    );
    let w = c.pull(&[], 0, WAIT).await.unwrap();
    assert_eq!(w.tensors[0].1, Tensor::full(vec![2], -3f32));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_waits_for_its_version_and_times_out_at_its_deadline() {
    let server = Server::start().await;
    let mut c = server.client("job").await;
    c.init(
        &sgd(sync(1, 0)),
        &[("w".into(), Tensor::full(vec![2], 0f32))],
        false,
    )
    .await
    .unwrap();
    let mut waiter = server.client("job").await;
    let pull = tokio::spawn(async move { waiter.pull(&[], 1, WAIT).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!pull.is_finished(), "pull must wait for version 1");
    let g = Tensor::full(vec![2], 1f32);
    c.push(0, 0, false, [grad("w", &g)]).await.unwrap();
    let got = pull.await.unwrap().unwrap();
    assert_eq!(got.version, 1);
    assert_eq!(got.tensors[0].1, Tensor::full(vec![2], -1f32));

    let t0 = Instant::now();
    let e = c
        .pull(&[], 5, Duration::from_millis(300))
        .await
        .unwrap_err();
    let waited = t0.elapsed();
    assert_eq!(e.code(), Code::DeadlineExceeded);
    assert!(e.to_string().contains("version 5 not reached"), "{e}");
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "waited {waited:?}"
    );
    // A zero deadline answers at once.
    let e = c.pull(&[], 2, Duration::ZERO).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_assigns_are_averaged_over_the_steps_workers() {
    let server = Server::start().await;
    let mut c = server.client("job").await;
    let init = [
        ("w".to_string(), Tensor::full(vec![3], 0f32)),
        ("bn/moving_mean".to_string(), Tensor::full(vec![3], 0f32)),
    ];
    c.init(&sgd(sync(2, 0)), &init, false).await.unwrap();
    let (a0, a1) = (tensor(&[3], 5), tensor(&[3], 6));
    let g = Tensor::full(vec![3], 1f32);
    let assign = |t| ("bn/moving_mean", TensorRole::Assign, t);
    c.push(0, 0, false, [grad("w", &g), assign(&a0)])
        .await
        .unwrap();
    let r = c
        .push(1, 0, false, [grad("w", &g), assign(&a1)])
        .await
        .unwrap();
    assert_eq!(r.outcome, PushOutcome::Applied);
    let got = c.pull(&["bn/moving_mean".into()], 1, WAIT).await.unwrap();
    let want: Vec<f32> = a0
        .f32s("t")
        .unwrap()
        .iter()
        .zip(a1.f32s("t").unwrap())
        .map(|(x, y)| (x + y) / 2.0)
        .collect();
    assert_eq!(got.tensors[0].1, Tensor::new(vec![3], want).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushes_from_eight_tasks() {
    // Async: 8 tasks × 10 pushes of integer gradients; SGD with rate 1 is
    // exact in any order, so the result must be init − Σ gradients.
    let server = Server::start().await;
    let n = 10_000;
    let mut c = server.client("job").await;
    c.init(
        &sgd(Mode::Async),
        &[("w".into(), Tensor::full(vec![n], 0f32))],
        false,
    )
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for worker in 0..8u32 {
        let mut c = server.client("job").await;
        tasks.push(tokio::spawn(async move {
            for i in 0..10u32 {
                let g = Tensor::full(vec![n], (worker * 10 + i) as f32);
                let r = c.push(worker, 0, false, [grad("w", &g)]).await.unwrap();
                assert_eq!(r.outcome, PushOutcome::Applied);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let w = c.pull(&[], 80, WAIT).await.unwrap();
    assert_eq!(w.version, 80);
    let sum: u32 = (0..80).sum();
    assert_eq!(w.tensors[0].1, Tensor::full(vec![n], -(sum as f32)));

    // Sync: 8 workers, each pushing then pulling the next version, 5 steps.
    let server = Server::start().await;
    let mut c = server.client("job").await;
    c.init(
        &sgd(sync(8, 0)),
        &[("w".into(), Tensor::full(vec![n], 0f32))],
        false,
    )
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for worker in 0..8u32 {
        let mut c = server.client("job").await;
        tasks.push(tokio::spawn(async move {
            for step in 0..5u64 {
                let g = Tensor::full(vec![n], (worker + 1) as f32);
                c.push(worker, step, false, [grad("w", &g)]).await.unwrap();
                let p = c.pull(&[], step + 1, WAIT).await.unwrap();
                assert!(p.version > step);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let w = c.pull(&[], 5, WAIT).await.unwrap();
    // Each step subtracts the mean of 1..=8 = 4.5.
    assert_eq!(w.tensors[0].1, Tensor::full(vec![n], -22.5f32));
    let s = c.stats().await.unwrap();
    assert_eq!((s.updates_applied, s.pushes_accepted), (5, 40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_workers_unblocks_a_step_waiting_for_a_dead_worker() {
    let server = Server::start().await;
    let mut c = server.client("job").await;
    c.init(
        &sgd(sync(3, 0)),
        &[("w".into(), Tensor::full(vec![2], 0f32))],
        false,
    )
    .await
    .unwrap();
    let (g0, g1) = (Tensor::full(vec![2], 1f32), Tensor::full(vec![2], 3f32));
    c.push(0, 0, false, [grad("w", &g0)]).await.unwrap();
    c.push(1, 0, false, [grad("w", &g1)]).await.unwrap();
    let mut waiter = server.client("job").await;
    let pull = tokio::spawn(async move { waiter.pull(&[], 1, WAIT).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!pull.is_finished(), "step 0 waits for worker 2");
    assert_eq!(c.stats().await.unwrap().step_workers_done, 2);
    // Worker 2 died: the coordinator lowers N.
    assert_eq!(c.set_workers(2).await.unwrap(), 1);
    let got = pull.await.unwrap().unwrap();
    assert_eq!(
        (got.version, got.tensors[0].1.clone()),
        (1, Tensor::full(vec![2], -2f32))
    );
    // Later steps wait for two workers.
    c.push(0, 1, false, [grad("w", &g0)]).await.unwrap();
    let r = c.push(1, 1, false, [grad("w", &g0)]).await.unwrap();
    assert_eq!((r.outcome, r.version), (PushOutcome::Applied, 2));
    assert_eq!(c.stats().await.unwrap().workers, 2);
    // Only sync shards wait for workers; async ones say so.
    let server = Server::start().await;
    let mut a = server.client("job").await;
    a.init(&sgd(Mode::Async), &[], false).await.unwrap();
    assert_eq!(
        code(a.set_workers(2).await.unwrap_err()),
        Code::FailedPrecondition
    );
}
