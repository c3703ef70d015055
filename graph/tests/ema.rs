//! The weight averages of the training graph (`train::ema`): shadows start
//! at the variables' initial values and follow TensorFlow's
//! `ExponentialMovingAverage(decay, num_updates=global_step)` update
//! exactly, step by step; batch-norm statistics are not averaged; the
//! averages change nothing else in the step.

use std::sync::Arc;

use psflow_graph::train::builder::TrainConfig;
use psflow_graph::train::ema;
use psflow_graph::zoo::{Architecture, Model, ModelSpec};
use psflow_graph::{Registry, ResourceStore, Session, Tensor};

fn model() -> Model {
    ModelSpec {
        arch: Architecture::MobileNet,
        alpha: 0.25,
        resolution: 8,
        classes: 3,
        training: true,
        seed: 7,
    }
    .build()
    .unwrap()
}

fn batch(step: usize) -> (Tensor, Tensor) {
    let n = 4 * 8 * 8 * 3;
    let x: Vec<f32> = (0..n)
        .map(|i| (((i * 7919 + step * 104_729) % 1000) as f32 / 500.0) - 1.0)
        .collect();
    let y: Vec<i32> = (0..4).map(|i| ((i + step) % 3) as i32).collect();
    (
        Tensor::new(vec![4, 8, 8, 3], x).unwrap(),
        Tensor::new(vec![4], y).unwrap(),
    )
}

/// Runs `steps` training steps; returns the store and the trainable
/// variables' values after init and after every step.
fn train(decay: Option<f32>, steps: usize) -> (Model, Arc<ResourceStore>, Vec<Vec<Vec<f32>>>) {
    let mut m = model();
    let g = m
        .add_training(&TrainConfig {
            moving_average_decay: decay,
            ..TrainConfig::default()
        })
        .unwrap();
    let store = Arc::new(ResourceStore::new());
    let s = Session::with_resources(m.graph.clone(), &Registry::standard(), store.clone()).unwrap();
    s.run(&[], &[], std::slice::from_ref(&m.init)).unwrap();
    let values = |store: &ResourceStore| -> Vec<Vec<f32>> {
        m.trainable
            .iter()
            .map(|v| store.get(&v.name).unwrap().f32s("v").unwrap().to_vec())
            .collect()
    };
    let mut history = vec![values(&store)];
    for step in 0..steps {
        let (x, y) = batch(step);
        s.run(
            &[
                (m.input.clone(), x),
                (m.labels.clone().unwrap(), y),
                (g.learning_rate.clone(), Tensor::scalar(0.05f32)),
            ],
            &[],
            std::slice::from_ref(&g.train_op),
        )
        .unwrap();
        history.push(values(&store));
    }
    if decay.is_some() {
        assert_eq!(g.averages.len(), m.trainable.len());
        for (v, s) in &g.averages {
            assert_eq!(s, &ema::shadow_name(v));
            assert!(g.new_variables.contains(s));
        }
    } else {
        assert!(g.averages.is_empty());
    }
    (m, store, history)
}

#[test]
fn shadows_follow_tensorflows_update_step_by_step() {
    let decay = 0.9;
    let steps = 12;
    let (m, store, history) = train(Some(decay), steps);
    // Expected: start at the initial values, then
    // shadow -= (shadow - v) * (1 - min(decay, (1 + n) / (10 + n))).
    let mut expected = history[0].clone();
    for (n, after) in history.iter().enumerate().skip(1) {
        let rate = 1.0 - ema::decay_at(decay, n as u64);
        for (e, v) in expected.iter_mut().zip(after) {
            for (s, x) in e.iter_mut().zip(v) {
                *s -= (*s - x) * rate;
            }
        }
    }
    let mut moved = 0;
    for (i, v) in m.trainable.iter().enumerate() {
        let got = store.get(&ema::shadow_name(&v.name)).unwrap();
        assert_eq!(got.shape(), &v.shape[..], "{}", v.name);
        assert_eq!(
            got.f32s("shadow").unwrap(),
            &expected[i][..],
            "{}: the shadow differs from TensorFlow's update",
            v.name
        );
        if expected[i] != history[steps][i] {
            moved += 1;
        }
    }
    // The average lags the variables (it is not a copy of them).
    assert!(
        moved > m.trainable.len() / 2,
        "only {moved} averages differ from their variables"
    );
    // Batch-norm statistics are not averaged.
    for v in m.variables.iter().filter(|v| !v.trainable) {
        assert!(
            store.get(&ema::shadow_name(&v.name)).is_none(),
            "{}",
            v.name
        );
    }
}

#[test]
fn averages_do_not_change_the_training_step() {
    let (_, _, with) = train(Some(0.99), 3);
    let (_, _, without) = train(None, 3);
    assert_eq!(with, without);
}

#[test]
fn averaged_checkpoint_evaluates_the_shadows() {
    let (m, store, history) = train(Some(0.5), 2);
    let state: Vec<(String, Tensor)> = store
        .names()
        .into_iter()
        .filter_map(|n| store.get(&n).map(|t| (n, t)))
        .collect();
    assert!(ema::has_averages(&state));
    let avg = ema::averaged(state);
    let first = &m.trainable[0].name;
    let (_, t) = avg.iter().find(|(n, _)| n == first).unwrap();
    assert_eq!(
        t.f32s("t").unwrap(),
        store
            .get(&ema::shadow_name(first))
            .unwrap()
            .f32s("t")
            .unwrap()
    );
    assert_ne!(t.f32s("t").unwrap(), &history[2][0][..]);
}
