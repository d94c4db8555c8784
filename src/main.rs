//! The `self-redteam` binary: logging, Ctrl-C handling, then the CLI (src/cli.rs). Errors
//! print once here with their whole chain.
use std::sync::atomic::Ordering;

use clap::Parser;
use self_redteam::cli::{main_with, Cli};
use self_redteam::engine::CANCEL;

fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.global.log_level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    // First Ctrl-C: stop after the current node (or at the stage's next check), keeping
    // everything finished. Second Ctrl-C: exit at once; the store stays consistent
    // because nothing is visible before its atomic rename.
    let _ = ctrlc::set_handler(|| {
        if CANCEL.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("interrupt: finishing cleanly (Ctrl-C again to quit now)");
    });
    // A typo in the decode-kernel switch must not silently fall back to the default kernel.
    if let Err(e) = self_redteam::model::kernels::isa_cap_from_env() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    let code = match main_with(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
