//! The worker threads kernels split their work over: rayon's global pool,
//! sized once per process, each thread optionally bound to its own core.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static CONFIGURED: OnceLock<usize> = OnceLock::new();
static PINNED: AtomicBool = AtomicBool::new(false);

/// Whether the kernel threads are bound to cores, one core each.
///
/// Unbound, the scheduler is free to put two kernel threads on one core:
/// in a process that also runs network threads (a worker, a parameter
/// server, the in-process cluster) it did, after a network thread woke on
/// the core of one kernel thread, and then left the other core idle for up
/// to 10 ms while the two kernel threads took turns. Bound, a kernel thread
/// never leaves its core, so a core can only idle when its own thread has
/// no work. On a machine shared with other busy processes a bound thread
/// cannot move away from a busy core; use [`Pin::Off`] there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pin {
    /// Bind when the pool has exactly one thread per core this process may
    /// use (the default sizing), not otherwise.
    #[default]
    Auto,
    /// Bind thread `i` to the `i`-th usable core (modulo their number).
    On,
    /// Leave placement to the operating system.
    Off,
}

impl std::str::FromStr for Pin {
    type Err = String;

    fn from_str(s: &str) -> Result<Pin, String> {
        match s {
            "auto" => Ok(Pin::Auto),
            "on" => Ok(Pin::On),
            "off" => Ok(Pin::Off),
            other => Err(format!("{other:?}: expected auto, on or off")),
        }
    }
}

/// Sizes the kernel thread pool (0: one thread per core) and binds its
/// threads to cores as `pin` says. Only the first call has effect; returns
/// the size in force.
pub fn init(threads: usize, pin: Pin) -> usize {
    *CONFIGURED.get_or_init(|| {
        let cpus = usable_cpus();
        // What rayon would pick for 0: RAYON_NUM_THREADS, else the cores.
        let size = match threads {
            0 => std::env::var("RAYON_NUM_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&n: &usize| n > 0)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            n => n,
        };
        let bind = match pin {
            Pin::On => !cpus.is_empty(),
            Pin::Auto => size > 1 && size == cpus.len(),
            Pin::Off => false,
        };
        let mut builder = rayon::ThreadPoolBuilder::new().num_threads(size);
        if bind {
            builder = builder.start_handler(move |i| {
                // Best effort: a refused binding leaves the thread where
                // the scheduler puts it.
                let _ = bind_current_thread(cpus[i % cpus.len()]);
            });
        }
        // An error means the global pool already exists (someone used rayon
        // first); its size and placement are then what they are.
        if builder.build_global().is_ok() {
            PINNED.store(bind, Ordering::Relaxed);
        }
        rayon::current_num_threads()
    })
}

/// Number of threads the kernels use.
pub fn current() -> usize {
    rayon::current_num_threads()
}

/// Whether [`init`] bound the kernel threads to cores.
pub fn pinned() -> bool {
    PINNED.load(Ordering::Relaxed)
}

/// The cores this process may run on, in order (empty where that cannot
/// be known).
pub fn usable_cpus() -> Vec<usize> {
    #[cfg(target_os = "linux")]
    // SAFETY: `set` is a plain bit set the call fills in; its size is passed.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
    #[cfg(not(target_os = "linux"))]
    vec![]
}

/// Binds the calling thread to core `cpu`.
pub fn bind_current_thread(cpu: usize) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    // SAFETY: `set` is a plain bit set; its size is passed.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = cpu;
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_parses_its_three_values() {
        assert_eq!("auto".parse::<Pin>(), Ok(Pin::Auto));
        assert_eq!("on".parse::<Pin>(), Ok(Pin::On));
        assert_eq!("off".parse::<Pin>(), Ok(Pin::Off));
        assert!("yes"
            .parse::<Pin>()
            .unwrap_err()
            .contains("auto, on or off"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_bound_thread_runs_only_on_its_core() {
        let cpus = usable_cpus();
        assert!(!cpus.is_empty(), "no usable core reported");
        let last = *cpus.last().unwrap();
        let seen = std::thread::spawn(move || {
            bind_current_thread(last).unwrap();
            usable_cpus()
        })
        .join()
        .unwrap();
        assert_eq!(seen, vec![last]);
        // Binding is per thread: this one is as it was.
        assert_eq!(usable_cpus(), cpus);
        assert!(bind_current_thread(usize::MAX).is_err());
    }
}
