//! Training progress for people: a progress bar (step/total, loss,
//! images/s, ETA) on a terminal, periodic plain log lines otherwise (CI,
//! `nohup`, a pipe), and [`MetricsAccumulator`], which turns per-step
//! numbers into running means and a windowed images/s.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

/// The three losses a training step reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Losses {
    /// cross_entropy + regularization.
    pub total: f64,
    pub cross_entropy: f64,
    /// L2 weight decay, lambda * sum(w^2) / 2.
    pub regularization: f64,
}

impl Losses {
    pub fn new(total: f64, cross_entropy: f64, regularization: f64) -> Losses {
        Losses {
            total,
            cross_entropy,
            regularization,
        }
    }

    fn add(&mut self, o: &Losses) {
        self.total += o.total;
        self.cross_entropy += o.cross_entropy;
        self.regularization += o.regularization;
    }

    fn scaled(&self, s: f64) -> Losses {
        Losses::new(
            self.total * s,
            self.cross_entropy * s,
            self.regularization * s,
        )
    }
}

/// Running mean of the losses since the last [`take_mean`], and images/s
/// over the last `window` steps (and over the whole run).
///
/// [`take_mean`]: MetricsAccumulator::take_mean
#[derive(Clone, Debug)]
pub struct MetricsAccumulator {
    window: usize,
    /// End time and images of the last `window` steps.
    marks: VecDeque<(Instant, u64)>,
    /// When the oldest step in `marks` began.
    boundary: Instant,
    sum: Losses,
    count: u64,
    started: Instant,
    steps: u64,
    images: u64,
}

impl MetricsAccumulator {
    /// Times from now; `window` (at least 1) steps for images/s.
    pub fn new(window: usize) -> MetricsAccumulator {
        MetricsAccumulator::new_at(window, Instant::now())
    }

    /// As [`new`](Self::new), timing from `now`.
    pub fn new_at(window: usize, now: Instant) -> MetricsAccumulator {
        MetricsAccumulator {
            window: window.max(1),
            marks: VecDeque::new(),
            boundary: now,
            sum: Losses::default(),
            count: 0,
            started: now,
            steps: 0,
            images: 0,
        }
    }

    /// Restarts the clock (rates, not losses): call after warm-up steps
    /// so that one-time costs do not count as training time.
    pub fn restart_clock(&mut self, now: Instant) {
        self.marks.clear();
        self.boundary = now;
        self.started = now;
        self.steps = 0;
        self.images = 0;
    }

    /// A step that processed `images` images just ended with `losses`.
    pub fn record(&mut self, images: u64, losses: Losses) {
        self.record_at(Instant::now(), images, losses)
    }

    /// As [`record`](Self::record) with the step's end time given.
    pub fn record_at(&mut self, now: Instant, images: u64, losses: Losses) {
        self.sum.add(&losses);
        self.count += 1;
        self.steps += 1;
        self.images += images;
        self.marks.push_back((now, images));
        if self.marks.len() > self.window {
            if let Some((t, _)) = self.marks.pop_front() {
                self.boundary = t;
            }
        }
    }

    /// Mean losses since the last `take_mean` (`None` before any step).
    pub fn mean(&self) -> Option<Losses> {
        (self.count > 0).then(|| self.sum.scaled(1.0 / self.count as f64))
    }

    /// The mean, and starts a new one.
    pub fn take_mean(&mut self) -> Option<Losses> {
        let m = self.mean();
        self.sum = Losses::default();
        self.count = 0;
        m
    }

    /// Steps in the current mean.
    pub fn mean_count(&self) -> u64 {
        self.count
    }

    /// Images/s over the last `window` steps.
    pub fn images_per_sec(&self) -> Option<f64> {
        let (last, _) = *self.marks.back()?;
        let images: u64 = self.marks.iter().map(|&(_, n)| n).sum();
        rate(images as f64, last.duration_since(self.boundary))
    }

    /// Seconds per step over the last `window` steps.
    pub fn seconds_per_step(&self) -> Option<f64> {
        let (last, _) = *self.marks.back()?;
        let secs = last.duration_since(self.boundary).as_secs_f64();
        (secs > 0.0).then(|| secs / self.marks.len() as f64)
    }

    /// Images/s since creation (or the last `restart_clock`).
    pub fn overall_images_per_sec(&self) -> Option<f64> {
        let (last, _) = *self.marks.back()?;
        rate(self.images as f64, last.duration_since(self.started))
    }

    /// Steps recorded since creation (or the last `restart_clock`).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub fn images(&self) -> u64 {
        self.images
    }

    /// Seconds from creation (or `restart_clock`) to the last step's end.
    pub fn elapsed(&self) -> Duration {
        self.marks
            .back()
            .map(|&(t, _)| t.duration_since(self.started))
            .unwrap_or_default()
    }
}

fn rate(count: f64, d: Duration) -> Option<f64> {
    let s = d.as_secs_f64();
    (s > 0.0).then(|| count / s)
}

/// What [`TrainProgress::update`] shows.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepReport {
    /// Global step just finished (1-based: after the first step, 1).
    pub step: u64,
    /// Epochs done, fractional.
    pub epoch: f64,
    /// Usually the running mean over the logging window.
    pub losses: Losses,
    pub learning_rate: f64,
    pub images_per_sec: Option<f64>,
}

/// How to show progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar if stderr is a terminal, else plain lines.
    #[default]
    Auto,
    Bar,
    /// A log line every `interval` (and at the last step).
    Plain,
    /// Nothing.
    Quiet,
}

enum Output {
    Bar(ProgressBar),
    Plain {
        out: Box<dyn Write + Send>,
        every: Duration,
        last: Option<Instant>,
    },
    Quiet,
}

/// Progress of a training loop from `start_step` to `total_steps`.
pub struct TrainProgress {
    total: u64,
    start_step: u64,
    started: Instant,
    output: Output,
}

/// Interval of plain log lines in [`ProgressMode::Auto`] and `Plain`.
pub const DEFAULT_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl TrainProgress {
    /// Progress on stderr. `start_step` is where a resumed run starts.
    pub fn new(total_steps: u64, start_step: u64, mode: ProgressMode) -> TrainProgress {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Plain,
            m => m,
        };
        let output = match mode {
            ProgressMode::Bar => Output::Bar(make_bar(total_steps, start_step)),
            ProgressMode::Plain | ProgressMode::Auto => Output::Plain {
                out: Box::new(std::io::stderr()),
                every: DEFAULT_LOG_INTERVAL,
                last: None,
            },
            ProgressMode::Quiet => Output::Quiet,
        };
        TrainProgress {
            total: total_steps,
            start_step,
            started: Instant::now(),
            output,
        }
    }

    /// Plain lines to `out`, at most one per `every` (plus the first and
    /// last step).
    pub fn plain(
        out: Box<dyn Write + Send>,
        total_steps: u64,
        start_step: u64,
        every: Duration,
    ) -> TrainProgress {
        TrainProgress {
            total: total_steps,
            start_step,
            started: Instant::now(),
            output: Output::Plain {
                out,
                every,
                last: None,
            },
        }
    }

    pub fn is_bar(&self) -> bool {
        matches!(self.output, Output::Bar(_))
    }

    /// Shows the state after a step.
    pub fn update(&mut self, r: &StepReport) {
        let eta = self.eta(r.step);
        match &mut self.output {
            Output::Bar(bar) => {
                bar.set_position(r.step.min(self.total));
                bar.set_message(bar_message(r));
            }
            Output::Plain { out, every, last } => {
                let now = Instant::now();
                let due = match last {
                    None => true,
                    Some(t) => now.duration_since(*t) >= *every,
                };
                if due || r.step >= self.total {
                    *last = Some(now);
                    let line = plain_line(r, self.total, self.started.elapsed(), eta);
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            }
            Output::Quiet => {}
        }
    }

    /// A line above the bar (or among the log lines): eval results,
    /// checkpoint saved, …
    pub fn println(&mut self, msg: &str) {
        match &mut self.output {
            Output::Bar(bar) => bar.println(msg),
            Output::Plain { out, .. } => {
                let _ = writeln!(out, "{msg}");
                let _ = out.flush();
            }
            Output::Quiet => {}
        }
    }

    /// Ends the bar (left on screen) with `msg`.
    pub fn finish(&mut self, msg: &str) {
        match &mut self.output {
            Output::Bar(bar) => bar.finish_with_message(msg.to_string()),
            Output::Plain { .. } => self.println(msg),
            Output::Quiet => {}
        }
    }

    /// Time left at the mean pace of this process so far.
    fn eta(&self, step: u64) -> Option<Duration> {
        let done = step.checked_sub(self.start_step).filter(|&d| d > 0)?;
        let left = self.total.saturating_sub(step);
        let per = self.started.elapsed().as_secs_f64() / done as f64;
        Some(Duration::from_secs_f64(per * left as f64))
    }
}

fn make_bar(total: u64, start: u64) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "{spinner:.green} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} {msg} ETA {eta}",
    )
    .expect("valid template")
    .progress_chars("=> ");
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(4))
        .with_style(style)
        .with_position(start.min(total));
    bar.reset_eta();
    bar
}

fn bar_message(r: &StepReport) -> String {
    let mut m = format!(
        "loss {:.4} (xent {:.4} reg {:.4}) lr {:.3e} ep {:.2}",
        r.losses.total, r.losses.cross_entropy, r.losses.regularization, r.learning_rate, r.epoch
    );
    if let Some(ips) = r.images_per_sec {
        m.push_str(&format!(" {ips:.0} img/s"));
    }
    m
}

/// `step 120/1000 (12.0%) epoch 0.31 loss 2.1034 xent 2.0925 reg 0.0109
/// lr 1.000e-2 812 img/s elapsed 1m02s eta 7m35s`
pub fn plain_line(r: &StepReport, total: u64, elapsed: Duration, eta: Option<Duration>) -> String {
    let pct = if total > 0 {
        100.0 * r.step as f64 / total as f64
    } else {
        100.0
    };
    let mut line = format!(
        "step {}/{} ({pct:.1}%) epoch {:.2} loss {:.4} xent {:.4} reg {:.4} lr {:.3e}",
        r.step,
        total,
        r.epoch,
        r.losses.total,
        r.losses.cross_entropy,
        r.losses.regularization,
        r.learning_rate
    );
    if let Some(ips) = r.images_per_sec {
        line.push_str(&format!(" {ips:.1} img/s"));
    }
    line.push_str(&format!(" elapsed {}", format_duration(elapsed)));
    if let Some(eta) = eta {
        line.push_str(&format!(" eta {}", format_duration(eta)));
    }
    line
}

/// `1h02m03s`, `4m05s`, `12s`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}
