//! Event files: what we write reads back with CRCs checked, in the layout
//! TensorBoard expects. (TensorFlow itself reading them: run
//! `tools/tf/check_events.py`, which needs /opt/tfvenv.)

use psflow_proto::tensorflow::{event, session_log};
use psflow_worker::run::tensorboard::{event_files, hostname, read_events, scalars, FILE_VERSION};
use psflow_worker::run::tfrecord::read_records;
use psflow_worker::run::{EventWriter, RunError};

#[test]
fn writes_version_then_scalars_with_steps_and_wall_times() {
    let dir = tempfile::tempdir().unwrap();
    let path = {
        let mut w = EventWriter::create(dir.path()).unwrap();
        for step in 1..=5i64 {
            w.add_scalars(
                step,
                &[
                    ("loss/total", 2.0 / step as f32),
                    ("loss/cross_entropy", 1.5 / step as f32),
                    ("learning_rate", 0.01),
                ],
            )
            .unwrap();
        }
        w.add_scalar("accuracy/top1", 0.875, 5).unwrap();
        w.path().to_path_buf()
        // Dropped without an explicit flush: drop flushes.
    };
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let parts: Vec<&str> = name.splitn(5, '.').collect();
    assert_eq!(&parts[..3], ["events", "out", "tfevents"], "{name}");
    let secs: u64 = parts[3].parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(secs <= now && now - secs < 600, "{secs} vs {now}");
    assert_eq!(parts[4], hostname());
    assert_eq!(event_files(dir.path()).unwrap(), vec![path.clone()]);

    let events = read_events(&path).unwrap();
    assert_eq!(events.len(), 7);
    assert_eq!(
        events[0].what,
        Some(event::What::FileVersion(FILE_VERSION.into()))
    );
    assert_eq!(FILE_VERSION, "brain.Event:2");
    for pair in events.windows(2) {
        assert!(pair[1].wall_time >= pair[0].wall_time);
        assert!(pair[0].wall_time > 1.6e9);
    }
    let s = scalars(&events);
    assert_eq!(s.len(), 16);
    assert_eq!(s[0], ("loss/total".to_string(), 1, 2.0));
    assert_eq!(s[4], ("loss/cross_entropy".to_string(), 2, 0.75));
    assert_eq!(s[15], ("accuracy/top1".to_string(), 5, 0.875));
}

#[test]
fn flush_makes_events_visible_to_a_reader_while_writing() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = EventWriter::create(dir.path()).unwrap();
    w.add_scalars_at(3, 1_700_000_000.5, &[("x", 1.0)]).unwrap();
    w.flush().unwrap();
    let n = read_events(w.path()).unwrap().len();
    assert_eq!(n, 2);
    w.add_session_start(3).unwrap();
    w.sync().unwrap();
    let events = read_events(w.path()).unwrap();
    match &events[2].what {
        Some(event::What::SessionLog(s)) => {
            assert_eq!(s.status, session_log::SessionStatus::Start as i32);
            assert_eq!(events[2].step, 3);
        }
        other => panic!("expected a session log, got {other:?}"),
    }
}

#[test]
fn two_writers_in_the_same_second_get_different_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = EventWriter::create(dir.path()).unwrap();
    let b = EventWriter::create(dir.path()).unwrap();
    assert_ne!(a.path(), b.path());
    assert_eq!(event_files(dir.path()).unwrap().len(), 2);
}

#[test]
fn empty_tags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = EventWriter::create(dir.path()).unwrap();
    assert!(matches!(
        w.add_scalar("", 1.0, 1),
        Err(RunError::Invalid(_))
    ));
}

#[test]
fn a_corrupted_event_file_is_reported_with_its_path_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = {
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.add_scalar("loss", 1.0, 1).unwrap();
        w.path().to_path_buf()
    };
    let good = std::fs::read(&path).unwrap();
    assert_eq!(read_records(&path).unwrap().len(), 2);

    let mut bad = good.clone();
    let last = bad.len() - 6; // inside the second record's data
    bad[last] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    let e = read_events(&path).unwrap_err().to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(e.contains("data CRC mismatch"), "{e}");

    std::fs::write(&path, &good[..good.len() - 3]).unwrap();
    let e = read_events(&path).unwrap_err().to_string();
    assert!(e.contains("truncated"), "{e}");
}

/// Writes a known event file for `tools/tf/check_events.py` (TensorFlow
/// reading our bytes): into `$PSFLOW_EVENTS_DIR`, default
/// `target/tf-events`. Scalars: `loss/total` = 2/step,
/// `loss/cross_entropy` = 1.5/step, `learning_rate` = 0.01 at steps 1..=5,
/// `accuracy/top1` = 0.875 at step 5.
#[test]
#[ignore = "writes an event file for tools/tf/check_events.py"]
fn write_events_for_tensorflow() {
    let dir = std::env::var_os("PSFLOW_EVENTS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tf-events")
        });
    let _ = std::fs::remove_dir_all(&dir);
    let mut w = EventWriter::create(&dir).unwrap();
    for step in 1..=5i64 {
        w.add_scalars(
            step,
            &[
                ("loss/total", 2.0 / step as f32),
                ("loss/cross_entropy", 1.5 / step as f32),
                ("learning_rate", 0.01),
            ],
        )
        .unwrap();
    }
    w.add_scalar("accuracy/top1", 0.875, 5).unwrap();
    w.flush().unwrap();
    eprintln!("wrote {}", w.path().display());
}
