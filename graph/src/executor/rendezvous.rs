//! Rendezvous: where a `_Send` in one partition hands a tensor to the
//! `_Recv` of another, as TensorFlow's runtime does.
//!
//! A [`RendezvousKey`] names one transfer the way TensorFlow's
//! `Rendezvous::CreateKey` does, and prints in TensorFlow's string form
//! `send_device;incarnation;recv_device;tensor_name;frame:iter`, with the
//! incarnation as 16 hex digits, e.g.
//! `/job:worker/replica:0/task:0/device:CPU:0;0000000000000001;/job:ps/replica:0/task:1/device:CPU:0;edge_3_conv;0:0`.
//!
//! Each key is a FIFO queue: the n-th `send` of a key is taken by the n-th
//! receive, so a graph run repeatedly (one step after another) reuses its
//! keys. `send` never blocks. A receive either blocks with a deadline
//! ([`Rendezvous::recv`]) or registers a callback ([`Rendezvous::recv_async`])
//! that runs when the value is there: that is how the executor waits for
//! `_Recv` inputs without holding a compute thread.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use psflow_kernels::Tensor;

use crate::{Error, Result};

/// The name of one transfer (see the module docs for its string form).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RendezvousKey {
    pub send_device: String,
    /// Distinguishes restarts of the sending task (TF's device incarnation).
    pub send_device_incarnation: u64,
    pub recv_device: String,
    /// Unique per edge within a partitioned graph.
    pub tensor_name: String,
    /// (frame id, iteration id): `(0, 0)` outside loops, always here.
    pub frame_iter: (u64, u64),
}

impl RendezvousKey {
    pub fn new(
        send_device: impl Into<String>,
        send_device_incarnation: u64,
        recv_device: impl Into<String>,
        tensor_name: impl Into<String>,
    ) -> RendezvousKey {
        RendezvousKey {
            send_device: send_device.into(),
            send_device_incarnation,
            recv_device: recv_device.into(),
            tensor_name: tensor_name.into(),
            frame_iter: (0, 0),
        }
    }

    /// Parses TensorFlow's string form.
    pub fn parse(s: &str) -> Result<RendezvousKey> {
        let bad = |detail: &str| Error::Rendezvous {
            key: s.to_string(),
            detail: format!(
                "malformed rendezvous key ({detail}); expected \
                 send_device;incarnation;recv_device;tensor_name;frame:iter"
            ),
        };
        let parts: Vec<&str> = s.split(';').collect();
        let [send, inc, recv, name, fi] = parts[..] else {
            return Err(bad("it does not have 5 ';'-separated fields"));
        };
        let inc = u64::from_str_radix(inc, 16).map_err(|_| bad("incarnation is not hex"))?;
        let (f, i) = fi.split_once(':').ok_or_else(|| bad("no frame:iter"))?;
        let f = f.parse().map_err(|_| bad("bad frame id"))?;
        let i = i.parse().map_err(|_| bad("bad iteration id"))?;
        Ok(RendezvousKey {
            send_device: send.to_string(),
            send_device_incarnation: inc,
            recv_device: recv.to_string(),
            tensor_name: name.to_string(),
            frame_iter: (f, i),
        })
    }
}

impl fmt::Display for RendezvousKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{};{:016x};{};{};{}:{}",
            self.send_device,
            self.send_device_incarnation,
            self.recv_device,
            self.tensor_name,
            self.frame_iter.0,
            self.frame_iter.1
        )
    }
}

/// What a receive callback gets: the value, or why none will come.
pub type RecvDone = Box<dyn FnOnce(Result<Tensor>) + Send>;

/// A place where sends meet receives. Implementations: [`LocalRendezvous`]
/// (one process); the worker's remote rendezvous builds on it.
pub trait Rendezvous: Send + Sync {
    /// Hands `value` to the next receive of `key`. Never blocks.
    fn send(&self, key: &RendezvousKey, value: Tensor) -> Result<()>;

    /// Calls `done` with the next value sent under `key`: at once, on this
    /// thread, if one is queued; otherwise on the sending thread when it
    /// arrives. `done` must be quick (it runs under no lock, but on a
    /// sender's thread). Returns a ticket for [`Rendezvous::cancel`].
    fn recv_async(&self, key: &RendezvousKey, done: RecvDone) -> u64;

    /// Withdraws a pending [`Rendezvous::recv_async`]: true when it was
    /// still waiting (its callback will not run), false when it already ran.
    fn cancel(&self, key: &RendezvousKey, ticket: u64) -> bool;

    /// Blocks until a value of `key` arrives; past `deadline`, an error
    /// naming the key.
    fn recv(&self, key: &RendezvousKey, deadline: Instant) -> Result<Tensor> {
        let started = Instant::now();
        let (tx, rx) = mpsc::channel();
        let ticket = self.recv_async(
            key,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(r) => r,
            Err(_) => {
                if !self.cancel(key, ticket) {
                    // It arrived between the timeout and the cancel.
                    if let Ok(r) = rx.try_recv() {
                        return r;
                    }
                }
                Err(Error::RecvTimeout {
                    key: key.to_string(),
                    waited: started.elapsed(),
                })
            }
        }
    }
}

#[derive(Default)]
struct Queue {
    values: VecDeque<Tensor>,
    waiters: VecDeque<(u64, RecvDone)>,
}

#[derive(Default)]
struct Inner {
    queues: HashMap<RendezvousKey, Queue>,
    next_ticket: u64,
    aborted: Option<String>,
}

/// An in-process rendezvous: per key, a queue of values and a queue of
/// waiting receivers. Shared (in an `Arc`) by the sessions of the
/// partitions that talk to each other, in any threads.
#[derive(Default)]
pub struct LocalRendezvous {
    inner: Mutex<Inner>,
}

impl LocalRendezvous {
    pub fn new() -> LocalRendezvous {
        LocalRendezvous::default()
    }

    /// Fails every pending receive and every later send or receive with
    /// `reason` (a peer died, the step was cancelled). Permanent: make a
    /// new rendezvous for the next attempt.
    pub fn abort(&self, reason: impl Into<String>) {
        let reason = reason.into();
        let waiters: Vec<(RendezvousKey, RecvDone)> = {
            let mut inner = self.inner.lock().expect("rendezvous lock");
            inner.aborted.get_or_insert(reason.clone());
            inner
                .queues
                .drain()
                .flat_map(|(k, q)| q.waiters.into_iter().map(move |(_, w)| (k.clone(), w)))
                .collect()
        };
        for (key, done) in waiters {
            done(Err(aborted(&key, &reason)));
        }
    }

    /// Values sent but not yet received, over all keys (for tests and
    /// leak checks).
    pub fn queued(&self) -> usize {
        let inner = self.inner.lock().expect("rendezvous lock");
        inner.queues.values().map(|q| q.values.len()).sum()
    }
}

fn aborted(key: &RendezvousKey, reason: &str) -> Error {
    Error::Rendezvous {
        key: key.to_string(),
        detail: format!("the rendezvous was aborted: {reason}"),
    }
}

impl Rendezvous for LocalRendezvous {
    fn send(&self, key: &RendezvousKey, value: Tensor) -> Result<()> {
        let done = {
            let mut inner = self.inner.lock().expect("rendezvous lock");
            if let Some(reason) = &inner.aborted {
                return Err(aborted(key, reason));
            }
            let q = inner.queues.entry(key.clone()).or_default();
            match q.waiters.pop_front() {
                Some((_, done)) => {
                    if q.values.is_empty() && q.waiters.is_empty() {
                        inner.queues.remove(key);
                    }
                    done
                }
                None => {
                    q.values.push_back(value);
                    return Ok(());
                }
            }
        };
        done(Ok(value));
        Ok(())
    }

    fn recv_async(&self, key: &RendezvousKey, done: RecvDone) -> u64 {
        let (ticket, ready) = {
            let mut inner = self.inner.lock().expect("rendezvous lock");
            inner.next_ticket += 1;
            let ticket = inner.next_ticket;
            if let Some(reason) = inner.aborted.clone() {
                (ticket, Some(Err(aborted(key, &reason))))
            } else {
                let q = inner.queues.entry(key.clone()).or_default();
                match q.values.pop_front() {
                    Some(v) => {
                        if q.values.is_empty() && q.waiters.is_empty() {
                            inner.queues.remove(key);
                        }
                        (ticket, Some(Ok(v)))
                    }
                    None => {
                        q.waiters.push_back((ticket, done));
                        return ticket;
                    }
                }
            }
        };
        if let Some(r) = ready {
            done(r);
        }
        ticket
    }

    fn cancel(&self, key: &RendezvousKey, ticket: u64) -> bool {
        let mut inner = self.inner.lock().expect("rendezvous lock");
        let Some(q) = inner.queues.get_mut(key) else {
            return false;
        };
        let Some(at) = q.waiters.iter().position(|(t, _)| *t == ticket) else {
            return false;
        };
        q.waiters.remove(at);
        if q.values.is_empty() && q.waiters.is_empty() {
            inner.queues.remove(key);
        }
        true
    }
}

/// How long a run waits for one `_Recv` before failing, by default.
pub const DEFAULT_RECV_TIMEOUT: Duration = Duration::from_secs(120);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key(name: &str) -> RendezvousKey {
        RendezvousKey::new("/job:worker/task:0", 1, "/job:ps/task:0", name)
    }

    #[test]
    fn keys_print_and_parse_as_tensorflow() {
        let k = RendezvousKey::new(
            "/job:worker/replica:0/task:0/device:CPU:0",
            0x1f,
            "/job:ps/replica:0/task:1/device:CPU:0",
            "edge_3_conv",
        );
        let s = k.to_string();
        assert_eq!(
            s,
            "/job:worker/replica:0/task:0/device:CPU:0;000000000000001f;\
             /job:ps/replica:0/task:1/device:CPU:0;edge_3_conv;0:0"
        );
        assert_eq!(RendezvousKey::parse(&s).unwrap(), k);
        let e = RendezvousKey::parse("a;b;c").unwrap_err().to_string();
        assert!(e.contains("a;b;c") && e.contains("5"), "{e}");
    }

    #[test]
    fn values_queue_in_order_either_side_first() {
        let r = LocalRendezvous::new();
        r.send(&key("x"), Tensor::scalar(1f32)).unwrap();
        r.send(&key("x"), Tensor::scalar(2f32)).unwrap();
        let far = Instant::now() + Duration::from_secs(5);
        assert_eq!(r.recv(&key("x"), far).unwrap(), Tensor::scalar(1f32));
        assert_eq!(r.recv(&key("x"), far).unwrap(), Tensor::scalar(2f32));
        assert_eq!(r.queued(), 0);

        let r = Arc::new(LocalRendezvous::new());
        let r2 = r.clone();
        let t = std::thread::spawn(move || r2.recv(&key("y"), far));
        std::thread::sleep(Duration::from_millis(20));
        r.send(&key("y"), Tensor::scalar(3f32)).unwrap();
        assert_eq!(t.join().unwrap().unwrap(), Tensor::scalar(3f32));
    }

    #[test]
    fn a_missing_value_times_out_naming_the_key_and_is_not_lost_later() {
        let r = LocalRendezvous::new();
        let soon = Instant::now() + Duration::from_millis(30);
        let e = r.recv(&key("late"), soon).unwrap_err().to_string();
        assert!(e.contains("late") && e.contains("/job:ps/task:0"), "{e}");
        // The timed-out receive was withdrawn: a later value waits for the
        // next receive instead of vanishing into it.
        r.send(&key("late"), Tensor::scalar(4f32)).unwrap();
        assert_eq!(r.queued(), 1);
        let far = Instant::now() + Duration::from_secs(5);
        assert_eq!(r.recv(&key("late"), far).unwrap(), Tensor::scalar(4f32));
    }

    #[test]
    fn abort_fails_waiting_and_later_receives() {
        let r = Arc::new(LocalRendezvous::new());
        let r2 = r.clone();
        let far = Instant::now() + Duration::from_secs(5);
        let t = std::thread::spawn(move || r2.recv(&key("z"), far));
        std::thread::sleep(Duration::from_millis(20));
        r.abort("worker 1 died");
        let e = t.join().unwrap().unwrap_err().to_string();
        assert!(e.contains("worker 1 died") && e.contains(";z;"), "{e}");
        assert!(r.send(&key("z"), Tensor::scalar(0f32)).is_err());
        assert!(r.recv(&key("z"), far).is_err());
    }
}
