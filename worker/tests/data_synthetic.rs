//! The synthetic dataset: deterministic, written once in CIFAR-10 binary and
//! reused, balanced, and learnable (a nearest-class-mean classifier on
//! simple translation-invariant features does far better than chance).

use std::fs;

use psflow_worker::data::cifar::CIFAR10_DIR;
use psflow_worker::data::synthetic::{self, CLASS_NAMES, META_FILE};
use psflow_worker::data::{Dataset, DatasetKind, SyntheticConfig};

fn cfg(seed: u64, train: usize, test: usize) -> SyntheticConfig {
    SyntheticConfig { seed, train, test }
}

#[test]
fn generated_once_reused_and_regenerated_on_change() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(5, 103, 21);
    let a = synthetic::load(tmp.path(), &c).unwrap();
    assert_eq!((a.train.len(), a.test.len()), (103, 21));
    assert_eq!(a.train.name, "synthetic");
    assert_eq!(
        (
            a.train.height,
            a.train.width,
            a.train.channels,
            a.train.classes
        ),
        (32, 32, 3, 10)
    );
    // Equal to the in-memory generation: the CIFAR writer and reader agree.
    let mem = synthetic::generate(&c).unwrap();
    assert_eq!(a.train.images, mem.train.images);
    assert_eq!(a.train.labels, mem.train.labels);
    assert_eq!(a.test, Dataset { ..mem.test });

    let batches = tmp.path().join(CIFAR10_DIR);
    let sizes: Vec<u64> = (1..=5)
        .map(|k| {
            fs::metadata(batches.join(format!("data_batch_{k}.bin")))
                .unwrap()
                .len()
                / 3073
        })
        .collect();
    assert_eq!(sizes, vec![21, 21, 21, 20, 20]);
    assert!(fs::read_to_string(batches.join(META_FILE))
        .unwrap()
        .contains("\"seed\": 5"));

    // Reused: the files are not rewritten.
    let before = fs::metadata(batches.join("test_batch.bin"))
        .unwrap()
        .modified()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let again = DatasetKind::Synthetic(c.clone())
        .load(Some(tmp.path()))
        .unwrap();
    assert_eq!(again, a);
    assert_eq!(
        fs::metadata(batches.join("test_batch.bin"))
            .unwrap()
            .modified()
            .unwrap(),
        before
    );

    // Another seed in the same place: regenerated, different images.
    let other = synthetic::load(tmp.path(), &cfg(6, 103, 21)).unwrap();
    assert_ne!(other.train.images, a.train.images);
    assert!(fs::read_to_string(batches.join(META_FILE))
        .unwrap()
        .contains("\"seed\": 6"));

    // A damaged meta file is not trusted.
    fs::write(batches.join(META_FILE), "{").unwrap();
    assert_eq!(synthetic::load(tmp.path(), &c).unwrap(), a);
}

#[test]
fn deterministic_and_balanced() {
    let a = synthetic::generate(&cfg(1, 200, 50)).unwrap();
    let b = synthetic::generate(&cfg(1, 200, 50)).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.train.label_histogram(), vec![20; 10]);
    assert_eq!(a.test.label_histogram(), vec![5; 10]);
    assert_ne!(a.train.images, a.test.images[..].repeat(4));
    let c = synthetic::generate(&cfg(2, 200, 50)).unwrap();
    assert_ne!(a.train.images, c.train.images);
    // Not all the same colour: images use a wide range of bytes.
    let img = a.train.image(0);
    let (lo, hi) = (img.iter().min().unwrap(), img.iter().max().unwrap());
    assert!(hi - lo > 60, "range {lo}..{hi}");
    assert_eq!(CLASS_NAMES.len(), 10);
}

#[test]
fn too_small_configs_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(synthetic::load(tmp.path(), &cfg(0, 4, 1)).is_err());
    assert!(synthetic::load(tmp.path(), &cfg(0, 10, 0)).is_err());
}

/// Per image: grayscale, minus its mean, then the log-magnitude of its 2-D
/// DFT (invariant to where the shape is), pooled over 4x4 frequency cells,
/// normalised to unit length.
fn features(d: &Dataset, i: usize) -> Vec<f64> {
    const N: usize = 32;
    let img = d.image(i);
    let mut g: Vec<f64> = (0..N * N)
        .map(|p| {
            0.299 * img[p * 3] as f64
                + 0.587 * img[p * 3 + 1] as f64
                + 0.114 * img[p * 3 + 2] as f64
        })
        .collect();
    let mean = g.iter().sum::<f64>() / g.len() as f64;
    g.iter_mut().for_each(|v| *v -= mean);
    let (cos, sin): (Vec<f64>, Vec<f64>) = (0..N)
        .map(|k| {
            let a = std::f64::consts::TAU * k as f64 / N as f64;
            (a.cos(), -a.sin())
        })
        .unzip();
    // Rows, then columns.
    let mut re = vec![0.0; N * N];
    let mut im = vec![0.0; N * N];
    for y in 0..N {
        for u in 0..N {
            let (mut r, mut m) = (0.0, 0.0);
            for x in 0..N {
                let k = (u * x) % N;
                r += g[y * N + x] * cos[k];
                m += g[y * N + x] * sin[k];
            }
            re[y * N + u] = r;
            im[y * N + u] = m;
        }
    }
    let mut f = vec![0.0; 64];
    for v in 0..N {
        for u in 0..N {
            let (mut r, mut m) = (0.0, 0.0);
            for y in 0..N {
                let k = (v * y) % N;
                let (a, b) = (re[y * N + u], im[y * N + u]);
                r += a * cos[k] - b * sin[k];
                m += a * sin[k] + b * cos[k];
            }
            f[(v / 4) * 8 + u / 4] += (1.0 + (r * r + m * m).sqrt()).ln();
        }
    }
    let norm = f.iter().map(|v| v * v).sum::<f64>().sqrt();
    f.iter().map(|v| v / norm).collect()
}

fn nearest_mean_accuracy(
    train: &Dataset,
    test: &Dataset,
    feat: &dyn Fn(&Dataset, usize) -> Vec<f64>,
) -> f64 {
    let dim = feat(train, 0).len();
    let mut means = vec![vec![0.0; dim]; train.classes];
    let mut counts = vec![0.0; train.classes];
    for i in 0..train.len() {
        let l = train.labels[i] as usize;
        for (m, v) in means[l].iter_mut().zip(feat(train, i)) {
            *m += v;
        }
        counts[l] += 1.0;
    }
    for (m, c) in means.iter_mut().zip(&counts) {
        m.iter_mut().for_each(|v| *v /= c);
    }
    let correct = (0..test.len())
        .filter(|&i| {
            let f = feat(test, i);
            let best = (0..means.len())
                .min_by(|&a, &b| {
                    let da: f64 = means[a].iter().zip(&f).map(|(m, v)| (m - v).powi(2)).sum();
                    let db: f64 = means[b].iter().zip(&f).map(|(m, v)| (m - v).powi(2)).sum();
                    da.total_cmp(&db)
                })
                .unwrap();
            best as i32 == test.labels[i]
        })
        .count();
    correct as f64 / test.len() as f64
}

#[test]
fn synthetic_is_learnable_by_a_simple_classifier() {
    let s = synthetic::generate(&cfg(0, 3000, 1000)).unwrap();
    let raw = |d: &Dataset, i: usize| d.image(i).iter().map(|&b| b as f64).collect::<Vec<f64>>();
    let acc_raw = nearest_mean_accuracy(&s.train, &s.test, &raw);
    let acc = nearest_mean_accuracy(&s.train, &s.test, &features);
    eprintln!("nearest class mean: raw pixels {acc_raw:.3}, DFT-magnitude features {acc:.3} (chance 0.100)");
    assert!(
        acc > 0.65,
        "nearest-class-mean accuracy {acc:.3} on spectral features"
    );
}
