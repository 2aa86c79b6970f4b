//! Handing freed memory back to the kernel, so a serve that runs for months
//! holds what it uses rather than the high-water mark of its busiest minute.
//!
//! glibc's allocator keeps the pages that freed allocations leave inside its
//! arenas (one per thread that allocated, up to eight per core: serve's
//! worker, and the blocking threads that run getaddrinfo and password checks,
//! which come and go) and gives back only the free top of each heap. Under a
//! homeserver's traffic that is a slow climb: serve's 2-hour soak measured
//! its RSS rising in steps, +0.8 MiB an hour, with every request accounted
//! for and nothing left open. `malloc_trim(0)` returns every whole free page
//! of every arena (glibc 2.8 and later), so a trim at a fixed interval keeps
//! the RSS at what is in use. A trim walks the arenas under their locks; on a
//! 30 MiB serve it takes well under a millisecond, on a blocking thread.
//!
//! The library has no unsafe code, so the trim itself is the binary's: the
//! `egress` CLI passes glibc's `malloc_trim(0)` as [`MemoryTrim::trim`]
//! (with another C library or global allocator it passes nothing). serve
//! calls it on a blocking thread and counts it.

use std::sync::Arc;
use std::time::Duration;

use super::State;

/// Handing freed memory back at an interval ([`ServeConfig::memory_trim`](super::ServeConfig::memory_trim)).
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct MemoryTrim {
    /// How often.
    pub every: Duration,
    /// What trims, on a blocking thread: true when memory was given back
    /// (glibc's `malloc_trim(0) == 1`).
    pub trim: fn() -> bool,
}

impl MemoryTrim {
    /// `trim` every `every`.
    pub fn new(every: Duration, trim: fn() -> bool) -> MemoryTrim {
        MemoryTrim { every, trim }
    }
}

/// Trims until serve shuts down; counts each trim in
/// `egress_serve_memory_trims_total`.
pub(crate) async fn trim_loop(state: Arc<State>, memory: MemoryTrim) {
    let mut stop = state.shutdown.clone();
    let every = memory.every;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let started = std::time::Instant::now();
        let trim = memory.trim;
        let Ok((released, rss)) =
            tokio::task::spawn_blocking(move || (trim(), resident_bytes())).await
        else {
            return;
        };
        if let Some(rss) = rss {
            state
                .metrics
                .trimmed_rss
                .set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
        state.metrics.memory_trims.inc();
        tracing::debug!(
            took_us = started.elapsed().as_micros() as u64,
            released,
            rss,
            "memory trimmed"
        );
    }
}

/// This process's resident memory (VmRSS in /proc/self/status), read right
/// after a trim: what serve holds, without the free pages the allocator kept
/// since the last one. None where there is no /proc.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = kib.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn resident_bytes_reads_this_process() {
        let rss = super::resident_bytes().expect("VmRSS on Linux");
        // A test binary holds more than a MiB and less than a GiB.
        assert!((1 << 20..1 << 30).contains(&rss), "{rss}");
    }
}
