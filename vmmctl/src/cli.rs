//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::hv_stats::StatMode;
use crate::hypervisor::Backend;

/// What a Linux guest gets without --cmdline: its console on COM1, which
/// is vmmctl's terminal.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0";

const EXAMPLES: &str = "\
Examples:
  vmmctl info                                   rvmx's VMX capabilities
  vmmctl --hypervisor kvm info                  what /dev/kvm offers
  vmmctl run --kernel bzImage --initrd initrd.gz --mem 512M --cpus 2
  vmmctl run --kernel bzImage --cmdline 'console=ttyS0 quiet' --stats
  vmmctl run --kernel test.elf                  a multiboot kernel
  vmmctl stat                                   the counters of the running VM, live

The guest's console (COM1) is this terminal. Ctrl-A x quits, Ctrl-A h
lists the other escapes. Exit status: 0 when the guest powers off or
reboots (or on Ctrl-A x), (code << 1) | 1 when it writes code to port 0xf4
(QEMU's isa-debug-exit), 1 on an error, 2 on a guest kernel panic, 4 on a
triple fault, 128 + N when stopped by signal N. See docs/vmmctl.md.";

/// Userspace VMM for rvmx and KVM: boots a Linux bzImage or a multiboot
/// kernel with its console on this terminal.
#[derive(Parser, Debug)]
#[command(version, about, long_about, after_long_help = EXAMPLES)]
pub struct Cli {
    /// Hypervisor backend. For `run` the default is rvmx if /dev/rvmx
    /// exists, else kvm if /dev/kvm exists (else rvmx, which then says
    /// how to load it); for `info` it is rvmx.
    #[arg(long, global = true, value_enum)]
    pub hypervisor: Option<Backend>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print what the hypervisor supports: for rvmx its API version, VMX
    /// capabilities and whether VMX root operation works on every CPU;
    /// for kvm its API version, vCPU limits and optional capabilities.
    Info {
        /// The rvmx device node.
        #[arg(long, default_value = uapi::DEVICE_PATH)]
        device: PathBuf,
    },
    /// Boot a kernel in a new VM and run it until it powers off, reboots,
    /// panics or writes to the debug-exit port.
    Run(RunArgs),
    /// Watch the hypervisor's counters of a running `vmmctl run` (as
    /// kvm_stat does): its busiest counters with their rates, every
    /// second, until it exits. Needs the right to ptrace it.
    Stat {
        /// The vmmctl to watch; by default the only one running.
        pid: Option<u32>,
        /// Print every non-zero counter once (`vmmctl: stat NAME VALUE`)
        /// and exit.
        #[arg(long)]
        once: bool,
        /// Stop after this many views.
        #[arg(long, value_name = "N")]
        count: Option<u32>,
    },
}

#[derive(Args, Debug, PartialEq, Eq)]
pub struct RunArgs {
    /// The kernel: a Linux bzImage (boot protocol 2.12 or later, x86-64)
    /// or a multiboot (v1) ELF32 kernel.
    #[arg(long, value_name = "FILE")]
    pub kernel: PathBuf,

    /// An initial ramdisk for Linux, or the module of a multiboot kernel.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,

    /// The kernel command line.
    #[arg(long, value_name = "TEXT", default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,

    /// Guest RAM, e.g. 256M or 2G (a plain number means MiB).
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    pub mem: u64,

    /// Number of vCPUs (1 to 32; rvmx runs at most 8 per VM).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=32))]
    pub cpus: u8,

    /// At the end, print exit statistics per reason and vmmctl's memory
    /// use beyond guest RAM to stderr.
    #[arg(long)]
    pub stats: bool,

    /// The hypervisor's own counters (its binary statistics files, as
    /// kvm_stat reads them) on stderr: `--stat` or `--stat=live` shows
    /// the busiest with their rates every second; `--stat=summary` prints
    /// every non-zero counter once at the end (`vmmctl: stat NAME VALUE`).
    #[arg(long, value_enum, value_name = "MODE", num_args = 0..=1,
          require_equals = true, default_missing_value = "live")]
    pub stat: Option<StatMode>,
}

/// Parses a memory size: digits with an optional K, M or G suffix (binary
/// units; KiB/MiB/GiB and lower case accepted); no suffix means MiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size: use e.g. 512M or 2G"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "m" | "mib" | "mb" => 20,
        "k" | "kib" | "kb" => 10,
        "g" | "gib" | "gb" => 30,
        _ => return Err(format!("unknown size unit in '{s}': use K, M or G")),
    };
    n.checked_mul(1 << shift)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("'{s}' is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vmmctl").chain(args.iter().copied()))
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("512"), Ok(512 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1024k"), Ok(1 << 20));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12T").unwrap_err().contains("unknown size unit"));
        assert!(parse_size("0").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }

    #[test]
    fn run_defaults() {
        let cli = parse(&["run", "--kernel", "bz"]).unwrap();
        assert_eq!(cli.hypervisor, None);
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert_eq!(
            r,
            RunArgs {
                kernel: "bz".into(),
                initrd: None,
                cmdline: DEFAULT_CMDLINE.into(),
                mem: 256 << 20,
                cpus: 1,
                stats: false,
                stat: None,
            }
        );
    }

    #[test]
    fn hypervisor_goes_before_or_after_the_subcommand() {
        let a = parse(&["--hypervisor", "kvm", "run", "--kernel", "k"]).unwrap();
        let b = parse(&["run", "--kernel", "k", "--hypervisor", "rvmx"]).unwrap();
        assert_eq!(a.hypervisor, Some(Backend::Kvm));
        assert_eq!(b.hypervisor, Some(Backend::Rvmx));
        assert!(parse(&["--hypervisor", "xen", "info"]).is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&["run"]).is_err(), "--kernel is required");
        assert!(parse(&["run", "--kernel", "k", "--cpus", "0"]).is_err());
        assert!(parse(&["run", "--kernel", "k", "--cpus", "33"]).is_err());
        let e = parse(&["run", "--kernel", "k", "--mem", "big"]).unwrap_err();
        assert!(e.to_string().contains("is not a size"), "{e}");
        let ok = parse(&[
            "run", "--kernel", "k", "--cpus", "2", "--mem", "1G", "--stats",
        ]);
        let Command::Run(r) = ok.unwrap().command else {
            panic!("not run")
        };
        assert_eq!((r.cpus, r.mem, r.stats), (2, 1 << 30, true));
    }

    #[test]
    fn stat_takes_an_optional_mode() {
        let mode = |extra: &[&str]| {
            let mut args = vec!["run", "--kernel", "k"];
            args.extend_from_slice(extra);
            parse(&args).map(|c| match c.command {
                Command::Run(r) => r.stat,
                _ => panic!("not run"),
            })
        };
        assert_eq!(mode(&[]).unwrap(), None);
        assert_eq!(mode(&["--stat"]).unwrap(), Some(StatMode::Live));
        assert_eq!(mode(&["--stat=live"]).unwrap(), Some(StatMode::Live));
        assert_eq!(mode(&["--stat=summary"]).unwrap(), Some(StatMode::Summary));
        // A bare --stat does not swallow the next argument.
        assert_eq!(mode(&["--stat", "--stats"]).unwrap(), Some(StatMode::Live));
        assert!(mode(&["--stat=often"]).is_err());
    }

    #[test]
    fn stat_takes_a_pid_and_modes() {
        let cli = parse(&["stat"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Stat {
                pid: None,
                once: false,
                count: None
            }
        ));
        let cli = parse(&["stat", "1234", "--once"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Stat {
                pid: Some(1234),
                once: true,
                count: None
            }
        ));
        let cli = parse(&["stat", "--count", "3"]).unwrap();
        assert!(matches!(cli.command, Command::Stat { count: Some(3), .. }));
        assert!(parse(&["stat", "me"]).is_err());
    }

    #[test]
    fn info_keeps_its_device_option() {
        let cli = parse(&["info", "--device", "/dev/x"]).unwrap();
        let Command::Info { device } = cli.command else {
            panic!("not info")
        };
        assert_eq!(device, PathBuf::from("/dev/x"));
    }
}
