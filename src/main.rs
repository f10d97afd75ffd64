use clap::Parser;

mod cli;

fn main() {
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
