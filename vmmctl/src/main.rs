//! vmmctl: the userspace VMM that drives rvmx.

mod info;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Userspace VMM for the rvmx hypervisor (/dev/rvmx).
///
/// Load the module first (`insmod rvmx.ko`), then ask what it offers with
/// `vmmctl info`.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print what the hypervisor supports: API version, VMX capabilities,
    /// and whether VMX root operation works on every CPU right now.
    Info {
        /// The rvmx device node.
        #[arg(long, default_value = uapi::DEVICE_PATH)]
        device: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info { device } => info::run(&device),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmmctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
