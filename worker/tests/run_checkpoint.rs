//! Checkpoints: round trip of every dtype, atomicity against a crash in
//! the middle of a write, corruption and truncation named precisely,
//! keep-last-K.

use std::fs;
use std::path::Path;

use psflow_kernels::Tensor;
use psflow_worker::run::checkpoint::{load, read_manifest};
use psflow_worker::run::{Checkpoint, Checkpointer, RunError};
use serde_json::json;

/// Deterministic awkward values: negative zero, subnormal, huge, NaN payload.
fn tensors(seed: u32) -> Vec<(String, Tensor)> {
    let f: Vec<f32> = (0..3 * 5 * 7)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / 7.0e8 - 3.0)
        .collect();
    let mut special = vec![
        -0.0f32,
        f32::MIN_POSITIVE / 4.0,
        f32::MAX,
        f32::NEG_INFINITY,
    ];
    special.push(f32::from_bits(0x7fc0_1234));
    vec![
        (
            "MobilenetV1/Conv2d_0/weights".into(),
            Tensor::new(vec![3, 5, 7], f).unwrap(),
        ),
        ("special".into(), Tensor::new(vec![5], special).unwrap()),
        ("global_step".into(), Tensor::scalar(i64::MAX - seed as i64)),
        (
            "empty".into(),
            Tensor::new(vec![0, 4], Vec::<f32>::new()).unwrap(),
        ),
        (
            "i32".into(),
            Tensor::new(vec![2, 2], vec![-1i32, 2, i32::MIN, 7]).unwrap(),
        ),
        (
            "f64".into(),
            Tensor::new(vec![2], vec![1.5f64, -2e300]).unwrap(),
        ),
        (
            "u8".into(),
            Tensor::new(vec![3], vec![0u8, 128, 255]).unwrap(),
        ),
        (
            "bool".into(),
            Tensor::new(vec![2], vec![true, false]).unwrap(),
        ),
    ]
}

fn bits_equal(a: &[(String, Tensor)], b: &[(String, Tensor)]) {
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        assert_eq!(ta.shape(), tb.shape(), "{na}");
        assert_eq!(ta.dtype(), tb.dtype(), "{na}");
        // Compare bits so that NaN and -0.0 count.
        let (ba, bb): (Vec<u64>, Vec<u64>) = match (ta.f32s("t"), tb.f32s("t")) {
            (Ok(x), Ok(y)) => (
                x.iter().map(|v| v.to_bits() as u64).collect(),
                y.iter().map(|v| v.to_bits() as u64).collect(),
            ),
            _ => {
                assert_eq!(ta, tb, "{na}");
                continue;
            }
        };
        assert_eq!(ba, bb, "{na}");
    }
}

fn meta(step: u64) -> serde_json::Value {
    json!({
        "epoch": 1.5,
        "optimizer": {"name": "rmsprop", "decay": 0.9, "momentum": 0.9, "epsilon": 1.0},
        "data": {"epoch": 1, "index": 4096, "seed": 7},
        "seed": 42,
        "step_check": step,
    })
}

#[test]
fn round_trip_is_bit_exact_with_manifest_and_latest() {
    let dir = tempfile::tempdir().unwrap();
    let ckdir = dir.path().join("checkpoints");
    assert_eq!(Checkpoint::latest(&ckdir).unwrap(), None);
    let t = tensors(1);
    let path = Checkpoint::write(&ckdir, 1200, &t, meta(1200)).unwrap();
    assert_eq!(path, ckdir.join("ckpt-1200"));
    assert!(path.join("data-00000-of-00001").is_file());
    assert_eq!(
        fs::read_to_string(ckdir.join("latest")).unwrap(),
        "ckpt-1200\n"
    );

    let latest = Checkpoint::latest(&ckdir).unwrap().unwrap();
    assert_eq!(latest.step, 1200);
    assert_eq!(latest.path, path);
    let (back, manifest) = latest.load().unwrap();
    bits_equal(&t, &back);
    assert_eq!(manifest.step, 1200);
    assert_eq!(manifest.meta, meta(1200));
    assert_eq!(manifest.tensors.len(), t.len());
    assert_eq!(manifest.tensors[0].dtype, "float32");
    assert_eq!(manifest.tensors[0].shape, vec![3, 5, 7]);
    assert_eq!(manifest.tensors[2].dtype, "int64");
    for e in &manifest.tensors {
        assert_eq!(e.offset % 64, 0, "{} aligned", e.name);
    }
    // The manifest is plain JSON a person (or a script) can read.
    let raw: serde_json::Value =
        serde_json::from_slice(&fs::read(path.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(raw["step"], 1200);
    assert_eq!(raw["meta"]["optimizer"]["name"], "rmsprop");
    assert_eq!(raw["shards"][0]["file"], "data-00000-of-00001");

    // A newer one becomes latest; the older stays loadable.
    let t2 = tensors(2);
    Checkpoint::write(&ckdir, 2400, &t2, meta(2400)).unwrap();
    assert_eq!(Checkpoint::latest(&ckdir).unwrap().unwrap().step, 2400);
    bits_equal(&load(&ckdir.join("ckpt-1200")).unwrap().0, &t);
    bits_equal(&load(&ckdir.join("ckpt-2400")).unwrap().0, &t2);
}

#[test]
fn sharded_checkpoints_keep_order_and_shard_index() {
    let dir = tempfile::tempdir().unwrap();
    let t = tensors(3);
    let (a, b) = t.split_at(3);
    let path = Checkpoint::write_shards(dir.path(), 5, &[a, b], json!(null)).unwrap();
    assert!(path.join("data-00000-of-00002").is_file());
    assert!(path.join("data-00001-of-00002").is_file());
    let (back, m) = load(&path).unwrap();
    bits_equal(&t, &back);
    assert_eq!(m.tensors[2].shard, 0);
    assert_eq!(m.tensors[3].shard, 1);
}

#[test]
fn rewriting_a_step_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    Checkpoint::write(dir.path(), 7, &tensors(1), meta(7)).unwrap();
    let t = tensors(9);
    Checkpoint::write(dir.path(), 7, &t, meta(7)).unwrap();
    bits_equal(&load(&dir.path().join("ckpt-7")).unwrap().0, &t);
    assert_eq!(Checkpoint::list(dir.path()).unwrap().len(), 1);
}

/// Everything the crash left: a temp directory with a partial data file
/// and no manifest, with a higher step than the last good checkpoint.
fn simulate_crash(ckdir: &Path, step: u64) {
    let tmp = ckdir.join(format!(".tmp-ckpt-{step}.99999.0"));
    fs::create_dir_all(&tmp).unwrap();
    fs::write(tmp.join("data-00000-of-00001"), b"PSFLOWCK\x01\0\0\0half").unwrap();
}

#[test]
fn a_crash_mid_write_never_becomes_latest_and_is_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let ckdir = dir.path();
    let t = tensors(4);
    Checkpoint::write(ckdir, 100, &t, meta(100)).unwrap();
    simulate_crash(ckdir, 200);
    // And a half-written `latest` temp file.
    fs::write(ckdir.join(".tmp-latest.99999.1"), b"ckpt-2").unwrap();

    let latest = Checkpoint::latest(ckdir).unwrap().unwrap();
    assert_eq!(latest.step, 100);
    assert_eq!(Checkpoint::list(ckdir).unwrap().len(), 1);
    bits_equal(&latest.load().unwrap().0, &t);

    // Without the `latest` file (crash right after the directory rename),
    // the newest complete checkpoint is found by scanning; a ckpt dir
    // without a manifest is not complete.
    Checkpoint::write(ckdir, 300, &t, meta(300)).unwrap();
    fs::create_dir(ckdir.join("ckpt-400")).unwrap();
    fs::remove_file(ckdir.join("latest")).unwrap();
    assert_eq!(Checkpoint::latest(ckdir).unwrap().unwrap().step, 300);
    // `latest` naming a checkpoint that was deleted: same fallback.
    fs::write(ckdir.join("latest"), "ckpt-999\n").unwrap();
    assert_eq!(Checkpoint::latest(ckdir).unwrap().unwrap().step, 300);

    let removed = Checkpoint::prune(ckdir, 10).unwrap();
    assert_eq!(removed.len(), 2, "{removed:?}");
    let names: Vec<String> = fs::read_dir(ckdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with(".tmp-")), "{names:?}");
}

fn expect_corrupt(path: &Path, needle: &[&str]) {
    let err = load(path).unwrap_err();
    assert!(matches!(err, RunError::Corrupt { .. }), "{err:?}");
    let msg = err.to_string();
    for n in needle {
        assert!(msg.contains(n), "{msg:?} should mention {n:?}");
    }
}

#[test]
fn corruption_and_truncation_name_the_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = Checkpoint::write(dir.path(), 3, &tensors(5), meta(3)).unwrap();
    let data = path.join("data-00000-of-00001");
    let good = fs::read(&data).unwrap();
    let m = read_manifest(&path).unwrap();
    let data_str = data.display().to_string();

    // A flipped bit inside a tensor's bytes names that tensor.
    let e = &m.tensors[0];
    let mut bad = good.clone();
    bad[e.offset as usize + 17] ^= 0x10;
    fs::write(&data, &bad).unwrap();
    expect_corrupt(
        &path,
        &[
            &data_str,
            "MobilenetV1/Conv2d_0/weights",
            "CRC-32C mismatch",
        ],
    );

    // A flipped bit in a record header (the name) is caught too.
    let mut bad = good.clone();
    bad[16 + 4 + 2] ^= 0x01;
    fs::write(&data, &bad).unwrap();
    expect_corrupt(&path, &[&data_str, "record header"]);

    // Every single-byte change anywhere in the file is caught.
    for i in (0..good.len()).step_by(7) {
        let mut bad = good.clone();
        bad[i] = bad[i].wrapping_add(1);
        fs::write(&data, &bad).unwrap();
        assert!(load(&path).is_err(), "byte {i} changed unnoticed");
    }

    // Truncation.
    fs::write(&data, &good[..good.len() - 1]).unwrap();
    expect_corrupt(&path, &[&data_str, "truncated", &format!("{}", good.len())]);
    fs::write(&data, &good[..10]).unwrap();
    expect_corrupt(&path, &[&data_str, "truncated"]);

    // Missing data file: an I/O error naming it.
    fs::remove_file(&data).unwrap();
    let msg = load(&path).unwrap_err().to_string();
    assert!(msg.contains(&data_str), "{msg}");

    // Truncated manifest: a JSON error naming it.
    fs::write(&data, &good).unwrap();
    let mpath = path.join("manifest.json");
    let mtext = fs::read(&mpath).unwrap();
    fs::write(&mpath, &mtext[..mtext.len() / 2]).unwrap();
    let err = load(&path).unwrap_err();
    assert!(matches!(err, RunError::Json { .. }), "{err:?}");
    assert!(err.to_string().contains("manifest.json"));

    // Restored, it loads again.
    fs::write(&mpath, &mtext).unwrap();
    bits_equal(&load(&path).unwrap().0, &tensors(5));
}

#[test]
fn keeps_the_last_k() {
    let dir = tempfile::tempdir().unwrap();
    let ck = Checkpointer::new(dir.path().join("checkpoints"), 3);
    let t = tensors(6);
    for step in [10u64, 20, 30, 40, 50] {
        ck.save(step, &t, meta(step)).unwrap();
        let steps: Vec<u64> = Checkpoint::list(ck.dir())
            .unwrap()
            .iter()
            .map(|c| c.step)
            .collect();
        let done: Vec<u64> = [10u64, 20, 30, 40, 50]
            .into_iter()
            .filter(|&s| s <= step)
            .collect();
        let want = done[done.len().saturating_sub(3)..].to_vec();
        assert_eq!(steps, want);
    }
    assert_eq!(ck.latest().unwrap().unwrap().step, 50);
    // Steps sort numerically, not as text (ckpt-100 after ckpt-50).
    ck.save(100, &t, meta(100)).unwrap();
    let steps: Vec<u64> = Checkpoint::list(ck.dir())
        .unwrap()
        .iter()
        .map(|c| c.step)
        .collect();
    assert_eq!(steps, vec![40, 50, 100]);
}

#[test]
fn bad_arguments_are_refused_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tensor::scalar(1.0f32);
    let dup = vec![("a".to_string(), t.clone()), ("a".to_string(), t.clone())];
    assert!(matches!(
        Checkpoint::write(dir.path(), 1, &dup, json!({})),
        Err(RunError::Invalid(_))
    ));
    let empty = vec![(String::new(), t)];
    assert!(Checkpoint::write(dir.path(), 1, &empty, json!({})).is_err());
    assert_eq!(Checkpoint::latest(dir.path()).unwrap(), None);
}

/// Throughput on MobileNet v1 1.0 sized state (4.2M parameters and two
/// RMSProp slots, about 51 MB): `cargo test -p psflow-worker --test
/// run_checkpoint -- --ignored --nocapture`.
#[test]
#[ignore = "timing, prints MB/s"]
fn throughput_mobilenet_sized() {
    let dir = tempfile::tempdir().unwrap();
    let n = 4_231_976usize;
    let t: Vec<(String, Tensor)> = (0..3)
        .map(|k| {
            let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37 + k as f32).sin()).collect();
            (format!("state/{k}"), Tensor::new(vec![n], v).unwrap())
        })
        .collect();
    let mb = (3 * n * 4) as f64 / 1e6;
    let start = std::time::Instant::now();
    let path = Checkpoint::write(dir.path(), 1, &t, json!({})).unwrap();
    let w = start.elapsed().as_secs_f64();
    let start = std::time::Instant::now();
    let (back, _) = load(&path).unwrap();
    let r = start.elapsed().as_secs_f64();
    bits_equal(&t, &back);
    eprintln!(
        "checkpoint {mb:.1} MB: write {w:.3} s ({:.0} MB/s incl. fsync), load+verify {r:.3} s ({:.0} MB/s)",
        mb / w,
        mb / r
    );
}
