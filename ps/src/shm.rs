//! Shared-memory regions: tensor data between a PS and a client on the
//! same host without the network stack.
//!
//! Over loopback TCP a pushed gradient is copied into the kernel and out
//! again, cut into HTTP/2 frames, and woken for on both sides; for a
//! MobileNet step that is most of the cost of running as a cluster on one
//! machine. Through a region the client copies the data in once and the
//! PS copies it out once; the gRPC messages carry only the tensors' names,
//! shapes and where their bytes are (see `ps.proto`, "Shared memory").
//!
//! A [`Region`] is an anonymous memory file (`memfd_create`) that the PS
//! creates, sealed so that it can neither shrink nor grow (a peer cannot
//! make the other's mapping fault). The client opens it through
//! `/proc/<pid>/fd/<fd>` and checks the random token the PS wrote in its
//! first bytes, so a client in another PID namespace (or on another host
//! behind a loopback-looking address) finds out and keeps using the
//! messages. The memory is freed once neither side maps it: nothing is
//! left behind in `/dev/shm` when a process dies.
//!
//! [`Regions`] is the PS's table of the regions it created; [`Pool`] is a
//! client's set of regions for one PS, lent out one push or pull at a time
//! ([`Lease`]).

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Bytes before a region's data: the token, padded to a page.
pub const HEADER_BYTES: usize = 4096;

/// Length of the token a region starts with.
pub const TOKEN_BYTES: usize = 16;

/// The environment variable that turns shared memory off (`off` or `0`),
/// in a PS (OpenRegion is refused) or a client (it never asks).
pub const ENV: &str = "PSFLOW_SHM";

/// Most regions a client keeps for one PS (a push and a pull in flight,
/// and one of each being replaced by a larger one).
pub const MAX_CLIENT_REGIONS: usize = 4;

/// Most data bytes a PS hands out in regions at once, over all clients.
pub const MAX_PS_REGION_BYTES: u64 = 4 << 30;

/// Whether the environment leaves shared memory on.
pub fn enabled_by_env() -> bool {
    !matches!(
        std::env::var(ENV).as_deref().map(str::trim),
        Ok("off" | "0" | "false" | "no")
    )
}

/// A mapped shared-memory region: a header page holding the token, then
/// `capacity` data bytes. Data offsets are relative to the data's start.
///
/// Who may touch which bytes when is the protocol's rule, not the type's:
/// one side writes a range, then tells the other (a gRPC message), which
/// then reads it; the writer does not write the range again until the
/// reader says it is done (a push's reply; a pull's end).
pub struct Region {
    id: u64,
    ptr: NonNull<u8>,
    /// Mapped bytes: header and data.
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is plain memory owned by the value (unmapped on
// drop); reads and writes go through raw pointers, and which thread or
// process touches which bytes is ordered by the protocol (see the type).
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

fn os_error(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Maps all `len` bytes of `fd` shared, readable and writable.
fn map(fd: &OwnedFd, len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh shared mapping of a file we hold open; the kernel
    // picks the address. The result is checked before use.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(os_error("mapping the region"));
    }
    Ok(NonNull::new(p.cast::<u8>()).expect("mmap does not return null on success"))
}

impl Region {
    /// Creates a region of at least `capacity` data bytes (rounded up to
    /// whole pages), with a random token (the PS's side).
    pub fn create(id: u64, capacity: usize) -> io::Result<Region> {
        let capacity = capacity.max(1).div_ceil(HEADER_BYTES) * HEADER_BYTES;
        let len = HEADER_BYTES + capacity;
        let name = CString::new(format!("psflow-region-{id}")).expect("no NUL");
        // SAFETY: a valid C string; the returned descriptor is checked and
        // then owned.
        let raw = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if raw < 0 {
            return Err(os_error("memfd_create"));
        }
        // SAFETY: `raw` is a descriptor we just opened and nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let file = File::from(fd);
        file.set_len(len as u64)
            .map_err(|e| io::Error::new(e.kind(), format!("sizing the region: {e}")))?;
        let fd = OwnedFd::from(file);
        // Neither side may resize it now: a shrunk file would fault the
        // other's reads.
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on a descriptor we own.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(os_error("sealing the region"));
        }
        let ptr = map(&fd, len)?;
        let region = Region { id, ptr, len, fd };
        let mut token = [0u8; TOKEN_BYTES];
        fill_random(&mut token)?;
        // SAFETY: the header lies inside the mapping; nobody else has it yet.
        unsafe { std::ptr::copy_nonoverlapping(token.as_ptr(), region.ptr.as_ptr(), TOKEN_BYTES) };
        Ok(region)
    }

    /// Opens the region a PS created, as process `pid`'s descriptor `fd`
    /// (the client's side), and checks that it is `capacity` data bytes
    /// long and starts with `token`.
    pub fn open(id: u64, pid: u32, fd: i32, token: &[u8], capacity: usize) -> io::Result<Region> {
        let path = format!("/proc/{pid}/fd/{fd}");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {path}: {e}")))?;
        let len = HEADER_BYTES + capacity;
        let size = file.metadata()?.len();
        if size != len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{path} is {size} bytes, not the region's {len}: another process's file"),
            ));
        }
        let fd = OwnedFd::from(file);
        let ptr = map(&fd, len)?;
        let region = Region { id, ptr, len, fd };
        if token.len() != TOKEN_BYTES || region.token() != token {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{path} does not hold the region's token: another process's file"),
            ));
        }
        Ok(region)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Data bytes.
    pub fn capacity(&self) -> usize {
        self.len - HEADER_BYTES
    }

    /// The descriptor a client opens through `/proc`.
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// The region's first bytes, which the PS chose at random.
    pub fn token(&self) -> [u8; TOKEN_BYTES] {
        let mut t = [0u8; TOKEN_BYTES];
        // SAFETY: the header lies inside the mapping.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), t.as_mut_ptr(), TOKEN_BYTES) };
        t
    }

    /// Whether `len` data bytes at `at` lie inside the region.
    pub fn holds(&self, at: u64, len: u64) -> bool {
        at.checked_add(len)
            .is_some_and(|end| end <= self.capacity() as u64)
    }

    /// Copies `data` to data offset `at`.
    ///
    /// # Panics
    /// When the range does not lie inside the region (callers check
    /// [`Region::holds`]).
    pub fn write(&self, at: usize, data: &[u8]) {
        assert!(
            self.holds(at as u64, data.len() as u64),
            "{} bytes at {at} do not fit a region of {}",
            data.len(),
            self.capacity()
        );
        // SAFETY: the range lies inside the mapping (asserted) and cannot
        // overlap `data`'s buffer; by the protocol nobody reads it now.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.ptr.as_ptr().add(HEADER_BYTES + at),
                data.len(),
            )
        }
    }

    /// The `len` data bytes at `at`, if they lie inside the region.
    ///
    /// # Safety
    /// Nobody (in any process) writes the range while the slice lives: by
    /// the protocol, the peer wrote it before sending the message that
    /// names it and does not write it again until this side answers.
    pub unsafe fn read(&self, at: u64, len: u64) -> Option<&[u8]> {
        if !self.holds(at, len) {
            return None;
        }
        // SAFETY: inside the mapping (checked); not written meanwhile (the
        // caller's contract).
        Some(unsafe {
            std::slice::from_raw_parts(
                self.ptr.as_ptr().add(HEADER_BYTES + at as usize),
                len as usize,
            )
        })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value made; no slice of
        // it outlives `self` (they borrow it).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("id", &self.id)
            .field("capacity", &self.capacity())
            .finish()
    }
}

fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: writes at most the remaining bytes of `buf`.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io::Error::new(e.kind(), format!("getrandom: {e}")));
        }
        done += n as usize;
    }
    Ok(())
}

/// The regions a PS created, by id, each for one job. Regions of other
/// jobs are dropped when a job's shard is initialized; their memory is
/// freed once the clients unmap them too.
pub struct Regions {
    enabled: bool,
    limit: u64,
    next: AtomicU64,
    table: Mutex<HashMap<u64, (String, Arc<Region>)>>,
}

impl Regions {
    /// `enabled` false refuses every OpenRegion; `limit` bounds the data
    /// bytes of all regions together.
    pub fn new(enabled: bool, limit: u64) -> Regions {
        Regions {
            enabled,
            limit,
            next: AtomicU64::new(1),
            table: Mutex::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (String, Arc<Region>)>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Data bytes held in regions now.
    pub fn bytes(&self) -> u64 {
        held(&self.table())
    }

    /// Regions held now.
    pub fn count(&self) -> usize {
        self.table().len()
    }

    /// Creates a region of at least `bytes` data bytes for `job`.
    pub fn open(&self, job: &str, bytes: u64) -> Result<Arc<Region>, tonic::Status> {
        if !self.enabled {
            return Err(tonic::Status::failed_precondition(format!(
                "shared memory is off on this parameter server ({ENV}=off); \
                 tensors travel in the gRPC messages"
            )));
        }
        // Checked and inserted under one lock, so that concurrent opens
        // cannot together pass the limit.
        let mut table = self.table();
        let held = held(&table);
        if held.saturating_add(bytes) > self.limit {
            return Err(tonic::Status::resource_exhausted(format!(
                "a region of {bytes} bytes would put this parameter server's shared memory at \
                 {} bytes, over its limit of {} (MAX_PS_REGION_BYTES)",
                held.saturating_add(bytes),
                self.limit
            )));
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let region = Region::create(id, bytes as usize)
            .map_err(|e| tonic::Status::internal(format!("creating a region: {e}")))?;
        let region = Arc::new(region);
        table.insert(id, (job.to_string(), region.clone()));
        Ok(region)
    }

    /// Job `job`'s region `id`.
    pub fn get(&self, job: &str, id: u64) -> Option<Arc<Region>> {
        self.table()
            .get(&id)
            .filter(|(j, _)| j == job)
            .map(|(_, r)| r.clone())
    }

    /// Forgets job `job`'s region `id`; whether there was one.
    pub fn close(&self, job: &str, id: u64) -> bool {
        let mut table = self.table();
        if table.get(&id).is_some_and(|(j, _)| j == job) {
            table.remove(&id);
            true
        } else {
            false
        }
    }

    /// Drops every region not of `job`.
    pub fn keep_only(&self, job: &str) {
        self.table().retain(|_, (j, _)| j == job);
    }
}

/// Data bytes of the regions in `table`.
fn held(table: &HashMap<u64, (String, Arc<Region>)>) -> u64 {
    table.values().map(|(_, r)| r.capacity() as u64).sum()
}

/// A client's regions at one PS: free ones, how many exist, and the sizes
/// of the last push and pull (the size of the next region to ask for).
#[derive(Default)]
pub struct Pool {
    state: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    /// Why this client does not use shared memory (set once it failed).
    off: Option<String>,
    free: Vec<Arc<Region>>,
    /// Regions lent out or free.
    count: usize,
    /// Tensor bytes of the last push and pull.
    push_bytes: u64,
    pull_bytes: u64,
    /// A region was ever lent.
    used: bool,
    /// Regions given up that the PS has not been told to close.
    closing: Vec<u64>,
}

/// What a region is lent for: its size is learned from the last of the
/// same kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    Push,
    Pull,
}

impl Pool {
    fn state(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Turns shared memory off for this client, saying why.
    pub fn turn_off(&self, why: String) {
        let mut s = self.state();
        if s.off.is_none() {
            s.off = Some(why);
        }
        s.count -= s.free.len();
        let given_up: Vec<u64> = s.free.drain(..).map(|r| r.id()).collect();
        s.closing.extend(given_up);
    }

    /// The regions given up since the last call, for the PS to close.
    pub fn take_closing(&self) -> Vec<u64> {
        std::mem::take(&mut self.state().closing)
    }

    /// Why shared memory is off for this client, if it is.
    pub fn off(&self) -> Option<String> {
        self.state().off.clone()
    }

    /// Records the tensor bytes of a finished push or pull.
    pub fn learn(&self, kind: Use, bytes: u64) {
        let mut s = self.state();
        match kind {
            Use::Push => s.push_bytes = bytes,
            Use::Pull => s.pull_bytes = bytes,
        }
    }

    /// What to do for the next push or pull: lend a free region large
    /// enough, ask for a new one of `Want::Open` bytes, or send the data in
    /// the messages (off, nothing learned yet, or the client has all the
    /// regions it may).
    pub fn want(self: &Arc<Pool>, kind: Use) -> Want {
        let mut s = self.state();
        let bytes = match kind {
            Use::Push => s.push_bytes,
            Use::Pull => s.pull_bytes,
        };
        if s.off.is_some() || bytes == 0 {
            return Want::None;
        }
        if let Some(i) = s.free.iter().position(|r| r.capacity() as u64 >= bytes) {
            let region = s.free.swap_remove(i);
            return Want::Lease(Lease::new(self.clone(), region));
        }
        if s.count >= MAX_CLIENT_REGIONS {
            // Make room for a larger one by dropping a free smaller one.
            let Some(smaller) = s.free.pop() else {
                return Want::None;
            };
            s.count -= 1;
            s.closing.push(smaller.id());
        }
        // Room for some growth, so that a slightly larger step does not
        // ask again.
        Want::Open(bytes + bytes / 8)
    }

    /// Lends a region just opened (counted as one of this client's), and
    /// says whether it is this client's first.
    pub fn adopt(self: &Arc<Pool>, region: Region) -> (Lease, bool) {
        let mut s = self.state();
        s.count += 1;
        let first = !std::mem::replace(&mut s.used, true);
        (Lease::new(self.clone(), Arc::new(region)), first)
    }

    /// Regions lent out or free.
    pub fn count(&self) -> usize {
        self.state().count
    }
}

/// The next push's or pull's region, or why there is none.
pub enum Want {
    Lease(Lease),
    /// Open a region of this many bytes, then [`Pool::adopt`] it.
    Open(u64),
    None,
}

/// A region lent for one push or pull. It goes back to its pool only when
/// [`Lease::done`] says the peer is finished with it; dropped otherwise
/// (the call failed or was abandoned, and the peer may still touch it), it
/// is given up.
pub struct Lease {
    pool: Arc<Pool>,
    region: Option<Arc<Region>>,
}

impl Lease {
    fn new(pool: Arc<Pool>, region: Arc<Region>) -> Lease {
        Lease {
            pool,
            region: Some(region),
        }
    }

    pub fn region(&self) -> &Arc<Region> {
        self.region.as_ref().expect("held until done or dropped")
    }

    /// The peer is finished with the region: it may be lent again.
    pub fn done(mut self) {
        let region = self.region.take().expect("held until done or dropped");
        let mut s = self.pool.state();
        if s.off.is_none() {
            s.free.push(region);
        } else {
            s.count -= 1;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(region) = self.region.take() {
            let mut s = self.pool.state();
            s.count -= 1;
            s.closing.push(region.id());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_opened_through_proc_shares_memory_and_checks_its_token() {
        let ps = Region::create(7, 10_000).unwrap();
        assert_eq!(ps.capacity(), 12_288, "whole pages");
        let pid = std::process::id();
        let client = Region::open(7, pid, ps.raw_fd(), &ps.token(), ps.capacity()).unwrap();
        client.write(100, b"gradients");
        // SAFETY: nothing writes the range meanwhile.
        assert_eq!(unsafe { ps.read(100, 9) }.unwrap(), b"gradients");
        assert!(unsafe { ps.read(12_280, 9) }.is_none(), "past the end");
        assert!(!ps.holds(u64::MAX, 2), "an overflowing range");

        let mut wrong = ps.token();
        wrong[0] ^= 1;
        let e = Region::open(7, pid, ps.raw_fd(), &wrong, ps.capacity()).unwrap_err();
        assert!(e.to_string().contains("token"), "{e}");
        let e = Region::open(7, pid, ps.raw_fd(), &ps.token(), 4096).unwrap_err();
        assert!(e.to_string().contains("not the region's"), "{e}");
        let e = Region::open(7, pid, 1_000_000, &ps.token(), ps.capacity()).unwrap_err();
        assert!(e.to_string().contains("/proc/"), "{e}");
    }

    #[test]
    fn a_region_held_by_another_process_is_opened_through_its_proc_entry() {
        let ps = Region::create(3, 4096).unwrap();
        // A child process holding the region's file as its standard input.
        let file = std::fs::File::open(format!("/proc/self/fd/{}", ps.raw_fd())).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(file)
            .spawn()
            .unwrap();
        let opened = Region::open(3, child.id(), 0, &ps.token(), ps.capacity());
        let _ = child.kill();
        let _ = child.wait();
        let client = opened.unwrap();
        client.write(10, b"values");
        // SAFETY: nothing writes the range meanwhile.
        assert_eq!(unsafe { ps.read(10, 6) }.unwrap(), b"values");
    }

    #[test]
    fn a_region_cannot_be_resized() {
        let ps = Region::create(1, 4096).unwrap();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{}", ps.raw_fd()))
            .unwrap();
        assert!(file.set_len(0).is_err(), "sealed against shrinking");
        assert!(file.set_len(1 << 20).is_err(), "sealed against growing");
    }

    #[test]
    fn the_ps_table_is_per_job_and_bounded() {
        let regions = Regions::new(true, 3 * 4096);
        let a = regions.open("a", 4096).unwrap();
        let b = regions.open("b", 4096).unwrap();
        assert!(regions.get("a", a.id()).is_some());
        assert!(regions.get("b", a.id()).is_none(), "another job's region");
        let e = regions.open("a", 2 * 4096).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message().contains("MAX_PS_REGION_BYTES"),
            "{}",
            e.message()
        );
        regions.keep_only("a");
        assert!(regions.get("b", b.id()).is_none());
        assert!(regions.close("a", a.id()));
        assert!(!regions.close("a", a.id()));
        assert_eq!(regions.bytes(), 0);
        let off = Regions::new(false, 1 << 30);
        assert_eq!(
            off.open("a", 1).unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
    }

    #[test]
    fn the_pool_lends_learned_sizes_and_gives_up_abandoned_regions() {
        let pool = Arc::new(Pool::default());
        assert!(
            matches!(pool.want(Use::Push), Want::None),
            "nothing learned"
        );
        pool.learn(Use::Push, 8000);
        let Want::Open(bytes) = pool.want(Use::Push) else {
            panic!("a region is opened once the size is known")
        };
        assert_eq!(bytes, 9000);
        let (lease, first) = pool.adopt(Region::create(1, bytes as usize).unwrap());
        assert!(first, "the first region lent");
        assert!(
            matches!(pool.want(Use::Push), Want::Open(_)),
            "the one is lent"
        );
        lease.done();
        let Want::Lease(lease) = pool.want(Use::Push) else {
            panic!("the returned region is lent again")
        };
        assert_eq!(lease.region().id(), 1);
        drop(lease);
        assert_eq!(pool.count(), 0, "an abandoned region is given up");
        assert_eq!(pool.take_closing(), [1], "and closed at the PS");
        assert!(pool.take_closing().is_empty());

        // At most MAX_CLIENT_REGIONS, all lent: the data go in messages.
        let leases: Vec<_> = (0..MAX_CLIENT_REGIONS)
            .map(|i| {
                let (lease, first) = pool.adopt(Region::create(i as u64, 4096).unwrap());
                assert!(!first);
                lease
            })
            .collect();
        assert!(matches!(pool.want(Use::Push), Want::None));
        // A free one too small for the learned size makes room for one
        // that fits.
        leases.into_iter().for_each(Lease::done);
        assert!(matches!(pool.want(Use::Push), Want::Open(9000)));
        assert_eq!(pool.count(), MAX_CLIENT_REGIONS - 1);
        assert_eq!(pool.take_closing().len(), 1, "the smaller one is closed");
        pool.turn_off("test".into());
        assert_eq!(pool.count(), 0, "the free regions are given up");
        assert_eq!(pool.take_closing().len(), MAX_CLIENT_REGIONS - 1);
        assert!(matches!(pool.want(Use::Push), Want::None));
        assert_eq!(pool.off().as_deref(), Some("test"));
    }
}
