//! The pipeline: deterministic under a seed whatever the threads do,
//! shuffles per epoch, shards cover the data exactly once, epochs end where
//! they should, and dropping it mid-stream stops its threads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use psflow_worker::data::{
    build_batch, shard_order, AugmentConfig, Batch, Dataset, Pipeline, PipelineConfig, Shard,
};

/// `n` 8x8x3 images whose first byte encodes the index, labels `i % 10`.
fn dataset(n: usize) -> Arc<Dataset> {
    let mut images = vec![0u8; n * 8 * 8 * 3];
    for (i, img) in images.chunks_exact_mut(192).enumerate() {
        for (k, b) in img.iter_mut().enumerate() {
            *b = ((i * 31 + k * 7) % 256) as u8;
        }
    }
    Arc::new(Dataset {
        name: "toy".into(),
        images,
        labels: (0..n).map(|i| (i % 10) as i32).collect(),
        height: 8,
        width: 8,
        channels: 3,
        classes: 10,
    })
}

fn train(batch: usize, seed: u64) -> PipelineConfig {
    PipelineConfig {
        augment: AugmentConfig {
            pad_crop: Some(2),
            ..AugmentConfig::cifar_train()
        },
        ..PipelineConfig::train(batch, seed)
    }
}

fn take(p: &mut Pipeline, n: usize) -> Vec<Batch> {
    (0..n).map(|_| p.next_batch().unwrap().unwrap()).collect()
}

#[test]
fn same_seed_same_batches_whatever_the_threads() {
    let d = dataset(103);
    let reference = {
        let mut p = Pipeline::new(
            d.clone(),
            PipelineConfig {
                threads: 0,
                ..train(8, 7)
            },
        )
        .unwrap();
        take(&mut p, 30)
    };
    for (threads, prefetch) in [(1, 1), (2, 4), (4, 2), (3, 8)] {
        let cfg = PipelineConfig {
            threads,
            prefetch,
            ..train(8, 7)
        };
        let mut p = Pipeline::new(d.clone(), cfg.clone()).unwrap();
        let got = take(&mut p, 30);
        assert_eq!(got, reference, "threads {threads} prefetch {prefetch}");
        // Any batch on its own equals the stream's.
        for step in [0u64, 11, 12, 29] {
            assert_eq!(
                build_batch(&d, &cfg, step).unwrap(),
                reference[step as usize]
            );
        }
    }
}

#[test]
fn different_seed_different_batches() {
    let d = dataset(64);
    let a = take(&mut Pipeline::new(d.clone(), train(16, 1)).unwrap(), 4);
    let b = take(&mut Pipeline::new(d.clone(), train(16, 2)).unwrap(), 4);
    assert_ne!(
        a[0].indices, b[0].indices,
        "shuffle must depend on the seed"
    );
    // Same order, different augmentation: seed only changes the pixels too.
    let no_shuffle = |seed| PipelineConfig {
        shuffle: false,
        ..train(16, seed)
    };
    let a = build_batch(&d, &no_shuffle(1), 0).unwrap();
    let b = build_batch(&d, &no_shuffle(2), 0).unwrap();
    assert_eq!(a.indices, b.indices);
    assert_eq!(a.labels, b.labels);
    assert_ne!(a.images, b.images);
}

#[test]
fn epochs_shuffle_anew_and_cover_everything() {
    let d = dataset(50);
    let mut p = Pipeline::new(
        d.clone(),
        PipelineConfig {
            epochs: Some(3),
            ..train(10, 3)
        },
    )
    .unwrap();
    assert_eq!(p.steps_per_epoch(), 5);
    assert_eq!(p.total_steps(), Some(15));
    let batches: Vec<Batch> = p.by_ref().map(|b| b.unwrap()).collect();
    assert_eq!(batches.len(), 15);
    assert!(p.next_batch().unwrap().is_none(), "stays finished");
    let mut orders = vec![];
    for (e, epoch) in batches.chunks(5).enumerate() {
        let mut idx: Vec<usize> = epoch.iter().flat_map(|b| b.indices.clone()).collect();
        orders.push(idx.clone());
        for (k, b) in epoch.iter().enumerate() {
            assert_eq!(b.epoch, e as u64);
            assert_eq!(b.step, (e * 5 + k) as u64);
            assert_eq!(b.step_in_epoch, k as u64);
            assert_eq!(b.last_in_epoch, k == 4);
            assert_eq!(b.images.shape(), &[10, 8, 8, 3]);
            assert_eq!(b.labels.shape(), &[10]);
            let labels = b.labels.values::<i32>("test").unwrap();
            for (l, &i) in labels.iter().zip(&b.indices) {
                assert_eq!(*l, d.labels[i]);
            }
        }
        idx.sort();
        assert_eq!(
            idx,
            (0..50).collect::<Vec<_>>(),
            "epoch {e} covers every example once"
        );
    }
    assert_ne!(orders[0], orders[1]);
    assert_ne!(orders[1], orders[2]);
    // The augmentation of an example differs between epochs too.
    let pos = |e: usize, i: usize| {
        let k = orders[e].iter().position(|&x| x == i).unwrap();
        let b = &batches[e * 5 + k / 10];
        b.images.f32s("t").unwrap()[(k % 10) * 192..][..192].to_vec()
    };
    assert_ne!(pos(0, 7), pos(1, 7));
}

#[test]
fn drop_remainder_versus_full_pass() {
    let d = dataset(23);
    let mut train_p = Pipeline::new(
        d.clone(),
        PipelineConfig {
            epochs: Some(1),
            ..train(5, 0)
        },
    )
    .unwrap();
    assert_eq!(train_p.steps_per_epoch(), 4);
    let sizes: Vec<usize> = train_p.by_ref().map(|b| b.unwrap().len()).collect();
    assert_eq!(sizes, vec![5, 5, 5, 5]);

    let mut eval = Pipeline::new(d.clone(), PipelineConfig::eval(5)).unwrap();
    assert_eq!(eval.steps_per_epoch(), 5);
    let batches: Vec<Batch> = eval.by_ref().map(|b| b.unwrap()).collect();
    assert_eq!(
        batches.iter().map(|b| b.len()).collect::<Vec<_>>(),
        vec![5, 5, 5, 5, 3]
    );
    assert_eq!(batches[4].images.shape(), &[3, 8, 8, 3]);
    assert!(batches[4].last_in_epoch);
    let all: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(all, (0..23).collect::<Vec<_>>(), "eval is in dataset order");
    // Eval twice gives the same tensors (no randomness).
    let again: Vec<Batch> = Pipeline::new(d, PipelineConfig::eval(5))
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    assert_eq!(again, batches);
}

#[test]
fn shards_cover_each_example_exactly_once() {
    for n in [1usize, 7, 100, 101] {
        for count in 1..=4 {
            for shuffle in [false, true] {
                for epoch in [0, 5] {
                    let mut seen = vec![0; n];
                    for index in 0..count {
                        let s = Shard::new(index, count).unwrap();
                        for i in shard_order(n, s, 9, epoch, shuffle, false) {
                            seen[i] += 1;
                        }
                    }
                    assert!(
                        seen.iter().all(|&c| c == 1),
                        "n {n} count {count} shuffle {shuffle}"
                    );
                    // With drop_remainder every shard has n / count examples,
                    // all distinct across shards.
                    let mut seen = vec![0; n];
                    for index in 0..count {
                        let o = shard_order(
                            n,
                            Shard::new(index, count).unwrap(),
                            9,
                            epoch,
                            shuffle,
                            true,
                        );
                        assert_eq!(o.len(), n / count);
                        for i in o {
                            seen[i] += 1;
                        }
                    }
                    assert!(seen.iter().all(|&c| c <= 1));
                    assert_eq!(seen.iter().sum::<usize>(), n / count * count);
                }
            }
        }
    }
}

#[test]
fn sharded_eval_pipelines_cover_the_test_set_once() {
    let d = dataset(37);
    let mut seen = HashMap::new();
    let mut steps = vec![];
    for index in 0..3 {
        let cfg = PipelineConfig {
            shard: Shard::new(index, 3).unwrap(),
            ..PipelineConfig::eval(4)
        };
        let p = Pipeline::new(d.clone(), cfg).unwrap();
        steps.push(p.steps_per_epoch());
        for b in p {
            for i in b.unwrap().indices {
                *seen.entry(i).or_insert(0) += 1;
            }
        }
    }
    assert_eq!(seen.len(), 37);
    assert!(seen.values().all(|&c| c == 1));
    assert_eq!(
        steps,
        vec![4, 3, 3],
        "13, 12 and 12 examples in batches of 4"
    );
}

#[test]
fn sharded_training_runs_equal_steps_on_every_worker() {
    let d = dataset(103);
    let mut per_worker = vec![];
    for index in 0..4 {
        let cfg = PipelineConfig {
            shard: Shard::new(index, 4).unwrap(),
            epochs: Some(2),
            ..train(6, 1)
        };
        let mut p = Pipeline::new(d.clone(), cfg).unwrap();
        assert_eq!(p.examples_per_epoch(), 25);
        assert_eq!(p.steps_per_epoch(), 4);
        per_worker.push(take(&mut p, 4));
    }
    // Within an epoch, no example appears on two workers.
    let mut all: Vec<usize> = per_worker
        .iter()
        .flatten()
        .flat_map(|b| b.indices.clone())
        .collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n);
    assert_eq!(n, 4 * 4 * 6);
}

#[test]
fn resuming_at_a_step_continues_the_same_stream() {
    let d = dataset(40);
    let full = take(&mut Pipeline::new(d.clone(), train(6, 4)).unwrap(), 20);
    let mut resumed = Pipeline::new(
        d.clone(),
        PipelineConfig {
            start_step: 13,
            ..train(6, 4)
        },
    )
    .unwrap();
    assert_eq!(resumed.next_step(), 13);
    assert_eq!(resumed.epoch(), 2);
    assert_eq!(take(&mut resumed, 7), full[13..]);
}

#[test]
fn resolution_and_grayscale_shape_the_batches() {
    let d = dataset(20);
    let cfg = PipelineConfig {
        augment: AugmentConfig::cifar_train().with_resize(Some((6, 5))),
        ..train(4, 0)
    };
    let mut p = Pipeline::new(d, cfg).unwrap();
    assert_eq!(p.batch_shape(), [4, 6, 5, 3]);
    assert_eq!(
        p.next_batch().unwrap().unwrap().images.shape(),
        &[4, 6, 5, 3]
    );

    let gray = Arc::new(Dataset {
        name: "gray".into(),
        images: vec![128; 10 * 28 * 28],
        labels: vec![1; 10],
        height: 28,
        width: 28,
        channels: 1,
        classes: 10,
    });
    let cfg = PipelineConfig {
        augment: AugmentConfig::eval()
            .with_grayscale_to_rgb(true)
            .with_resize(Some((32, 32))),
        ..PipelineConfig::eval(4)
    };
    let b = Pipeline::new(gray, cfg)
        .unwrap()
        .next_batch()
        .unwrap()
        .unwrap();
    assert_eq!(b.images.shape(), &[4, 32, 32, 3]);
}

#[test]
fn bad_configs_are_errors() {
    let d = dataset(10);
    let bad = [
        PipelineConfig {
            batch_size: 0,
            ..train(4, 0)
        },
        PipelineConfig {
            batch_size: 11,
            ..train(4, 0)
        },
        PipelineConfig {
            shard: Shard { index: 2, count: 2 },
            ..train(4, 0)
        },
        PipelineConfig {
            shard: Shard { index: 0, count: 4 },
            ..train(4, 0)
        },
        PipelineConfig {
            prefetch: 0,
            ..train(4, 0)
        },
        PipelineConfig {
            augment: AugmentConfig {
                contrast: Some((2.0, 1.0)),
                ..AugmentConfig::eval()
            },
            ..train(4, 0)
        },
    ];
    for cfg in bad {
        let err = Pipeline::new(d.clone(), cfg.clone())
            .err()
            .unwrap_or_else(|| panic!("accepted {cfg:?}"));
        assert!(
            err.to_string().contains("pipeline")
                || err.to_string().contains("shard")
                || err.to_string().contains("augment"),
            "{err}"
        );
    }
    let mut broken = (*d).clone();
    broken.labels[3] = 10;
    assert!(Pipeline::new(Arc::new(broken), train(2, 0)).is_err());
    assert!(
        build_batch(&d, &PipelineConfig::eval(5), 2).is_err(),
        "past the end"
    );
}

#[test]
fn drop_mid_stream_stops_the_threads() {
    let d = dataset(1000);
    for _ in 0..20 {
        let mut p = Pipeline::new(
            d.clone(),
            PipelineConfig {
                threads: 3,
                prefetch: 2,
                ..train(32, 0)
            },
        )
        .unwrap();
        p.next_batch().unwrap();
        let t = Instant::now();
        drop(p);
        assert!(t.elapsed() < Duration::from_secs(2));
    }
    // Dropped before the first batch, too.
    drop(Pipeline::new(d, train(32, 0)).unwrap());
}

#[test]
fn prefetch_keeps_a_slow_consumer_fed() {
    // The consumer "computes" for 30 ms per step; a 32x32x3 batch of 64
    // takes a few ms to prepare, so after the first batch hardly any step
    // should wait (a little slack for a loaded machine).
    let images: Vec<u8> = (0..640 * 3072).map(|i| (i % 251) as u8).collect();
    let d = Arc::new(Dataset {
        name: "big".into(),
        images,
        labels: (0..640).map(|i| i % 10).collect(),
        height: 32,
        width: 32,
        channels: 3,
        classes: 10,
    });
    let mut p = Pipeline::new(
        d,
        PipelineConfig {
            threads: 2,
            prefetch: 3,
            ..PipelineConfig::train(64, 0)
        },
    )
    .unwrap();
    p.next_batch().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    for _ in 0..10 {
        p.next_batch().unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    let s = p.stats();
    assert_eq!(s.delivered, 11);
    assert!(
        s.waited <= 4,
        "the step waited for data {} times ({:?})",
        s.waited,
        s
    );
    assert!(s.build_time > Duration::ZERO);
}
