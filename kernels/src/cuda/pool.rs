//! The device memory pool: buffers are taken from size-class free lists
//! and given back when a [`PooledBuf`] (and so a `DeviceTensor`) drops, so
//! a training step that repeats the shapes of the step before allocates
//! nothing from the driver.
//!
//! One pool belongs to one device and its compute stream. Giving a buffer
//! back needs no synchronization: every kernel and copy that used it was
//! queued on that stream before the buffer can be taken again, so the
//! stream runs them first. The pool is never used by the copy stream: the
//! prefetcher ([`super::prefetch`]) writes into device buffers of its own,
//! each with events between the two streams, which a [`PooledBuf`] also
//! carries back to their owner on drop.
//!
//! The bookkeeping — size classes ([`size_class`]) and free lists with their
//! statistics ([`FreeLists`]) — is plain data, generic over the buffer, and
//! unit-tested here without a driver; the pinned host staging buffers
//! ([`super::staging`]) use the same lists.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaSlice, CudaStream, LaunchArgs, PushKernelArg};

use super::context::driver_err;
use super::prefetch::RingReturn;
use crate::Result;

/// The smallest class, in elements (256 bytes of f32).
pub const MIN_CLASS: usize = 64;

/// The size class of a request for `len` elements: [`MIN_CLASS`] for small
/// requests, else `len` rounded up to a quarter of its power of two, so
/// four classes per doubling and less than 25 % of a buffer is ever unused.
pub fn size_class(len: usize) -> usize {
    if len <= MIN_CLASS {
        return MIN_CLASS;
    }
    // bits of (len - 1): len lies in (2^(bits-1), 2^bits].
    let bits = usize::BITS - (len - 1).leading_zeros();
    let step = 1usize << (bits - 3);
    len.div_ceil(step) * step
}

/// What a pool has done, in bytes and counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes of every buffer the pool allocated and has not released (in
    /// use or free).
    pub bytes_held: usize,
    /// Bytes of the buffers handed out and not yet given back.
    pub bytes_in_use: usize,
    /// Requests served from a free list.
    pub hits: u64,
    /// Requests that needed a new buffer (an allocation from the driver).
    pub misses: u64,
    /// Buffers released to the driver by [`FreeLists::trim`].
    pub released: u64,
}

impl PoolStats {
    /// Bytes held but free for reuse.
    pub fn bytes_free(&self) -> usize {
        self.bytes_held - self.bytes_in_use
    }
}

/// Free buffers by size class (in elements of `elem_bytes` each), with the
/// statistics. `B` is the buffer: a device slice, a pinned host slice, or
/// anything in a test.
#[derive(Debug)]
pub struct FreeLists<B> {
    elem_bytes: usize,
    free: HashMap<usize, Vec<B>>,
    stats: PoolStats,
}

impl<B> FreeLists<B> {
    pub fn new(elem_bytes: usize) -> FreeLists<B> {
        FreeLists {
            elem_bytes,
            free: HashMap::new(),
            stats: PoolStats::default(),
        }
    }

    /// A free buffer of `class` (as [`size_class`] gives), most recently
    /// given back first, counted as a hit; `None` (a miss) when the list is
    /// empty: the caller allocates `class` elements and reports it with
    /// [`FreeLists::allocated`].
    pub fn take(&mut self, class: usize) -> Option<B> {
        self.take_where(class, |_| true)
    }

    /// As [`FreeLists::take`], but only a buffer `ready` accepts (e.g. one
    /// whose last copy finished); the oldest ready one is taken.
    pub fn take_where(&mut self, class: usize, ready: impl Fn(&B) -> bool) -> Option<B> {
        let found = self.free.get_mut(&class).and_then(|l| {
            let at = match l.last() {
                Some(b) if ready(b) => Some(l.len() - 1),
                _ => l.iter().position(&ready),
            };
            at.map(|i| l.remove(i))
        });
        match found {
            Some(b) => {
                self.stats.hits += 1;
                self.stats.bytes_in_use += class * self.elem_bytes;
                Some(b)
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Records a new buffer of `class` elements, handed out after a miss.
    pub fn allocated(&mut self, class: usize) {
        let bytes = class * self.elem_bytes;
        self.stats.bytes_held += bytes;
        self.stats.bytes_in_use += bytes;
    }

    /// A buffer of `class` comes back for reuse.
    pub fn give(&mut self, class: usize, b: B) {
        self.stats.bytes_in_use -= class * self.elem_bytes;
        self.free.entry(class).or_default().push(b);
    }

    /// Takes every free buffer out (to be released to the driver).
    pub fn trim(&mut self) -> Vec<B> {
        let mut out = Vec::new();
        for (class, list) in self.free.drain() {
            self.stats.bytes_held -= class * self.elem_bytes * list.len();
            self.stats.released += list.len() as u64;
            out.extend(list);
        }
        out
    }

    pub fn stats(&self) -> PoolStats {
        self.stats
    }
}

/// The device pool of one device's stream (f32 buffers).
#[derive(Debug)]
pub struct DevicePool {
    stream: Arc<CudaStream>,
    lists: Mutex<FreeLists<CudaSlice<f32>>>,
}

impl DevicePool {
    pub(crate) fn new(stream: Arc<CudaStream>) -> Arc<DevicePool> {
        Arc::new(DevicePool {
            stream,
            lists: Mutex::new(FreeLists::new(std::mem::size_of::<f32>())),
        })
    }

    /// A buffer of at least `len` floats (at least one), contents undefined.
    pub(crate) fn take(self: &Arc<Self>, len: usize) -> Result<PooledBuf> {
        let class = size_class(len.max(1));
        let reused = self.lists.lock().expect("pool lock").take(class);
        let slice = match reused {
            Some(s) => s,
            None => {
                // SAFETY: the contents are undefined until written; callers
                // either zero the buffer or launch a kernel that writes
                // every element they later read.
                let s =
                    unsafe { self.stream.alloc::<f32>(class) }.map_err(driver_err("cuMemAlloc"))?;
                self.lists.lock().expect("pool lock").allocated(class);
                s
            }
        };
        Ok(PooledBuf {
            slice: Some(slice),
            class,
            home: Home::Pool(self.clone()),
        })
    }

    pub fn stats(&self) -> PoolStats {
        self.lists.lock().expect("pool lock").stats()
    }

    /// Releases every free buffer to the driver (buffers in use stay).
    pub fn trim(&self) {
        let freed = self.lists.lock().expect("pool lock").trim();
        drop(freed);
    }
}

/// A device buffer from a [`DevicePool`] (or from the prefetcher's ring),
/// given back when dropped. Its length is its size class, which may exceed
/// what was asked for.
#[derive(Debug)]
pub struct PooledBuf {
    slice: Option<CudaSlice<f32>>,
    class: usize,
    home: Home,
}

/// Where a [`PooledBuf`] goes back to on drop.
#[derive(Debug)]
enum Home {
    /// The device pool (compute stream only: no events needed).
    Pool(Arc<DevicePool>),
    /// The prefetcher's ring: dropping records the buffer's release on the
    /// compute stream before the copy stream may overwrite it.
    Prefetch(RingReturn),
}

impl PooledBuf {
    /// A prefetched buffer, going back to the prefetcher's ring on drop.
    pub(crate) fn prefetched(slice: CudaSlice<f32>, class: usize, ret: RingReturn) -> PooledBuf {
        PooledBuf {
            slice: Some(slice),
            class,
            home: Home::Prefetch(ret),
        }
    }
}

impl Deref for PooledBuf {
    type Target = CudaSlice<f32>;
    fn deref(&self) -> &CudaSlice<f32> {
        self.slice.as_ref().expect("present until drop")
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut CudaSlice<f32> {
        self.slice.as_mut().expect("present until drop")
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let Some(s) = self.slice.take() {
            match &mut self.home {
                Home::Pool(pool) => {
                    if let Ok(mut lists) = pool.lists.lock() {
                        lists.give(self.class, s);
                    }
                }
                Home::Prefetch(ret) => ret.give_back(self.class, s),
            }
        }
    }
}

// SAFETY: both push exactly what cudarc pushes for the `CudaSlice` inside
// (its device pointer, with its stream-synchronization events), by
// delegating to cudarc's own implementations.
unsafe impl<'a, 'b: 'a> PushKernelArg<&'b PooledBuf> for LaunchArgs<'a> {
    #[inline(always)]
    fn arg(&mut self, arg: &'b PooledBuf) -> &mut Self {
        let s: &'b CudaSlice<f32> = arg;
        self.arg(s)
    }
}

// SAFETY: as above.
unsafe impl<'a, 'b: 'a> PushKernelArg<&'b mut PooledBuf> for LaunchArgs<'a> {
    #[inline(always)]
    fn arg(&mut self, arg: &'b mut PooledBuf) -> &mut Self {
        let s: &'b mut CudaSlice<f32> = arg;
        self.arg(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_the_request_with_under_a_quarter_spare() {
        assert_eq!(size_class(0), MIN_CLASS);
        assert_eq!(size_class(1), MIN_CLASS);
        assert_eq!(size_class(64), 64);
        assert_eq!(size_class(65), 80);
        assert_eq!(size_class(128), 128);
        assert_eq!(size_class(129), 160);
        assert_eq!(size_class(1 << 20), 1 << 20);
        let mut last = 0;
        for len in 1..100_000usize {
            let c = size_class(len);
            assert!(c >= len, "class {c} < {len}");
            assert!(c >= last, "classes must not shrink as requests grow");
            if len > MIN_CLASS {
                assert!((c - len) * 4 < c, "{len} → {c} wastes a quarter or more");
            }
            last = c;
        }
        // Four classes per doubling.
        let distinct: std::collections::BTreeSet<_> = (1025..=2048).map(size_class).collect();
        assert_eq!(
            distinct.into_iter().collect::<Vec<_>>(),
            [1280, 1536, 1792, 2048]
        );
    }

    /// A step loop as the launchers drive the pool: the first step misses,
    /// every later step with the same shapes is served from the lists.
    #[test]
    fn a_repeated_step_allocates_only_in_its_first_iteration() {
        let mut lists: FreeLists<Vec<f32>> = FreeLists::new(4);
        let step_sizes = [1000usize, 33, 4096, 1000, 70_000, 5];
        let mut next_id = 0.0;
        for step in 0..5 {
            let mut live = Vec::new();
            for &len in &step_sizes {
                let class = size_class(len);
                let buf = lists.take(class).unwrap_or_else(|| {
                    lists.allocated(class);
                    next_id += 1.0;
                    vec![next_id; class]
                });
                assert!(buf.len() >= len);
                live.push((class, buf));
            }
            let s = lists.stats();
            assert_eq!(s.misses, step_sizes.len() as u64, "step {step} allocated");
            assert_eq!(s.hits, (step * step_sizes.len()) as u64);
            let in_use: usize = live.iter().map(|(c, _)| c * 4).sum();
            assert_eq!(s.bytes_in_use, in_use);
            assert_eq!(s.bytes_held, in_use);
            for (class, buf) in live {
                lists.give(class, buf);
            }
            assert_eq!(lists.stats().bytes_in_use, 0);
        }
        // Two 1000-float requests live at once needed two buffers, reused.
        assert_eq!(
            lists.stats().bytes_held,
            4 * (1024 * 2 + 64 * 2 + 4096 + 81_920)
        );
        let freed = lists.trim();
        assert_eq!(freed.len(), step_sizes.len());
        let s = lists.stats();
        assert_eq!((s.bytes_held, s.released), (0, step_sizes.len() as u64));
        assert!(
            lists.take(size_class(1000)).is_none(),
            "trimmed lists are empty"
        );
    }

    #[test]
    fn take_where_skips_buffers_that_are_not_ready() {
        let mut lists: FreeLists<(u32, bool)> = FreeLists::new(1);
        lists.allocated(64);
        lists.allocated(64);
        lists.allocated(64);
        lists.give(64, (1, true));
        lists.give(64, (2, false));
        lists.give(64, (3, true));
        // The last given back is ready: taken first (warm in cache).
        assert_eq!(lists.take_where(64, |b| b.1), Some((3, true)));
        // Then the oldest ready one, skipping the busy buffer.
        assert_eq!(lists.take_where(64, |b| b.1), Some((1, true)));
        assert_eq!(lists.take_where(64, |b| b.1), None);
        assert_eq!(lists.stats().misses, 1);
        assert_eq!(lists.take(64), Some((2, false)));
        assert_eq!(lists.stats().hits, 3);
    }
}
