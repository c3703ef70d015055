//! summary.json: atomic write, round trip, unknown fields kept.

use psflow_worker::run::{Losses, RunDir, TrainSummary};

#[test]
fn summary_round_trips_and_keeps_unknown_fields() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(dir.path().join("run")).unwrap();
    assert!(run.checkpoints().is_dir());
    let s = TrainSummary {
        model: "mobilenet_v1".into(),
        alpha: 0.5,
        resolution: 32,
        dataset: "fashion-mnist".into(),
        classes: 10,
        top1: Some(0.8712),
        top5: Some(0.9981),
        params: 829_834,
        model_bytes: 3_319_336,
        images_per_sec: 1234.5,
        steps: 1876,
        epochs: 2.0,
        wall_seconds: 97.25,
        batch_size: 64,
        optimizer: "rmsprop".into(),
        final_losses: Some(Losses::new(0.41, 0.39, 0.02)),
        ..Default::default()
    };
    s.write(&run.summary()).unwrap();
    let text = std::fs::read_to_string(run.summary()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["top1"], 0.8712);
    assert_eq!(v["final_losses"]["cross_entropy"], 0.39);
    assert_eq!(v["eval_loss"], serde_json::Value::Null);
    assert_eq!(TrainSummary::read(&run.summary()).unwrap(), s);
    // No temp files left behind.
    let names: Vec<_> = std::fs::read_dir(run.root())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}"); // summary.json, checkpoints

    // A newer writer's field survives a read/write by this version.
    let mut v = v;
    v["gpu"] = serde_json::json!("H200");
    std::fs::write(run.summary(), serde_json::to_vec(&v).unwrap()).unwrap();
    let back = TrainSummary::read(&run.summary()).unwrap();
    assert_eq!(back.extra["gpu"], "H200");
    back.write(&run.summary()).unwrap();
    assert_eq!(
        TrainSummary::read(&run.summary()).unwrap().extra["gpu"],
        "H200"
    );

    std::fs::write(run.summary(), "{\"top1\": ").unwrap();
    let e = TrainSummary::read(&run.summary()).unwrap_err().to_string();
    assert!(e.contains("summary.json"), "{e}");
}
