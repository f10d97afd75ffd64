//! Fault injection for tests: `LORA_DPO_FAULT=<point>[:N]` makes the process exit abruptly (as a
//! kill -9 would leave things: no destructors, no flushing) the Nth time (default 1st) the named
//! point is reached. Debug builds only; in release builds [`point`] is empty.

/// Exit code of a process stopped by an injected fault.
pub const EXIT_CODE: i32 = 99;

#[cfg(debug_assertions)]
pub fn point(name: &str) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static HITS: AtomicUsize = AtomicUsize::new(0);
    let Ok(spec) = std::env::var("LORA_DPO_FAULT") else {
        return;
    };
    let (wanted, nth) = match spec.split_once(':') {
        Some((p, n)) => (p.to_string(), n.parse::<usize>().unwrap_or(1)),
        None => (spec, 1),
    };
    if wanted != name {
        return;
    }
    if HITS.fetch_add(1, Ordering::SeqCst) + 1 == nth {
        eprintln!("LORA_DPO_FAULT: stopping at {name} (hit {nth})");
        // No destructors run and no buffered writer is flushed: what is on disk is what a
        // kill at this point would leave.
        std::process::exit(EXIT_CODE);
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn point(_name: &str) {}
