//! SIGINT, SIGTERM and SIGHUP (Ctrl-C, a scheduler's stop, a closed terminal) all ask the run to
//! finish its step and save a checkpoint; a second signal quits at once. The process then exits
//! with 128 + the signal's number, as shells report a process killed by it.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

/// The first signal received, 0 until one comes.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// Starts the thread that turns signals into `flag`; the training loop polls the flag between
/// steps.
#[cfg(unix)]
pub fn watch(flag: Arc<AtomicBool>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        eprintln!("warning: cannot install signal handlers; a signal will stop the run at once");
        return;
    };
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if RECEIVED
                .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                eprintln!("\nsecond signal: quitting now, without a checkpoint");
                std::process::exit(128 + signal);
            }
            flag.store(true, Ordering::SeqCst);
            eprintln!(
                "\n{}: saving a checkpoint after this step (send it again to quit now)",
                name(signal)
            );
        }
    });
}

#[cfg(not(unix))]
pub fn watch(flag: Arc<AtomicBool>) {
    let _ = flag;
}

/// The exit code of a run stopped by a signal: 128 + its number (130 for SIGINT, 143 for SIGTERM,
/// 129 for SIGHUP); 130 when the stop was asked some other way.
pub fn exit_code() -> i32 {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => 130,
        s => 128 + s,
    }
}

fn name(signal: i32) -> &'static str {
    match signal {
        1 => "SIGHUP",
        2 => "interrupted (SIGINT)",
        15 => "SIGTERM",
        _ => "signal",
    }
}
