//! Dataset readers: CIFAR-10/100 binary round trips on files we write in
//! exactly that format, IDX raw and gzip, the real Fashion-MNIST files, and
//! the errors for missing, truncated and malformed files.

use std::fs;
use std::path::Path;

use psflow_worker::data::cifar::{self, IMAGE_BYTES};
use psflow_worker::data::idx;
use psflow_worker::data::{Cifar100Labels, DataError, DatasetKind, SyntheticConfig};

/// Deterministic pseudo-random bytes.
fn bytes(n: usize, salt: u64) -> Vec<u8> {
    let mut s = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// A CIFAR record by hand: label bytes, then the R, G and B planes.
fn record(labels: &[u8], hwc: &[u8]) -> Vec<u8> {
    let mut r = labels.to_vec();
    for c in 0..3 {
        for p in 0..1024 {
            r.push(hwc[p * 3 + c]);
        }
    }
    r
}

fn write_cifar10(dir: &Path, counts: [usize; 6]) -> (Vec<u8>, Vec<i32>, Vec<u8>, Vec<i32>) {
    fs::create_dir_all(dir).unwrap();
    let names = cifar::CIFAR10_TRAIN_FILES
        .iter()
        .chain([&cifar::CIFAR10_TEST_FILE]);
    let (mut tri, mut trl, mut tei, mut tel) = (vec![], vec![], vec![], vec![]);
    for (k, (name, &n)) in names.zip(&counts).enumerate() {
        let imgs = bytes(n * IMAGE_BYTES, k as u64 + 1);
        let labels: Vec<u8> = bytes(n, k as u64 + 100).iter().map(|b| b % 10).collect();
        let mut file = vec![];
        for i in 0..n {
            file.extend(record(
                &[labels[i]],
                &imgs[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES],
            ));
        }
        fs::write(dir.join(name), file).unwrap();
        let (images, ls) = if k < 5 {
            (&mut tri, &mut trl)
        } else {
            (&mut tei, &mut tel)
        };
        images.extend(imgs);
        ls.extend(labels.iter().map(|&l| l as i32));
    }
    (tri, trl, tei, tel)
}

#[test]
fn cifar10_reads_hand_written_records_from_folder_or_parent() {
    let tmp = tempfile::tempdir().unwrap();
    let batches = tmp.path().join("cifar-10-batches-bin");
    let (tri, trl, tei, tel) = write_cifar10(&batches, [3, 1, 4, 1, 5, 9]);
    for dir in [tmp.path(), batches.as_path()] {
        let s = DatasetKind::Cifar10.load(Some(dir)).unwrap();
        assert_eq!(s.train.len(), 14);
        assert_eq!(s.test.len(), 9);
        assert_eq!(
            (
                s.train.height,
                s.train.width,
                s.train.channels,
                s.train.classes
            ),
            (32, 32, 3, 10)
        );
        assert_eq!(s.train.images, tri);
        assert_eq!(s.train.labels, trl);
        assert_eq!(s.test.images, tei);
        assert_eq!(s.test.labels, tel);
        assert_eq!(s.train.name, "cifar10");
    }
}

#[test]
fn cifar_planes_become_hwc() {
    // One record whose red plane is 1, green 2, blue 3, except pixel (0, 1)
    // which is (10, 20, 30).
    let tmp = tempfile::tempdir().unwrap();
    let mut rec = vec![7u8];
    for c in 0..3u8 {
        let mut plane = vec![c + 1; 1024];
        plane[1] = (c + 1) * 10;
        rec.extend(plane);
    }
    let path = tmp.path().join("one.bin");
    fs::write(&path, &rec).unwrap();
    let mut d = psflow_worker::data::Dataset {
        name: "t".into(),
        images: vec![],
        labels: vec![],
        height: 32,
        width: 32,
        channels: 3,
        classes: 10,
    };
    cifar::read_file(&path, 1, 0, &mut d).unwrap();
    assert_eq!(d.labels, vec![7]);
    assert_eq!(&d.images[0..6], &[1, 2, 3, 10, 20, 30]);
    assert_eq!(&d.images[6..9], &[1, 2, 3]);
}

#[test]
fn cifar10_writer_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = bytes(4 * IMAGE_BYTES, 9);
    let labels = vec![0, 9, 3, 3];
    let path = tmp.path().join("b.bin");
    cifar::write_file(&path, &imgs, &[&labels]).unwrap();
    let raw = fs::read(&path).unwrap();
    let mut expect = vec![];
    for i in 0..4 {
        expect.extend(record(
            &[labels[i] as u8],
            &imgs[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES],
        ));
    }
    assert_eq!(
        raw, expect,
        "writer must produce the documented record layout"
    );
}

#[test]
fn cifar100_coarse_and_fine_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar-100-binary");
    fs::create_dir_all(&dir).unwrap();
    let make = |n: usize, salt: u64| {
        let imgs = bytes(n * IMAGE_BYTES, salt);
        let coarse: Vec<i32> = (0..n).map(|i| (i * 7 % 20) as i32).collect();
        let fine: Vec<i32> = (0..n).map(|i| (i * 13 % 100) as i32).collect();
        let mut file = vec![];
        for i in 0..n {
            file.extend(record(
                &[coarse[i] as u8, fine[i] as u8],
                &imgs[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES],
            ));
        }
        (imgs, coarse, fine, file)
    };
    let (tri, trc, trf, trfile) = make(23, 1);
    let (tei, tec, tef, tefile) = make(5, 2);
    fs::write(dir.join("train.bin"), trfile).unwrap();
    fs::write(dir.join("test.bin"), tefile).unwrap();

    let coarse: DatasetKind = "cifar100-coarse".parse().unwrap();
    let s = coarse.load(Some(tmp.path())).unwrap();
    assert_eq!(s.train.classes, 20);
    assert_eq!((s.train.labels.clone(), s.test.labels.clone()), (trc, tec));
    assert_eq!(s.train.images, tri);
    assert_eq!(s.test.images, tei);
    let fine = DatasetKind::Cifar100 {
        labels: Cifar100Labels::Fine,
    };
    let s = fine.load(Some(&dir)).unwrap();
    assert_eq!(s.train.classes, 100);
    assert_eq!((s.train.labels, s.test.labels), (trf, tef));
    assert_eq!(s.train.name, "cifar100-fine");
}

fn expect_malformed(err: DataError, file: &Path, offset: u64) -> String {
    let msg = err.to_string();
    match err {
        DataError::Malformed {
            path, offset: o, ..
        } => {
            assert_eq!(path, file, "{msg}");
            assert_eq!(o, offset, "{msg}");
        }
        other => panic!("expected Malformed for {}, got {other}", file.display()),
    }
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    assert!(msg.contains(&format!("byte offset {offset}")), "{msg}");
    msg
}

#[test]
fn truncated_cifar_file_names_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    write_cifar10(tmp.path(), [2, 2, 2, 2, 2, 2]);
    let f = tmp.path().join("data_batch_3.bin");
    let full = fs::read(&f).unwrap();
    fs::write(&f, &full[..3073 + 1000]).unwrap();
    let err = DatasetKind::Cifar10.load(Some(tmp.path())).unwrap_err();
    let msg = expect_malformed(err, &f, 3073);
    assert!(msg.contains("record 1 is cut short: 1000 of 3073"), "{msg}");
}

#[test]
fn cifar_label_out_of_range_names_the_byte() {
    let tmp = tempfile::tempdir().unwrap();
    write_cifar10(tmp.path(), [2, 2, 2, 2, 2, 3]);
    let f = tmp.path().join("test_batch.bin");
    let mut raw = fs::read(&f).unwrap();
    raw[2 * 3073] = 10;
    fs::write(&f, raw).unwrap();
    let msg = expect_malformed(
        DatasetKind::Cifar10.load(Some(tmp.path())).unwrap_err(),
        &f,
        2 * 3073,
    );
    assert!(msg.contains("label 10 of record 2"), "{msg}");

    // CIFAR-100: the coarse byte is checked against 20 even when training
    // on fine labels.
    let f = tmp.path().join("train.bin");
    let mut rec = record(&[20, 5], &bytes(IMAGE_BYTES, 3));
    rec.extend(record(&[1, 5], &bytes(IMAGE_BYTES, 4)));
    fs::write(&f, &rec).unwrap();
    fs::write(tmp.path().join("test.bin"), &rec[3074..]).unwrap();
    let err = DatasetKind::Cifar100 {
        labels: Cifar100Labels::Fine,
    }
    .load(Some(tmp.path()))
    .unwrap_err();
    expect_malformed(err, &f, 0);
}

#[test]
fn missing_cifar_names_the_path_and_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let err = DatasetKind::Cifar10.load(Some(tmp.path())).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::Missing { .. }), "{msg}");
    assert!(
        msg.contains(&tmp.path().join("data_batch_1.bin").display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("--data-dir"), "{msg}");
    // No default location at all.
    let msg = DatasetKind::Cifar10.load(None).unwrap_err().to_string();
    assert!(msg.contains("--data-dir"), "{msg}");
}

#[test]
fn idx_round_trips_raw_and_gzip() {
    let tmp = tempfile::tempdir().unwrap();
    for gz in [false, true] {
        let dir = tmp.path().join(if gz { "gz" } else { "raw" });
        let ext = if gz { ".gz" } else { "" };
        let (n, m) = (17, 6);
        let tr = bytes(n * 28 * 28, 1);
        let trl: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let te = bytes(m * 28 * 28, 2);
        let tel: Vec<u8> = (0..m).map(|i| (9 - i % 10) as u8).collect();
        idx::write_idx(
            &dir.join(format!("train-images-idx3-ubyte{ext}")),
            &[n, 28, 28],
            &tr,
            gz,
        )
        .unwrap();
        idx::write_idx(
            &dir.join(format!("train-labels-idx1-ubyte{ext}")),
            &[n],
            &trl,
            gz,
        )
        .unwrap();
        idx::write_idx(
            &dir.join(format!("t10k-images-idx3-ubyte{ext}")),
            &[m, 28, 28],
            &te,
            gz,
        )
        .unwrap();
        idx::write_idx(
            &dir.join(format!("t10k-labels-idx1-ubyte{ext}")),
            &[m],
            &tel,
            gz,
        )
        .unwrap();
        // The header, byte for byte.
        if !gz {
            let raw = fs::read(dir.join("train-images-idx3-ubyte")).unwrap();
            assert_eq!(
                &raw[..16],
                &[0, 0, 8, 3, 0, 0, 0, 17, 0, 0, 0, 28, 0, 0, 0, 28]
            );
        }
        let s = idx::load_fashion_mnist(&dir).unwrap();
        assert_eq!(
            (s.train.height, s.train.width, s.train.channels),
            (28, 28, 1)
        );
        assert_eq!(s.train.images, tr);
        assert_eq!(s.test.images, te);
        assert_eq!(
            s.train.labels,
            trl.iter().map(|&l| l as i32).collect::<Vec<_>>()
        );
        assert_eq!(
            s.test.labels,
            tel.iter().map(|&l| l as i32).collect::<Vec<_>>()
        );
    }
}

fn fmnist_dir(tmp: &Path, n: usize) -> std::path::PathBuf {
    let dir = tmp.join("fm");
    idx::write_idx(
        &dir.join("train-images-idx3-ubyte"),
        &[n, 28, 28],
        &bytes(n * 784, 5),
        false,
    )
    .unwrap();
    idx::write_idx(
        &dir.join("train-labels-idx1-ubyte"),
        &[n],
        &vec![3; n],
        false,
    )
    .unwrap();
    idx::write_idx(
        &dir.join("t10k-images-idx3-ubyte.gz"),
        &[n, 28, 28],
        &bytes(n * 784, 6),
        true,
    )
    .unwrap();
    idx::write_idx(
        &dir.join("t10k-labels-idx1-ubyte.gz"),
        &[n],
        &vec![4; n],
        true,
    )
    .unwrap();
    dir
}

#[test]
fn idx_errors_name_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fmnist_dir(tmp.path(), 4);
    let images = dir.join("train-images-idx3-ubyte");
    let labels = dir.join("train-labels-idx1-ubyte");
    let good_images = fs::read(&images).unwrap();
    let good_labels = fs::read(&labels).unwrap();

    // Wrong magic.
    let mut bad = good_images.clone();
    bad[0] = 0x1a;
    fs::write(&images, &bad).unwrap();
    let msg = expect_malformed(idx::load_fashion_mnist(&dir).unwrap_err(), &images, 0);
    assert!(msg.contains("magic"), "{msg}");

    // Element type not unsigned byte.
    let mut bad = good_images.clone();
    bad[2] = 0x0d;
    fs::write(&images, &bad).unwrap();
    expect_malformed(idx::load_fashion_mnist(&dir).unwrap_err(), &images, 2);

    // Cut short inside the data: the offset is where the file ends.
    fs::write(&images, &good_images[..16 + 784 * 3 + 5]).unwrap();
    let msg = expect_malformed(
        idx::load_fashion_mnist(&dir).unwrap_err(),
        &images,
        16 + 784 * 3 + 5,
    );
    assert!(msg.contains("cut short"), "{msg}");

    // Cut short inside the header.
    fs::write(&images, &good_images[..10]).unwrap();
    expect_malformed(idx::load_fashion_mnist(&dir).unwrap_err(), &images, 10);

    // Trailing garbage.
    let mut long = good_images.clone();
    long.extend([1, 2, 3]);
    fs::write(&images, &long).unwrap();
    expect_malformed(
        idx::load_fashion_mnist(&dir).unwrap_err(),
        &images,
        16 + 784 * 4,
    );
    fs::write(&images, &good_images).unwrap();

    // A label out of range: offset of that label byte.
    let mut bad = good_labels.clone();
    bad[8 + 2] = 10;
    fs::write(&labels, &bad).unwrap();
    let msg = expect_malformed(idx::load_fashion_mnist(&dir).unwrap_err(), &labels, 10);
    assert!(msg.contains("label 10 of example 2"), "{msg}");

    // Label count that disagrees with the images.
    idx::write_idx(&labels, &[3], &[1, 2, 3], false).unwrap();
    expect_malformed(idx::load_fashion_mnist(&dir).unwrap_err(), &labels, 4);
    fs::write(&labels, &good_labels).unwrap();
    idx::load_fashion_mnist(&dir).unwrap();
}

#[test]
fn truncated_gzip_is_malformed_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fmnist_dir(tmp.path(), 50);
    let f = dir.join("t10k-images-idx3-ubyte.gz");
    let gz = fs::read(&f).unwrap();
    fs::write(&f, &gz[..gz.len() / 2]).unwrap();
    let err = idx::load_fashion_mnist(&dir).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("gzip"), "{msg}");
    match &err {
        DataError::Malformed { path, .. } => assert_eq!(path, &f, "{msg}"),
        other => panic!("expected Malformed, got {other}"),
    }
}

#[test]
fn missing_fashion_mnist_says_how_to_install() {
    let tmp = tempfile::tempdir().unwrap();
    let err = DatasetKind::FashionMnist
        .load(Some(tmp.path()))
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::Missing { .. }), "{msg}");
    assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");
    assert!(
        msg.contains("dataset-fashion-mnist") && msg.contains("--data-dir"),
        "{msg}"
    );
}

/// The real files of Debian's dataset-fashion-mnist (scripts/test installs
/// the package): 60000/10000 28x28 images, 6000/1000 per class.
#[test]
fn real_fashion_mnist_loads() {
    let kind: DatasetKind = "fashion-mnist".parse().unwrap();
    assert_eq!(kind.image_shape(), (28, 28, 1, 10));
    let s = kind.load(None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.train.len(), 60_000);
    assert_eq!(s.test.len(), 10_000);
    assert_eq!(
        (
            s.train.height,
            s.train.width,
            s.train.channels,
            s.train.classes
        ),
        (28, 28, 1, 10)
    );
    assert_eq!(s.train.images.len(), 60_000 * 784);
    assert_eq!(s.train.label_histogram(), vec![6000; 10]);
    assert_eq!(s.test.label_histogram(), vec![1000; 10]);
    s.train.validate().unwrap();
    // Real images: not blank, and using most of the byte range.
    let mean = s.test.images.iter().map(|&b| b as f64).sum::<f64>() / s.test.images.len() as f64;
    assert!((50.0..100.0).contains(&mean), "mean pixel {mean}");
    assert_eq!(*s.train.images.iter().max().unwrap(), 255);
    // The first training label of Fashion-MNIST is 9 (ankle boot), the
    // first test label is 9 too (published with the dataset).
    assert_eq!(s.train.labels[0], 9);
    assert_eq!(s.test.labels[0], 9);
}

#[test]
fn dataset_names_parse_and_print() {
    for (s, shape) in [
        ("cifar10", (32, 32, 3, 10)),
        ("CIFAR-100", (32, 32, 3, 100)),
        ("cifar100_coarse", (32, 32, 3, 20)),
        ("fashion-mnist", (28, 28, 1, 10)),
        ("synthetic", (32, 32, 3, 10)),
    ] {
        let k: DatasetKind = s.parse().unwrap();
        assert_eq!(k.image_shape(), shape, "{s}");
        let again: DatasetKind = k.to_string().parse().unwrap();
        assert_eq!(again, k);
    }
    let err = "imagenet".parse::<DatasetKind>().unwrap_err().to_string();
    assert!(err.contains("imagenet") && err.contains("cifar10"), "{err}");
    // The job-spec form.
    let k: DatasetKind =
        serde_json::from_str(r#"{"name":"synthetic","seed":3,"train":100,"test":20}"#).unwrap();
    assert_eq!(
        k,
        DatasetKind::Synthetic(SyntheticConfig {
            seed: 3,
            train: 100,
            test: 20
        })
    );
    let k: DatasetKind = serde_json::from_str(r#"{"name":"cifar100","labels":"coarse"}"#).unwrap();
    assert_eq!(k.image_shape().3, 20);
}
