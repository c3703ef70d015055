//! Host→device copies on a second stream, overlapped with compute.
//!
//! Every kernel and every other copy runs on the device's compute stream
//! ([`CudaDevice::stream`]); [`CudaDevice::prefetch`] queues host→device
//! copies of f32 tensors on the device's *copy stream*, so the next batch
//! crosses PCIe while this step's kernels run. The copies go through the
//! pinned staging buffers of [`super::staging`] (a host memcpy into a
//! write-combined pinned buffer, then an asynchronous copy) into device
//! buffers owned by the prefetcher: a small ring per size class, never
//! the compute pool's.
//!
//! # Usage (a training loop)
//!
//! ```no_run
//! # use psflow_kernels::cuda::CudaDevice;
//! # use psflow_kernels::Tensor;
//! # fn run_step(_: &CudaDevice, _: &[psflow_kernels::cuda::DeviceTensor]) {}
//! # fn batch(step: usize) -> Tensor { Tensor::new(vec![1], vec![step as f32]).unwrap() }
//! # fn main() -> psflow_kernels::Result<()> {
//! let dev = CudaDevice::new(0)?;
//! let steps = 100;
//! // Batch 0's copy is queued on the copy stream.
//! let mut next = dev.prefetch(&[&batch(0)])?;
//! for step in 0..steps {
//!     // The compute stream waits for this batch's copy (the host does not).
//!     let inputs = next.take()?;
//!     // Queue the copy of the following batch before this step's kernels:
//!     // it runs on the copy stream while they do.
//!     if step + 1 < steps {
//!         next = dev.prefetch(&[&batch(step + 1)])?;
//!     }
//!     run_step(&dev, &inputs);
//!     // Dropping the inputs records, on the compute stream, that this
//!     // step's kernels are the last users of their buffers.
//!     drop(inputs);
//! }
//! # Ok(()) }
//! ```
//!
//! With this order two buffers per input are in use at a time (the batch
//! being computed on and the one being copied): the second round of the
//! loop allocates nothing, and [`CudaDevice::prefetch_stats`] shows it.
//!
//! # Hazards between the two streams, and what closes each
//!
//! 1. **The copy overwrites a buffer compute still reads** (a buffer a
//!    dropped `DeviceTensor` gave back while its kernels are still queued).
//!    Closed by ownership and an event: prefetch buffers never enter the
//!    compute pool, and dropping a [`DeviceTensor`] that holds one records
//!    the slot's `released` event on the compute stream (after every
//!    kernel queued so far, which includes every user of the buffer). The
//!    copy stream waits on that event (`cuStreamWaitEvent`) before its next
//!    copy into the slot. The ring prefers a slot whose `released` event
//!    has completed; when none has, it reuses the one released first, and
//!    that wait is counted ([`PrefetchStats::copy_waits`]): the copy stream
//!    then starts the copy the moment compute lets go of the buffer.
//! 2. **Compute reads the buffer before the copy wrote it.** Each copy
//!    records the slot's `ready` event on the copy stream;
//!    [`Prefetched::take`] makes the compute stream wait on it before
//!    handing out the tensors, so every kernel queued afterwards sees the
//!    data. The tensors cannot be reached without `take`.
//! 3. **The host rewrites a pinned staging buffer whose copy has not run.**
//!    Closed as in [`super::staging`]: each pinned buffer's `done` event is
//!    recorded after its copy (here on the copy stream) and a buffer is only
//!    handed out again once that event has completed. Uploads on the
//!    compute stream and prefetches share the buffers safely for that
//!    reason: the event, not the stream, says when a buffer is free.
//! 4. **A prefetch dropped without `take`** (an error, an early exit): its
//!    copies may still be running, so its slots go back with `released`
//!    recorded on the copy stream, after those copies.
//! 5. **Freeing a slot** ([`CudaDevice::trim_pool`], or dropping the
//!    device): the copy stream (the stream the buffer was allocated on and
//!    is freed on, stream-ordered) waits on `released` first, so the free
//!    is ordered after the last kernel that read the buffer.
//! 6. **First use of a new buffer**: it is allocated on the copy stream
//!    (stream-ordered allocation); the compute stream's wait on `ready`
//!    (hazard 2) orders every use after the allocation too.
//!
//! cudarc's own per-buffer read/write events are also active (the device's
//! streams come from `new_stream`, which puts the context in cudarc's
//! multi-stream mode), so cudarc adds waits of its own around these copies;
//! the events above are this module's guarantee, do not depend on cudarc's
//! tracking (which CUDA-graph capture turns off), and are what is counted.
//!
//! The slot choice ([`SlotRing`]) is plain data, generic over the slot and
//! unit-tested without a driver, like the pool's [`super::pool::FreeLists`].
//!
//! Status: compiled, the bookkeeping unit-tested; not yet run on a GPU
//! (kernels/tests/cuda_prefetch.rs is written for one).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaEvent, CudaSlice, CudaStream};

use super::context::{driver_err, CudaDevice, DeviceTensor};
use super::pool::{size_class, PoolStats, PooledBuf};
use super::staging::Direction;
use crate::{Error, Result, Tensor};

/// What the prefetcher of one device has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefetchStats {
    /// Calls of [`CudaDevice::prefetch`].
    pub prefetches: u64,
    /// Tensors copied.
    pub tensors: u64,
    /// Bytes copied host→device on the copy stream.
    pub bytes: u64,
    /// Copies queued behind compute: the slot's `released` event had not
    /// completed when the copy was queued, so the copy stream waited for
    /// the kernels that last read the buffer. Every reuse waits on the
    /// event; only these had work to wait for (as far as the host could
    /// tell when it queued the copy).
    pub copy_waits: u64,
    /// The ring's device buffers: `misses` are allocations from the
    /// driver, `hits` reuses, `bytes_held` what the ring owns.
    pub buffers: PoolStats,
}

/// What [`SlotRing::pick`] decided for one copy.
#[derive(Debug, PartialEq, Eq)]
pub enum Pick<S> {
    /// A free slot whose last use has finished: copy into it now.
    Ready(S),
    /// No free slot has finished its last use; this one (released first)
    /// will: the copy stream must wait for its release before the copy.
    AfterRelease(S),
    /// No free slot of the class: allocate one of `class` elements and
    /// report it with [`SlotRing::allocated`].
    Allocate,
}

/// Free slots by size class, oldest release first, with the statistics.
/// A slot handed out is absent from the ring until given back, so a slot
/// is never handed out twice; the ring grows only when every slot of the
/// class is handed out, so it holds as many slots per class as were ever
/// handed out at once (two per input with double buffering).
#[derive(Debug)]
pub struct SlotRing<S> {
    elem_bytes: usize,
    free: HashMap<usize, VecDeque<S>>,
    stats: PoolStats,
    waits: u64,
}

impl<S> SlotRing<S> {
    pub fn new(elem_bytes: usize) -> SlotRing<S> {
        SlotRing {
            elem_bytes,
            free: HashMap::new(),
            stats: PoolStats::default(),
            waits: 0,
        }
    }

    /// A slot of `class` for the next copy: the oldest free one whose
    /// release `released` says has completed; else the oldest free one
    /// (released first, so the first to finish), counted as a wait; else
    /// [`Pick::Allocate`] (counted as a miss).
    pub fn pick(&mut self, class: usize, released: impl Fn(&S) -> bool) -> Pick<S> {
        let list = self.free.get_mut(&class);
        let picked = list.and_then(|l| match l.iter().position(&released) {
            Some(i) => l.remove(i).map(Pick::Ready),
            None => l.pop_front().map(Pick::AfterRelease),
        });
        match picked {
            Some(p) => {
                self.stats.hits += 1;
                self.stats.bytes_in_use += class * self.elem_bytes;
                if matches!(p, Pick::AfterRelease(_)) {
                    self.waits += 1;
                }
                p
            }
            None => {
                self.stats.misses += 1;
                Pick::Allocate
            }
        }
    }

    /// Records a new slot of `class` elements, handed out after
    /// [`Pick::Allocate`].
    pub fn allocated(&mut self, class: usize) {
        let bytes = class * self.elem_bytes;
        self.stats.bytes_held += bytes;
        self.stats.bytes_in_use += bytes;
    }

    /// A slot of `class` comes back (its release just recorded).
    pub fn give(&mut self, class: usize, s: S) {
        self.stats.bytes_in_use -= class * self.elem_bytes;
        self.free.entry(class).or_default().push_back(s);
    }

    /// Takes every free slot out (to be freed).
    pub fn trim(&mut self) -> Vec<S> {
        let mut out = Vec::new();
        for (class, list) in self.free.drain() {
            self.stats.bytes_held -= class * self.elem_bytes * list.len();
            self.stats.released += list.len() as u64;
            out.extend(list);
        }
        out
    }

    /// The buffers' statistics.
    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    /// Slots handed out by [`Pick::AfterRelease`].
    pub fn waits(&self) -> u64 {
        self.waits
    }
}

/// One device buffer of the ring and its two events.
#[derive(Debug)]
struct Slot {
    buf: CudaSlice<f32>,
    events: SlotEvents,
}

#[derive(Debug)]
struct SlotEvents {
    /// Recorded on the copy stream after the copy into the buffer.
    ready: CudaEvent,
    /// Recorded when the buffer's last user let go of it: on the compute
    /// stream when its `DeviceTensor` dropped, on the copy stream when its
    /// [`Prefetched`] dropped untaken. Never recorded: complete.
    released: CudaEvent,
}

#[derive(Debug)]
struct RingState {
    ring: SlotRing<Slot>,
    prefetches: u64,
    tensors: u64,
    bytes: u64,
}

/// The prefetcher of one device: its two streams and its ring.
#[derive(Debug)]
pub(crate) struct Prefetcher {
    compute: Arc<CudaStream>,
    copy: Arc<CudaStream>,
    state: Mutex<RingState>,
}

impl Prefetcher {
    pub(crate) fn new(compute: Arc<CudaStream>, copy: Arc<CudaStream>) -> Arc<Prefetcher> {
        Arc::new(Prefetcher {
            compute,
            copy,
            state: Mutex::new(RingState {
                ring: SlotRing::new(std::mem::size_of::<f32>()),
                prefetches: 0,
                tensors: 0,
                bytes: 0,
            }),
        })
    }

    pub(crate) fn stats(&self) -> PrefetchStats {
        let s = self.state.lock().expect("prefetch lock");
        PrefetchStats {
            prefetches: s.prefetches,
            tensors: s.tensors,
            bytes: s.bytes,
            copy_waits: s.ring.waits(),
            buffers: s.ring.stats(),
        }
    }

    /// Frees every free slot, each after its release (hazard 5).
    pub(crate) fn trim(&self) {
        let freed = match self.state.lock() {
            Ok(mut s) => s.ring.trim(),
            Err(_) => return,
        };
        for slot in freed {
            let ctx = self.copy.context();
            ctx.record_err(self.copy.wait(&slot.events.released));
            // The buffer is freed on the copy stream (it was allocated
            // there), after the wait just queued.
            drop(slot);
        }
    }

    /// A slot of `class` for a copy queued next on the copy stream, which
    /// is made to wait for the slot's release (hazard 1).
    fn slot(&self, class: usize) -> Result<Slot> {
        let picked = self
            .state
            .lock()
            .expect("prefetch lock")
            .ring
            .pick(class, |s| s.events.released.is_complete());
        let slot = match picked {
            Pick::Ready(s) | Pick::AfterRelease(s) => s,
            Pick::Allocate => {
                let ctx = self.copy.context();
                // SAFETY: the contents are undefined until the copy into
                // the slot (queued next) writes the part a tensor reads.
                let buf = unsafe { self.copy.alloc::<f32>(class) }
                    .map_err(driver_err("cuMemAllocAsync"))?;
                let events = SlotEvents {
                    ready: ctx.new_event(None).map_err(driver_err("cuEventCreate"))?,
                    released: ctx.new_event(None).map_err(driver_err("cuEventCreate"))?,
                };
                self.state
                    .lock()
                    .expect("prefetch lock")
                    .ring
                    .allocated(class);
                return Ok(Slot { buf, events });
            }
        };
        // Ready slots wait too: their event has completed, so the wait
        // costs nothing, and no decision rests on a racy query.
        if let Err(e) = self.copy.wait(&slot.events.released) {
            self.give(class, slot);
            return Err(driver_err("cuStreamWaitEvent")(e));
        }
        Ok(slot)
    }

    fn give(&self, class: usize, slot: Slot) {
        if let Ok(mut s) = self.state.lock() {
            s.ring.give(class, slot);
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // The device is gone and no tensor holds a slot (each holds the
        // prefetcher): free the ring's buffers, each after its release.
        self.trim();
    }
}

/// Carries a prefetched buffer's events back to the ring when the
/// [`PooledBuf`] holding it drops.
#[derive(Debug)]
pub(crate) struct RingReturn {
    prefetcher: Arc<Prefetcher>,
    events: Option<SlotEvents>,
}

impl RingReturn {
    /// Records the release on the compute stream (after every kernel queued
    /// so far, the buffer's last users among them) and gives the slot back.
    pub(crate) fn give_back(&mut self, class: usize, buf: CudaSlice<f32>) {
        let Some(events) = self.events.take() else {
            return;
        };
        let p = &self.prefetcher;
        if let Err(e) = events.released.record(&p.compute) {
            // Without the release event the copy stream could overwrite
            // the buffer under a queued kernel: the host waits for compute
            // instead, after which the buffer is free.
            let ctx = p.compute.context();
            ctx.record_err(Err::<(), _>(e));
            ctx.record_err(p.compute.synchronize());
        }
        p.give(class, Slot { buf, events });
    }
}

/// Tensors being copied to the device on the copy stream; [`Prefetched::take`]
/// gives them, ready to use on the compute stream. Dropped untaken, its
/// buffers go back to the ring (hazard 4).
#[derive(Debug)]
pub struct Prefetched {
    prefetcher: Arc<Prefetcher>,
    items: Vec<Item>,
    taken: bool,
}

#[derive(Debug)]
struct Item {
    shape: Vec<usize>,
    class: usize,
    slot: Option<Slot>,
}

impl Prefetched {
    /// How many tensors (none once taken).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The tensors' shapes, in the order given to [`CudaDevice::prefetch`].
    pub fn shapes(&self) -> impl Iterator<Item = &[usize]> {
        self.items.iter().map(|i| i.shape.as_slice())
    }

    /// The tensors, in the order given, on the device: the compute stream
    /// waits for their copies (hazard 2; the host does not wait), so any
    /// kernel queued afterwards may read them. Dropping one records its
    /// release on the compute stream and returns its buffer to the ring.
    ///
    /// Takes by `&mut` so a loop can hold the next batch in one variable
    /// (see the module doc); a second call is an error.
    pub fn take(&mut self) -> Result<Vec<DeviceTensor>> {
        if self.taken {
            return Err(Error::InvalidArgument {
                op: "prefetch",
                detail: "these prefetched tensors were already taken; prefetch the batch again"
                    .into(),
            });
        }
        let p = self.prefetcher.clone();
        for item in &self.items {
            let slot = item.slot.as_ref().expect("present until taken");
            p.compute
                .wait(&slot.events.ready)
                .map_err(driver_err("cuStreamWaitEvent"))?;
        }
        self.taken = true;
        Ok(std::mem::take(&mut self.items)
            .into_iter()
            .map(|mut item| {
                let Slot { buf, events } = item.slot.take().expect("present until taken");
                let ret = RingReturn {
                    prefetcher: p.clone(),
                    events: Some(events),
                };
                DeviceTensor::from_buf(item.shape, PooledBuf::prefetched(buf, item.class, ret))
            })
            .collect())
    }
}

impl Drop for Prefetched {
    fn drop(&mut self) {
        // Not taken (hazard 4): the copies may still run; the slots are
        // released after them, on the copy stream.
        let p = &self.prefetcher;
        for item in &mut self.items {
            if let Some(slot) = item.slot.take() {
                p.copy
                    .context()
                    .record_err(slot.events.released.record(&p.copy));
                p.give(item.class, slot);
            }
        }
    }
}

impl CudaDevice {
    /// Queues copies of f32 host tensors to the device on the copy stream,
    /// through pinned staging buffers, into the prefetcher's own device
    /// buffers, and returns at once (after the host memcpy into pinned
    /// memory). [`Prefetched::take`] hands them to the compute stream.
    /// A tensor of another dtype is refused before anything is queued.
    pub fn prefetch(&self, tensors: &[&Tensor]) -> Result<Prefetched> {
        let values = tensors
            .iter()
            .map(|t| t.f32s("prefetch"))
            .collect::<Result<Vec<_>>>()?;
        let p = self.prefetcher();
        let copy = self.copy_stream();
        let mut out = Prefetched {
            prefetcher: p.clone(),
            items: Vec::with_capacity(tensors.len()),
            taken: false,
        };
        let mut bytes = 0u64;
        for (t, values) in tensors.iter().zip(values) {
            let n = values.len();
            let class = size_class(n.max(1));
            // Pushed before the copy is queued: on an error below, dropping
            // `out` gives the slot back with its release after the copy
            // stream's work (hazard 4).
            out.items.push(Item {
                shape: t.shape().to_vec(),
                class,
                slot: Some(p.slot(class)?),
            });
            let slot = out
                .items
                .last_mut()
                .and_then(|i| i.slot.as_mut())
                .expect("just pushed");
            if n > 0 {
                let (pclass, mut pinned) = self.staging().take(self.context(), Direction::Up, n)?;
                let copied = (|| {
                    let host = pinned
                        .host
                        .as_mut_slice()
                        .map_err(driver_err("cuEventSynchronize"))?;
                    host[..n].copy_from_slice(values);
                    let src: &[f32] = &host[..n];
                    let mut dst = slot.buf.slice_mut(0..n);
                    // Pinned memory given as a plain slice: queued without
                    // waiting; `done` keeps it from being rewritten until
                    // the copy has run (hazard 3).
                    copy.memcpy_htod(src, &mut dst)
                        .map_err(driver_err("cuMemcpyHtoDAsync"))?;
                    pinned
                        .done
                        .record(copy)
                        .map_err(driver_err("cuEventRecord"))
                })();
                self.staging().give(Direction::Up, pclass, pinned);
                copied?;
            }
            slot.events
                .ready
                .record(copy)
                .map_err(driver_err("cuEventRecord"))?;
            bytes += std::mem::size_of_val(values) as u64;
        }
        let mut s = p.state.lock().expect("prefetch lock");
        s.prefetches += 1;
        s.tensors += tensors.len() as u64;
        s.bytes += bytes;
        drop(s);
        Ok(out)
    }

    /// What the prefetcher has copied, waited for and allocated.
    pub fn prefetch_stats(&self) -> PrefetchStats {
        self.prefetcher().stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetched_tensors_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Prefetched>();
        send_sync::<DeviceTensor>();
    }

    /// A slot in a simulated device: its id and the time its release
    /// completes (`None`: never used, free).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Sim {
        id: u32,
        released_at: Option<u64>,
    }

    fn done(now: u64) -> impl Fn(&Sim) -> bool {
        move |s| s.released_at.is_none_or(|t| t <= now)
    }

    /// The training loop of the module doc, one input, ten steps: two
    /// slots serve every step; a copy waits exactly when the device is
    /// still using the slot it reuses.
    #[test]
    fn double_buffering_needs_two_slots_and_counts_waits() {
        let mut ring: SlotRing<Sim> = SlotRing::new(4);
        let class = size_class(3 * 32 * 32 * 8);
        let mut next_id = 0;
        let mut get = |ring: &mut SlotRing<Sim>, now: u64| match ring.pick(class, done(now)) {
            Pick::Allocate => {
                ring.allocated(class);
                next_id += 1;
                let fresh = Sim {
                    id: next_id,
                    released_at: None,
                };
                (fresh, false)
            }
            Pick::Ready(s) => (s, false),
            Pick::AfterRelease(s) => {
                assert!(s.released_at.unwrap() > now, "a wait for a done slot");
                (s, true)
            }
        };
        // The device finishes step k at time 10·(k+1). The host queues
        // steps 0–4 at times 0–4 (far ahead of the device), steps 5–9 just
        // after the device finished the step before.
        let (mut next, _) = get(&mut ring, 0);
        let mut waited_at = Vec::new();
        for step in 0..10u64 {
            let now = if step < 5 { step } else { 10 * step + 5 };
            let current = next;
            let (n, waited) = get(&mut ring, now);
            next = n;
            assert_ne!(current.id, next.id, "a slot handed out twice");
            if waited {
                waited_at.push(step);
            }
            let used = Sim {
                released_at: Some(10 * (step + 1)),
                ..current
            };
            ring.give(class, used);
        }
        ring.give(class, next);
        let s = ring.stats();
        assert_eq!(s.misses, 2, "double buffering allocates two slots");
        assert_eq!(s.hits, 9);
        assert_eq!(s.bytes_held, 2 * class * 4);
        assert_eq!(s.bytes_in_use, 0);
        // Host ahead: steps 1–4 reuse the slot of the step before, still
        // being read. Host behind: nothing to wait for.
        assert_eq!(waited_at, [1, 2, 3, 4]);
        assert_eq!(ring.waits(), 4);
    }

    #[test]
    fn a_finished_slot_is_preferred_to_one_released_earlier() {
        let mut ring: SlotRing<Sim> = SlotRing::new(1);
        for _ in 0..3 {
            ring.allocated(64);
        }
        let slot = |id, t| Sim {
            id,
            released_at: Some(t),
        };
        ring.give(64, slot(1, 50));
        ring.give(64, slot(2, 5));
        ring.give(64, slot(3, 7));
        // At time 10, 2 and 3 have finished: the oldest of them.
        assert_eq!(ring.pick(64, done(10)), Pick::Ready(slot(2, 5)));
        assert_eq!(ring.pick(64, done(10)), Pick::Ready(slot(3, 7)));
        // Only 1 is left, still in use: reused after its release.
        assert_eq!(ring.pick(64, done(10)), Pick::AfterRelease(slot(1, 50)));
        assert_eq!(ring.pick(64, done(10)), Pick::Allocate);
        assert_eq!(ring.waits(), 1);
        // Classes do not mix.
        ring.give(64, slot(1, 0));
        assert_eq!(ring.pick(80, done(10)), Pick::Allocate);
        let s = ring.stats();
        assert_eq!((s.hits, s.misses), (3, 2));
    }

    /// Random interleavings of prefetch, take-and-drop and device progress
    /// on a simulated clock: a slot is never handed out while handed out,
    /// a reuse waits exactly when the slot's last user has not finished,
    /// and the ring never holds more slots than were out at once.
    #[test]
    fn random_loops_never_hand_out_a_busy_slot() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..200 {
            let mut ring: SlotRing<Sim> = SlotRing::new(4);
            let classes = [64usize, 80, 4096];
            let mut out: Vec<(usize, Sim)> = Vec::new();
            let (mut now, mut queued_until, mut next_id, mut most_out) = (0u64, 0u64, 0u32, 0);
            let mut slots = HashMap::<usize, usize>::new();
            let mut peak = HashMap::<usize, usize>::new();
            for _ in 0..300 {
                match rng.random_range(0..3) {
                    0 => {
                        let class = classes[rng.random_range(0..classes.len())];
                        let s = match ring.pick(class, done(now)) {
                            Pick::Allocate => {
                                ring.allocated(class);
                                *slots.entry(class).or_default() += 1;
                                next_id += 1;
                                Sim {
                                    id: next_id,
                                    released_at: None,
                                }
                            }
                            Pick::Ready(s) => {
                                assert!(done(now)(&s));
                                s
                            }
                            Pick::AfterRelease(s) => {
                                assert!(!done(now)(&s), "waited for a finished slot");
                                s
                            }
                        };
                        assert!(
                            out.iter().all(|(_, o)| o.id != s.id),
                            "slot {} handed out twice",
                            s.id
                        );
                        out.push((class, s));
                        let in_class = out.iter().filter(|(c, _)| *c == class).count();
                        let p = peak.entry(class).or_default();
                        *p = (*p).max(in_class);
                        most_out = most_out.max(out.len());
                    }
                    1 if !out.is_empty() => {
                        // A step used it: its release completes when the
                        // device reaches the work queued so far.
                        let (class, s) = out.remove(rng.random_range(0..out.len()));
                        queued_until += rng.random_range(1..10);
                        ring.give(
                            class,
                            Sim {
                                released_at: Some(queued_until),
                                ..s
                            },
                        );
                    }
                    _ => now = (now + rng.random_range(0..8)).min(queued_until),
                }
            }
            for class in classes {
                assert_eq!(
                    slots.get(&class).copied().unwrap_or(0),
                    peak.get(&class).copied().unwrap_or(0),
                    "class {class}: more slots than were ever out at once"
                );
            }
            let held: usize = slots.iter().map(|(c, n)| c * n * 4).sum();
            assert_eq!(ring.stats().bytes_held, held);
            let in_use: usize = out.iter().map(|(c, _)| c * 4).sum();
            assert_eq!(ring.stats().bytes_in_use, in_use);
            assert!(most_out >= out.len());
            for (class, s) in out.drain(..) {
                ring.give(class, s);
            }
            let freed = ring.trim();
            assert_eq!(freed.len(), slots.values().sum::<usize>());
            assert_eq!(ring.stats().bytes_held, 0);
        }
    }
}
