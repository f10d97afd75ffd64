use clap::Parser;

mod cli;

/// Training allocates and frees hundreds of MB of activations per layer. By default glibc hands
/// blocks above a few MB back to the kernel on free and gets them back as fresh pages, zeroed
/// one page fault at a time (a tenth of a CPU step's time); keeping them in the heap for reuse
/// costs no peak memory here.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator thresholds; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() {
    tune_allocator();
    // candle attaches a backtrace to its errors when backtraces are on; user-facing errors
    // must read as one line. Panics (bugs) still honour RUST_BACKTRACE.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let args = cli::Cli::parse();
    if let Err(err) = cli::run(args) {
        // `{:#}` prints the whole context chain on one line and never a backtrace:
        // these are user-facing errors.
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
