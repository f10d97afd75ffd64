//! Fault injection for tests: `LORA_DPO_FAULT=<point>[:N]` makes the process exit abruptly (as a
//! kill -9 would leave things: no destructors, no flushing) the Nth time (default 1st) the named
//! point is reached. Debug builds only; in release builds these functions do nothing.

/// Exit code of a process stopped by an injected fault.
pub const EXIT_CODE: i32 = 99;

/// Stops the process here if the fault names this point and this is its Nth hit.
pub fn point(name: &str) {
    if fires(name) {
        stop(name);
    }
}

/// Counts a hit of `name`; true when the fault is to happen at this hit (the caller may leave
/// partial work behind, as a kill would, then call [`stop`]).
#[cfg(debug_assertions)]
pub fn fires(name: &str) -> bool {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static HITS: AtomicUsize = AtomicUsize::new(0);
    let Ok(spec) = std::env::var("LORA_DPO_FAULT") else {
        return false;
    };
    let (wanted, nth) = match spec.split_once(':') {
        Some((p, n)) => (p.to_string(), n.parse::<usize>().unwrap_or(1)),
        None => (spec, 1),
    };
    wanted == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == nth
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn fires(_name: &str) -> bool {
    false
}

/// Ends the process at once with [`EXIT_CODE`].
pub fn stop(name: &str) -> ! {
    eprintln!("LORA_DPO_FAULT: stopping at {name}");
    // No destructors run and no buffered writer is flushed: what is on disk is what a kill at
    // this point would leave.
    std::process::exit(EXIT_CODE)
}
