//! Per-node timings of one [`Session::run_profiled`](super::Session::run_profiled):
//! where the time of a step goes.
//!
//! Each computed node gets its kernel's wall interval (start and end since
//! the run began) and its **self time**. The two differ because rayon's
//! work stealing nests: a kernel that waits in a parallel join may run
//! another node's kernel on the same thread, inside its own interval. Self
//! time is the interval minus the nested nodes' intervals on that thread, so
//! self times never count a moment twice on one thread and their sum is the
//! kernel work of the step (summed over threads; it can exceed the step's
//! wall time when nodes run side by side).
//!
//! Collecting costs two clock reads and a few small allocations per node;
//! a plain [`Session::run`](super::Session::run) does none of it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One computed node of a profiled run.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeTiming {
    pub node: String,
    pub op: String,
    /// Shapes of the kernel's outputs, in port order.
    pub output_shapes: Vec<Vec<usize>>,
    /// When the kernel started and ended, since the run began.
    pub start: Duration,
    pub end: Duration,
    /// The interval less the nodes that ran nested inside it on the same
    /// thread (see the module docs).
    pub self_time: Duration,
    /// The rayon worker that ran it (None: a thread outside the pool).
    pub thread: Option<usize>,
}

impl NodeTiming {
    /// The kernel's wall interval, nested nodes included.
    pub fn wall(&self) -> Duration {
        self.end.saturating_sub(self.start)
    }
}

/// Totals of one op type.
#[derive(Debug, Clone, PartialEq)]
pub struct OpTotal {
    pub op: String,
    /// Nodes of this type that computed.
    pub count: usize,
    /// Sum of their self times.
    pub total: Duration,
}

/// How a profiled run schedules its nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Schedule {
    /// As [`Session::run`](super::Session::run): ready nodes side by side
    /// on the rayon pool. The step's real shape, but a kernel waiting in a
    /// parallel join for a thread busy with another node counts the wait
    /// as its own time.
    #[default]
    Parallel,
    /// One node at a time in plan order, each kernel with all threads to
    /// itself: clean per-kernel times that add up to the step.
    Serial,
}

impl Schedule {
    pub fn name(self) -> &'static str {
        match self {
            Schedule::Parallel => "parallel",
            Schedule::Serial => "serial",
        }
    }
}

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Schedule, String> {
        match s {
            "parallel" => Ok(Schedule::Parallel),
            "serial" => Ok(Schedule::Serial),
            _ => Err(format!("unknown schedule {s:?}: use parallel or serial")),
        }
    }
}

/// The timings of one run, in the order the kernels finished.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// The whole run: plan lookup, feed checks, scheduling and kernels.
    pub wall: Duration,
    pub schedule: Schedule,
    pub nodes: Vec<NodeTiming>,
}

impl Profile {
    /// Sum of the nodes' self times: the kernel work of the run, over all
    /// threads.
    pub fn kernel_total(&self) -> Duration {
        self.nodes.iter().map(|n| n.self_time).sum()
    }

    /// The time at least one kernel was running (the union of the nodes'
    /// intervals), at most [`wall`](Self::wall). `wall - busy` is what the
    /// executor spent outside kernels: planning, feed checks, scheduling,
    /// waits.
    pub fn busy(&self) -> Duration {
        let mut spans: Vec<(Duration, Duration)> =
            self.nodes.iter().map(|n| (n.start, n.end)).collect();
        spans.sort();
        let mut busy = Duration::ZERO;
        let mut current: Option<(Duration, Duration)> = None;
        for (s, e) in spans {
            match current {
                Some((cs, ce)) if s <= ce => current = Some((cs, ce.max(e))),
                Some((cs, ce)) => {
                    busy += ce - cs;
                    current = Some((s, e));
                }
                None => current = Some((s, e)),
            }
        }
        if let Some((cs, ce)) = current {
            busy += ce - cs;
        }
        busy
    }

    /// Totals per op type, largest first (ties by name).
    pub fn by_op(&self) -> Vec<OpTotal> {
        let mut map: HashMap<&str, (usize, Duration)> = HashMap::new();
        for n in &self.nodes {
            let e = map.entry(n.op.as_str()).or_default();
            e.0 += 1;
            e.1 += n.self_time;
        }
        let mut out: Vec<OpTotal> = map
            .into_iter()
            .map(|(op, (count, total))| OpTotal {
                op: op.to_string(),
                count,
                total,
            })
            .collect();
        out.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.op.cmp(&b.op)));
        out
    }

    /// The `n` nodes with the largest self time, largest first.
    pub fn top_nodes(&self, n: usize) -> Vec<&NodeTiming> {
        let mut all: Vec<&NodeTiming> = self.nodes.iter().collect();
        all.sort_by(|a, b| {
            b.self_time
                .cmp(&a.self_time)
                .then_with(|| a.node.cmp(&b.node))
        });
        all.truncate(n);
        all
    }
}

/// Per-thread stack of the kernels running on this thread, for self times.
struct Frame {
    /// Wall time of the nodes that ran nested inside this one.
    nested: Duration,
}

thread_local! {
    static STACK: RefCell<Vec<Frame>> = const { RefCell::new(Vec::new()) };
}

/// Times one kernel call: [`Timer::start`] before, [`Timer::finish`] after,
/// on the same thread.
pub(crate) struct Timer {
    start: Instant,
}

impl Timer {
    pub fn start() -> Timer {
        STACK.with(|s| {
            s.borrow_mut().push(Frame {
                nested: Duration::ZERO,
            })
        });
        Timer {
            start: Instant::now(),
        }
    }

    /// (start, end, self time) of the kernel, start and end relative to
    /// `origin`.
    pub fn finish(self, origin: Instant) -> (Duration, Duration, Duration) {
        let end = Instant::now();
        let wall = end - self.start;
        let nested = STACK.with(|s| {
            let mut s = s.borrow_mut();
            let frame = s.pop().expect("a timer frame per started kernel");
            if let Some(parent) = s.last_mut() {
                parent.nested += wall;
            }
            frame.nested
        });
        (
            self.start.saturating_duration_since(origin),
            end.saturating_duration_since(origin),
            wall.saturating_sub(nested),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(op: &str, start_ms: u64, end_ms: u64, self_ms: u64) -> NodeTiming {
        NodeTiming {
            node: format!("{op}_{start_ms}"),
            op: op.into(),
            output_shapes: vec![],
            start: Duration::from_millis(start_ms),
            end: Duration::from_millis(end_ms),
            self_time: Duration::from_millis(self_ms),
            thread: Some(0),
        }
    }

    #[test]
    fn busy_is_the_union_of_intervals() {
        let p = Profile {
            wall: Duration::from_millis(20),
            schedule: Schedule::Parallel,
            nodes: vec![
                timing("A", 0, 4, 4),
                timing("B", 2, 6, 4),
                timing("C", 8, 9, 1),
                timing("D", 8, 10, 2),
            ],
        };
        assert_eq!(p.busy(), Duration::from_millis(8));
        assert_eq!(p.kernel_total(), Duration::from_millis(11));
        let ops = p.by_op();
        assert_eq!(ops[0].op, "A");
        assert_eq!(ops.iter().map(|o| o.count).sum::<usize>(), 4);
        assert_eq!(p.top_nodes(2).len(), 2);
        assert_eq!(p.top_nodes(2)[1].op, "B");
    }

    #[test]
    fn nested_timers_subtract_the_inner_interval() {
        let origin = Instant::now();
        let outer = Timer::start();
        std::thread::sleep(Duration::from_millis(2));
        let inner = Timer::start();
        std::thread::sleep(Duration::from_millis(10));
        let (is, ie, iself) = inner.finish(origin);
        let (os, oe, oself) = outer.finish(origin);
        assert_eq!(iself, ie - is);
        assert!(os <= is && ie <= oe);
        assert_eq!(oself, (oe - os) - (ie - is));
        assert!(oself < Duration::from_millis(10), "{oself:?}");
        STACK.with(|s| assert!(s.borrow().is_empty()));
    }
}
