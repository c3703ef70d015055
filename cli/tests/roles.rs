//! The cluster as separate processes: a real etcd, `psflow coordinator`,
//! `psflow ps` and `psflow worker` started from the binary on
//! `127.0.0.1:0`, and the client commands (`submit`, `status`, `cancel`,
//! `logs`) talking to them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use psflow_coordinator::membership::testing::EtcdServer;
use psflow_coordinator::membership::{Membership, Role};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_psflow");

/// One `psflow` role process; killed (SIGKILL) when dropped.
struct Proc {
    child: Child,
    addr: String,
    /// Every stderr line so far.
    log: Arc<Mutex<Vec<String>>>,
    lines: Receiver<String>,
}

impl Proc {
    /// Starts `psflow <role> --listen 127.0.0.1:0 --etcd … <extra>` and
    /// waits for the line that logs the bound address.
    fn start(role: &str, etcd: &str, cluster: &str, extra: &[&str]) -> Proc {
        Proc::start_with_threads(role, etcd, cluster, extra, 1)
    }

    /// [`Proc::start`] with `threads` kernel threads.
    fn start_with_threads(
        role: &str,
        etcd: &str,
        cluster: &str,
        extra: &[&str],
        threads: usize,
    ) -> Proc {
        let mut child = Command::new(BIN)
            .arg(role)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--etcd",
                etcd,
                "--cluster",
                cluster,
            ])
            .args(extra)
            .env("PSFLOW_THREADS", threads.to_string())
            .env("PSFLOW_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psflow starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let mut p = Proc {
            child,
            addr: String::new(),
            log,
            lines,
        };
        let line = p.wait_for("listening on ", Duration::from_secs(30));
        let rest = &line[line.find("listening on ").unwrap() + "listening on ".len()..];
        p.addr = rest.split_whitespace().next().unwrap().to_string();
        p
    }

    /// Waits for a stderr line containing `text`; panics with the log after `limit`.
    fn wait_for(&mut self, text: &str, limit: Duration) -> String {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(text) => return l,
                Ok(_) => {}
                Err(_) => panic!(
                    "no line with {text:?} within {limit:?}; log:\n{}",
                    self.log.lock().unwrap().join("\n")
                ),
            }
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Waits for the process to exit; its exit status.
    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > end {
                panic!(
                    "still running after {limit:?}; log:\n{}",
                    self.log.lock().unwrap().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a client command against `coordinator`.
fn client(coordinator: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--coordinator", coordinator])
        .env("PSFLOW_THREADS", "1")
        .output()
        .expect("psflow runs")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(o)))
}

fn synthetic_dir() -> String {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("psflow-roles-synthetic")
        .display()
        .to_string()
}

fn members(etcd: &EtcdServer, cluster: &str) -> Vec<(Role, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let m = etcd.connect(cluster).await.unwrap();
        m.members(None)
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.role, m.addr))
            .collect()
    })
}

fn health(addr: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut c = tonic_health::pb::health_client::HealthClient::new(channel);
        let r = c
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        format!("{:?}", r.status())
    })
}

#[test]
fn roles_register_serve_health_refuse_bad_jobs_and_stop_on_sigterm() {
    let etcd = EtcdServer::start().unwrap();
    let ep = etcd.endpoint();
    let cluster = "roles";
    let mut coord = Proc::start("coordinator", &ep, cluster, &["--name", "c1"]);
    coord.wait_for("leading the cluster", Duration::from_secs(20));
    let mut ps = Proc::start("ps", &ep, cluster, &["--name", "ps0"]);
    let mut worker = Proc::start("worker", &ep, cluster, &["--name", "w0", "--device", "cpu"]);
    ps.wait_for("registered as ps", Duration::from_secs(10));
    worker.wait_for("registered as worker", Duration::from_secs(10));

    // Registered in etcd under the addresses they bound, serving health.
    let m = members(&etcd, cluster);
    assert_eq!(
        m,
        vec![
            (Role::Coordinator, coord.addr.clone()),
            (Role::Ps, ps.addr.clone()),
            (Role::Worker, worker.addr.clone()),
        ]
    );
    for a in [&coord.addr, &ps.addr, &worker.addr] {
        assert_eq!(health(a), "Serving", "health of {a}");
    }

    // No jobs yet.
    let o = client(&coord.addr, &["status", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(json_of(&o), Value::Array(vec![]));

    // Bad submissions: clear errors, and the cluster keeps serving.
    let data = synthetic_dir();
    let base = [
        "submit",
        "--model",
        "mobilenet",
        "--alpha",
        "0.25",
        "--dataset",
        "synthetic",
        "--data-dir",
        &data,
        "--steps",
        "5",
        "--batch-size",
        "8",
    ];
    let too_many: Vec<&str> = base.iter().copied().chain(["--workers", "3"]).collect();
    let o = client(&coord.addr, &too_many);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("worker") && err.contains('3') && err.contains('1'),
        "{err}"
    );
    let o = client(
        &coord.addr,
        &[
            "submit",
            "--model",
            "mobilenet",
            "--dataset",
            "cifar10",
            "--data-dir",
            "/nonexistent/cifar",
            "--steps",
            "5",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/nonexistent/cifar"),
        "{}",
        text(&o)
    );
    let o = client("127.0.0.1:1", &base);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot reach the coordinator"),
        "{}",
        text(&o)
    );
    let o = client(&coord.addr, &["status", "job-that-does-not-exist"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("job-that-does-not-exist"),
        "{}",
        text(&o)
    );

    // A small job still runs: submit --wait --json prints the final state.
    let ok: Vec<&str> = base.iter().copied().chain(["--wait", "--json"]).collect();
    let o = client(&coord.addr, &ok);
    assert!(o.status.success(), "{}", text(&o));
    let j = json_of(&o);
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["summary"]["steps"], 5, "{j}");
    let id = j["job_id"].as_str().unwrap().to_string();
    let o = client(&coord.addr, &["logs", &id]);
    assert!(o.status.success(), "{}", text(&o));
    let log = String::from_utf8_lossy(&o.stdout);
    assert!(log.contains("submitted"), "{log}");
    assert!(log.contains("step      5"), "{log}");
    assert!(log.contains("state succeeded"), "{log}");

    // A worker asked for a GPU the machine does not have fails at start,
    // naming what is missing (on a GPU machine it would serve instead).
    if !matches!(psflow_kernels::cuda::cuda_device_count(), Ok(n) if n > 0) {
        let o = Command::new(BIN)
            .args([
                "worker",
                "--etcd",
                &ep,
                "--cluster",
                cluster,
                "--device",
                "cuda:0",
            ])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("--device cuda:0"),
            "{}",
            text(&o)
        );
    }

    // A standby coordinator takes over when the leader stops; the job
    // record survives in etcd.
    let mut standby = Proc::start("coordinator", &ep, cluster, &["--name", "c2"]);
    standby.wait_for("waiting as a standby", Duration::from_secs(10));
    // A standby answers at once, naming the leader, and is not ready.
    let o = client(&standby.addr, &["status"]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("standby") && err.contains(&coord.addr),
        "{}",
        text(&o)
    );
    assert_eq!(health(&standby.addr), "NotServing");
    coord.signal("-TERM");
    assert!(
        coord.wait_exit(Duration::from_secs(15)).success(),
        "{}",
        coord.log_text()
    );
    standby.wait_for("leading the cluster", Duration::from_secs(20));
    assert_eq!(health(&standby.addr), "Serving");
    let o = client(&standby.addr, &["status", &id, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(json_of(&o)["state"], "succeeded");

    // SIGTERM: each leaves etcd at once and exits 0.
    for p in [&mut worker, &mut ps, &mut standby] {
        p.signal("-TERM");
        let s = p.wait_exit(Duration::from_secs(15));
        assert!(s.success(), "exit {s:?}; log:\n{}", p.log_text());
        assert!(
            p.log_text().contains("stopping (SIGTERM)"),
            "{}",
            p.log_text()
        );
    }
    assert_eq!(members(&etcd, cluster), vec![]);
}

/// Polls `psflow status JOB --json` until `done(job)`.
fn poll(coordinator: &str, id: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + limit;
    loop {
        let o = client(coordinator, &["status", id, "--json"]);
        assert!(o.status.success(), "{}", text(&o));
        let j = json_of(&o);
        if done(&j) {
            return j;
        }
        assert!(Instant::now() < end, "gave up waiting; last: {j}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_worker_killed_with_sigkill_is_dropped_and_the_sync_job_finishes() {
    let etcd = EtcdServer::start().unwrap();
    let ep = etcd.endpoint();
    let cluster = "kill";
    let lease = ["--lease-ttl", "2"];
    let mut coord = Proc::start("coordinator", &ep, cluster, &lease);
    coord.wait_for("leading the cluster", Duration::from_secs(20));
    let _ps = Proc::start("ps", &ep, cluster, &lease);
    let _w0 = Proc::start("worker", &ep, cluster, &lease);
    let mut w1 = Proc::start("worker", &ep, cluster, &lease);
    let data = synthetic_dir();
    let o = client(
        &coord.addr,
        &[
            "submit",
            "--model",
            "mobilenet",
            "--alpha",
            "0.25",
            "--resolution",
            "16",
            "--dataset",
            "synthetic",
            "--data-dir",
            &data,
            "--steps",
            "400",
            "--batch-size",
            "16",
            "--workers",
            "2",
            "--ps",
            "1",
            "--sync",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let id = json_of(&o)["job_id"].as_str().unwrap().to_string();
    poll(&coord.addr, &id, Duration::from_secs(120), |j| {
        j["step"].as_u64().unwrap_or(0) >= 20
    });
    // SIGKILL: no clean leave; the coordinator must notice on its own.
    w1.child.kill().unwrap();
    w1.child.wait().unwrap();
    let j = poll(&coord.addr, &id, Duration::from_secs(300), |j| {
        j["finished_at"].is_number()
    });
    assert_eq!(j["state"], "succeeded", "{j}\n{}", coord.log_text());
    assert_eq!(j["workers_alive"], 1, "{j}");
    assert_eq!(j["summary"]["steps"], 400, "{j}");
    assert!(j["summary"]["top1"].as_f64().is_some(), "{j}");
    let o = client(&coord.addr, &["logs", &id]);
    let log = String::from_utf8_lossy(&o.stdout);
    assert!(
        log.contains("lost") && log.contains("continuing with 1 worker"),
        "{log}"
    );
}

#[test]
fn separate_processes_train_fashion_mnist_to_84_percent_in_2_epochs() {
    let etcd = EtcdServer::start().unwrap();
    let ep = etcd.endpoint();
    let cluster = "fmnist";
    let mut coord = Proc::start("coordinator", &ep, cluster, &[]);
    coord.wait_for("leading the cluster", Duration::from_secs(20));
    let _ps: Vec<Proc> = (0..2)
        .map(|_| Proc::start("ps", &ep, cluster, &[]))
        .collect();
    // Two kernel threads per worker, as `psflow train --workers 2` on this
    // 2-core machine: the run is deterministic, and with one thread per
    // worker the last-bit differences of the reductions alone move the
    // 2-epoch top-1 by about two points (0.850 vs 0.828; docs/cluster.md).
    let workers: Vec<Proc> = (0..2)
        .map(|_| Proc::start_with_threads("worker", &ep, cluster, &[], 2))
        .collect();
    let out = tempfile::tempdir().unwrap();
    let run = out.path().join("run");
    // 2 workers × 64 = the single-process recipe's batch of 128.
    let o = client(
        &coord.addr,
        &[
            "submit",
            "--model",
            "mobilenet",
            "--alpha",
            "0.5",
            "--dataset",
            "fashion-mnist",
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--workers",
            "2",
            "--ps",
            "2",
            "--wait",
            "--json",
            "--out",
            run.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}\n{}", text(&o), coord.log_text());
    let j = json_of(&o);
    assert_eq!(j["state"], "succeeded", "{j}");
    let top1 = j["summary"]["top1"].as_f64().unwrap();
    eprintln!("multi-process Fashion-MNIST top-1 {top1:.4}: {j}");
    assert!(top1 >= 0.84, "top-1 {top1}: {j}");
    // The run directory of `psflow train`.
    for f in ["summary.json", "loss.svg"] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    // Worker and PS processes on one host moved the tensors through
    // shared memory (each worker says so once per PS).
    for w in &workers {
        let log = w.log_text();
        let shared = log.matches("go through shared memory").count();
        assert_eq!(shared, 2, "each worker with each of the 2 PS:\n{log}");
    }
}

#[test]
fn a_frozen_worker_is_dropped_when_its_lease_expires() {
    let etcd = EtcdServer::start().unwrap();
    let ep = etcd.endpoint();
    let cluster = "freeze";
    let lease = ["--lease-ttl", "2"];
    let mut coord = Proc::start("coordinator", &ep, cluster, &lease);
    coord.wait_for("leading the cluster", Duration::from_secs(20));
    let _ps = Proc::start("ps", &ep, cluster, &lease);
    let _w0 = Proc::start("worker", &ep, cluster, &lease);
    let w1 = Proc::start("worker", &ep, cluster, &lease);
    let data = synthetic_dir();
    let o = client(
        &coord.addr,
        &[
            "submit",
            "--model",
            "mobilenet",
            "--alpha",
            "0.25",
            "--resolution",
            "16",
            "--dataset",
            "synthetic",
            "--data-dir",
            &data,
            "--steps",
            "400",
            "--batch-size",
            "16",
            "--workers",
            "2",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let id = json_of(&o)["job_id"].as_str().unwrap().to_string();
    poll(&coord.addr, &id, Duration::from_secs(120), |j| {
        j["step"].as_u64().unwrap_or(0) >= 20
    });
    // SIGSTOP: its connections stay open and it says nothing; only the
    // lease running out tells the cluster (a hung machine, a partition).
    w1.signal("-STOP");
    let j = poll(&coord.addr, &id, Duration::from_secs(300), |j| {
        j["finished_at"].is_number()
    });
    assert_eq!(j["state"], "succeeded", "{j}\n{}", coord.log_text());
    assert_eq!(j["workers_alive"], 1, "{j}");
    assert_eq!(j["summary"]["steps"], 400, "{j}");
    let o = client(&coord.addr, &["logs", &id]);
    let log = String::from_utf8_lossy(&o.stdout);
    assert!(log.contains("membership lease ended"), "{log}");
    // Dropping `w1` kills it (SIGKILL works on a stopped process).
}
