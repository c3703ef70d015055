//! Progress: the metrics accumulator's means and rates on a controlled
//! clock, and the plain log lines used when stderr is not a terminal.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use psflow_worker::run::progress::{format_duration, plain_line};
use psflow_worker::run::{Losses, MetricsAccumulator, ProgressMode, StepReport, TrainProgress};

#[test]
fn running_mean_and_windowed_rate() {
    let t0 = Instant::now();
    let mut m = MetricsAccumulator::new_at(4, t0);
    assert_eq!(m.mean(), None);
    assert_eq!(m.images_per_sec(), None);
    // 10 steps of 64 images; step k ends at k * 100 ms for k <= 5, then
    // every 50 ms (the machine got faster).
    let mut t = t0;
    for k in 1..=10u64 {
        t += Duration::from_millis(if k <= 5 { 100 } else { 50 });
        m.record_at(t, 64, Losses::new(k as f64, 2.0 * k as f64, 0.5));
    }
    let mean = m.mean().unwrap();
    assert!((mean.total - 5.5).abs() < 1e-12);
    assert!((mean.cross_entropy - 11.0).abs() < 1e-12);
    assert!((mean.regularization - 0.5).abs() < 1e-12);
    // Window of 4 steps, all at 50 ms: 64 / 0.05 = 1280 images/s.
    assert!((m.images_per_sec().unwrap() - 1280.0).abs() < 1e-6);
    assert!((m.seconds_per_step().unwrap() - 0.05).abs() < 1e-9);
    // Overall: 640 images in 0.75 s.
    assert!((m.overall_images_per_sec().unwrap() - 640.0 / 0.75).abs() < 1e-6);
    assert_eq!(m.steps(), 10);
    assert_eq!(m.images(), 640);

    assert_eq!(m.take_mean().unwrap(), mean);
    assert_eq!(m.mean(), None);
    assert_eq!(m.mean_count(), 0);
    t += Duration::from_millis(50);
    m.record_at(t, 64, Losses::new(1.0, 1.0, 0.0));
    assert_eq!(m.mean().unwrap().total, 1.0);

    // Warm-up excluded.
    m.restart_clock(t);
    assert_eq!(m.images_per_sec(), None);
    m.record_at(t + Duration::from_millis(200), 32, Losses::default());
    assert!((m.images_per_sec().unwrap() - 160.0).abs() < 1e-6);
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn report(step: u64) -> StepReport {
    StepReport {
        step,
        epoch: step as f64 / 100.0,
        losses: Losses::new(2.1034, 2.0925, 0.0109),
        learning_rate: 0.01,
        images_per_sec: Some(812.44),
    }
}

#[test]
fn plain_mode_logs_first_periodic_and_last_steps() {
    let sink = Sink::default();
    let mut p = TrainProgress::plain(Box::new(sink.clone()), 50, 0, Duration::from_secs(3600));
    assert!(!p.is_bar());
    for step in 1..=50 {
        p.update(&report(step));
    }
    p.println("checkpoint saved: ckpt-50");
    p.finish("done");
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("step 1/50 (2.0%) epoch 0.01 loss 2.1034 xent 2.0925 reg 0.0109 lr 1.000e-2 812.4 img/s"), "{}", lines[0]);
    assert!(lines[0].contains(" eta "));
    assert!(lines[1].starts_with("step 50/50 (100.0%)"), "{}", lines[1]);
    assert_eq!(lines[2], "checkpoint saved: ckpt-50");
    assert_eq!(lines[3], "done");

    // Interval zero: every step logs.
    let sink = Sink::default();
    let mut p = TrainProgress::plain(Box::new(sink.clone()), 5, 2, Duration::ZERO);
    for step in 3..=5 {
        p.update(&report(step));
    }
    assert_eq!(
        String::from_utf8(sink.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .count(),
        3
    );
}

#[test]
fn line_and_duration_formats() {
    let l = plain_line(
        &report(120),
        1000,
        Duration::from_secs(62),
        Some(Duration::from_secs(455)),
    );
    assert_eq!(
        l,
        "step 120/1000 (12.0%) epoch 1.20 loss 2.1034 xent 2.0925 reg 0.0109 lr 1.000e-2 812.4 img/s elapsed 1m02s eta 7m35s"
    );
    assert_eq!(format_duration(Duration::from_secs(12)), "12s");
    assert_eq!(format_duration(Duration::from_secs(3723)), "1h02m03s");
}

#[test]
fn bar_and_quiet_modes_do_not_panic_off_a_terminal() {
    for mode in [ProgressMode::Bar, ProgressMode::Quiet, ProgressMode::Auto] {
        let mut p = TrainProgress::new(10, 3, mode);
        for s in 4..=10 {
            p.update(&report(s));
        }
        p.println("eval top1 0.87");
        p.finish("done");
    }
}
