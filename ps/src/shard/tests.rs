use psflow_graph::train::optimizer::{AdamConfig, Optimizer, SgdConfig};
use psflow_graph::train::schedule::Schedule;
use psflow_kernels::ops::optim as kopt;

use super::*;

fn t(v: &[f32]) -> Tensor {
    Tensor::new(vec![v.len()], v.to_vec()).unwrap()
}

fn grad(name: &str, v: &[f32]) -> Received {
    Received {
        name: name.into(),
        role: TensorRole::Gradient,
        value: t(v),
    }
}

fn push(worker: u32, step: u64, partial: bool, tensors: Vec<Received>) -> Push {
    Push {
        worker,
        base_version: step,
        partial,
        tensors,
    }
}

fn sgd(mode: Mode) -> ShardConfig {
    ShardConfig {
        optimizer: Optimizer::Sgd(SgdConfig {}),
        mode,
        ..ShardConfig::new("job", 1.0, 1)
    }
}

#[test]
fn partial_pushes_make_up_one_workers_step() {
    let mode = Mode::Sync {
        workers: 2,
        backup: 0,
    };
    let vars = vec![("a".into(), t(&[0.0])), ("b".into(), t(&[0.0]))];
    let mut s = Shard::new(sgd(mode), vars).unwrap();
    // Worker 0 sends layer by layer; worker 1 at once.
    let r = s.push(push(0, 0, true, vec![grad("b", &[2.0])])).unwrap();
    assert_eq!(r.outcome, PushOutcome::Accepted);
    // The same variable twice in one step is refused, and changes nothing.
    let e = s
        .push(push(0, 0, true, vec![grad("b", &[2.0])]))
        .unwrap_err();
    assert!(e.to_string().contains("already pushed `b`"), "{e}");
    s.push(push(
        1,
        0,
        false,
        vec![grad("a", &[4.0]), grad("b", &[4.0])],
    ))
    .unwrap();
    assert_eq!(s.version(), 0, "worker 0 has not finished the step");
    let r = s.push(push(0, 0, false, vec![grad("a", &[2.0])])).unwrap();
    assert_eq!((r.outcome, r.version), (PushOutcome::Applied, 1));
    assert_eq!(s.value("a").unwrap(), &t(&[-3.0]));
    assert_eq!(s.value("b").unwrap(), &t(&[-3.0]));
    // A finished worker cannot push the step again; a push ahead is refused.
    let e = s.push(push(0, 2, false, vec![])).unwrap_err();
    assert!(e.to_string().contains("pull version 2"), "{e}");
}

#[test]
fn a_worker_cannot_finish_a_step_twice() {
    let mode = Mode::Sync {
        workers: 2,
        backup: 0,
    };
    let mut s = Shard::new(sgd(mode), vec![("a".into(), t(&[0.0]))]).unwrap();
    s.push(push(0, 0, false, vec![grad("a", &[1.0])])).unwrap();
    let e = s.push(push(0, 0, false, vec![])).unwrap_err();
    assert!(
        e.to_string().contains("worker 0 already pushed step 0"),
        "{e}"
    );
    assert_eq!(s.step_workers_done(), 1);
}

#[test]
fn adam_keeps_beta_powers_as_tf1() {
    let cfg = AdamConfig::default();
    let config = ShardConfig {
        optimizer: Optimizer::Adam(cfg),
        schedule: Schedule::Constant(0.01),
        mode: Mode::Async,
        ..ShardConfig::new("job", 0.01, 1)
    };
    let init = [0.5f32, -1.0, 2.0];
    let mut s = Shard::new(config, vec![("w".into(), t(&init))]).unwrap();
    let (mut var, mut m, mut v) = (init.to_vec(), vec![0.0; 3], vec![0.0; 3]);
    let (mut p1, mut p2) = (cfg.beta1, cfg.beta2);
    for step in 0..3 {
        let g = [0.1f32 * step as f32, -0.2, 0.3];
        s.push(push(0, step, false, vec![grad("w", &g)])).unwrap();
        let h = kopt::AdamHyper {
            lr: 0.01,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            epsilon: cfg.epsilon,
            beta1_power: p1,
            beta2_power: p2,
            use_nesterov: false,
        };
        kopt::apply_adam(&mut var, &mut m, &mut v, &g, h).unwrap();
        p1 *= cfg.beta1;
        p2 *= cfg.beta2;
    }
    assert_eq!(s.value("w").unwrap(), &t(&var));
    let slots = s.slots("w").unwrap();
    assert_eq!(slots[0].0, "w/Adam");
    assert_eq!(slots[0].1, &m[..]);
    assert_eq!(slots[1].1, &v[..]);
}

#[test]
fn non_float_variables_take_assigns_but_not_gradients() {
    let counter = Tensor::new(vec![1], vec![5i64]).unwrap();
    let mut s = Shard::new(sgd(Mode::Async), vec![("n".into(), counter)]).unwrap();
    let g = Received {
        name: "n".into(),
        role: TensorRole::Gradient,
        value: Tensor::new(vec![1], vec![1i64]).unwrap(),
    };
    let e = s.push(push(0, 0, false, vec![g])).unwrap_err();
    assert!(e.to_string().contains("float32"), "{e}");
    let a = Received {
        name: "n".into(),
        role: TensorRole::Assign,
        value: Tensor::new(vec![1], vec![9i64]).unwrap(),
    };
    s.push(push(0, 0, false, vec![a])).unwrap();
    assert_eq!(s.value("n").unwrap().to_i64_vec("t").unwrap(), vec![9]);
}

#[test]
fn set_workers_is_only_for_sync_mode() {
    let mut s = Shard::new(sgd(Mode::Async), vec![]).unwrap();
    assert!(matches!(s.set_workers(2), Err(Error::Precondition(_))));
    let sync = Mode::Sync {
        workers: 2,
        backup: 0,
    };
    let mut s = Shard::new(sgd(sync), vec![]).unwrap();
    assert!(matches!(s.set_workers(0), Err(Error::Invalid(_))));
}

#[test]
fn averages_follow_the_single_process_update_after_each_step() {
    let mode = Mode::Sync {
        workers: 2,
        backup: 0,
    };
    let config = ShardConfig {
        moving_average_decay: Some(0.5),
        ..sgd(mode)
    };
    let vars = vec![("w".into(), t(&[1.0, 2.0])), ("stat".into(), t(&[0.0]))];
    let mut s = Shard::new(config, vars).unwrap();
    // Before any gradient, and for variables no gradient trains (assigned
    // statistics), there is no average to pull.
    assert!(s.pull(&["w/ExponentialMovingAverage".into()]).is_err());
    let mut avg = [1.0f32, 2.0];
    for step in 0..4u64 {
        for worker in 0..2 {
            let g = [1.0 + worker as f32, -0.5];
            s.push(push(worker, step, false, vec![grad("w", &g)]))
                .unwrap();
        }
        let value = s.value("w").unwrap().f32s("w").unwrap().to_vec();
        let rate = 1.0 - ema::decay_at(0.5, step + 1);
        for (a, x) in avg.iter_mut().zip(&value) {
            *a -= (*a - x) * rate;
        }
        let pulled = s.pull(&["w/ExponentialMovingAverage".into()]).unwrap();
        assert_eq!(pulled[0].1, t(&avg), "step {step}");
        assert_ne!(pulled[0].1.f32s("a").unwrap(), &value[..], "step {step}");
    }
    let e = s
        .pull(&["stat/ExponentialMovingAverage".into()])
        .unwrap_err();
    assert!(
        e.to_string().contains("stat/ExponentialMovingAverage"),
        "{e}"
    );
    // The averages count in the shard's slot bytes.
    let w = s.variables().into_iter().find(|v| v.name == "w").unwrap();
    assert_eq!(w.slot_bytes, 8);
}

#[test]
fn without_averages_there_is_nothing_to_pull() {
    let mut s = Shard::new(sgd(Mode::Async), vec![("w".into(), t(&[1.0]))]).unwrap();
    s.push(push(0, 0, false, vec![grad("w", &[1.0])])).unwrap();
    assert!(s.pull(&["w/ExponentialMovingAverage".into()]).is_err());
}

/// Records what a [`StepObserver`] is told.
#[derive(Default)]
struct Recorder {
    began: std::sync::Mutex<Vec<u64>>,
    updated: std::sync::Mutex<Vec<(String, Tensor)>>,
}

impl StepObserver for Recorder {
    fn begin(&self, version: u64) {
        self.began.lock().unwrap().push(version);
    }

    fn updated(&self, name: &str, value: &Tensor) {
        self.updated
            .lock()
            .unwrap()
            .push((name.to_string(), value.clone()));
    }
}

#[test]
fn an_observer_sees_each_variable_of_a_step_with_its_new_value() {
    let mode = Mode::Sync {
        workers: 2,
        backup: 0,
    };
    let vars = vec![
        ("a".into(), t(&[1.0])),
        ("b".into(), t(&[2.0])),
        ("stat".into(), t(&[0.0])),
        ("untouched".into(), t(&[5.0])),
    ];
    let mut s = Shard::new(sgd(mode), vars).unwrap();
    s.set_pull_order(Arc::new(vec!["stat".into(), "b".into(), "a".into()]));
    let rec = Recorder::default();
    let assign = |v: f32| Received {
        name: "stat".into(),
        role: TensorRole::Assign,
        value: t(&[v]),
    };
    // The first worker's push completes nothing: nothing begins.
    let first = vec![grad("a", &[1.0]), grad("b", &[2.0]), assign(4.0)];
    s.push_observed(push(0, 0, false, first), &rec).unwrap();
    assert!(rec.began.lock().unwrap().is_empty());
    let second = vec![grad("a", &[3.0]), grad("b", &[0.0]), assign(2.0)];
    let reply = s.push_observed(push(1, 0, false, second), &rec).unwrap();
    assert_eq!(reply.outcome, PushOutcome::Applied);
    assert_eq!(*rec.began.lock().unwrap(), [1]);
    let mut seen = rec.updated.lock().unwrap().clone();
    seen.sort_by(|x, y| x.0.cmp(&y.0));
    // Each value as the step left it: the variables' new values, the
    // assigned statistic's mean; the variable no push named is not told.
    assert_eq!(
        seen,
        [
            ("a".to_string(), t(&[-1.0])),
            ("b".to_string(), t(&[1.0])),
            ("stat".to_string(), t(&[3.0])),
        ]
    );
    for (name, value) in &seen {
        assert_eq!(s.value(name).unwrap(), value, "{name}");
    }
}
