use clap::Parser;

mod cli;

fn main() {
    let args = cli::Cli::parse();
    if let Err(err) = cli::run(args) {
        // `{:#}` prints the whole context chain on one line and never a backtrace:
        // these are user-facing errors.
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
