//! vmmctl: the userspace VMM of rvmx, with a KVM backend beside it.

mod boot;
mod cli;
mod console;
mod control;
mod devices;
mod hv_stats;
mod hypervisor;
mod info;
mod memory;
mod rss;
mod run;
mod signals;
mod stat_cmd;
mod stats;
mod vcpu;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
use hypervisor::Backend;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info { device } => {
            info::run(cli.hypervisor.unwrap_or(Backend::Rvmx), &device).map(|()| 0)
        }
        Command::Stat { pid, once, count } => stat_cmd::run(pid, once, count).map(|()| 0),
        Command::Run(args) => {
            let backend = cli.hypervisor.unwrap_or_else(run::default_backend);
            run::run(backend, &args).map(|outcome| {
                if let Some(msg) = outcome.message() {
                    eprintln!("vmmctl: {msg}");
                }
                outcome.exit_status()
            })
        }
    };
    match result {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("vmmctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
