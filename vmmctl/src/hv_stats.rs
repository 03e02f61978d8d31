//! The hypervisor's own counters (`--stat`), in the spirit of `kvm_stat`:
//! read from the binary statistics files of the VM and its vCPUs (rvmx's
//! and KVM's share one format, `uapi::stats`), decoded from their
//! descriptors alone: vmmctl knows no counter by name.
//!
//! `--stat` (live): every second, the busiest counters with their rates,
//! to stderr. `--stat=summary`: one line per non-zero counter at the end,
//! `vmmctl: stat NAME VALUE`, for scripts.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::ValueEnum;
use uapi::stats::{Kind, ReadAt, Stats, Unit};

use crate::control::Control;
use crate::hypervisor::{Vcpu, Vm};

/// What `--stat` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatMode {
    /// The busiest counters and their rates, refreshed every second.
    Live,
    /// All non-zero counters once, when the guest has stopped.
    Summary,
}

/// One counter's value, totalled over the files it appears in.
#[derive(Clone, Debug, PartialEq)]
pub struct Counter {
    pub name: String,
    /// Cumulative counters have rates; others (instant, peak) are shown
    /// as they are.
    pub cumulative: bool,
    /// Unit suffix ("ns", "" for plain counts).
    pub unit: String,
    /// For a time: seconds per unit (1e-9 for ns).
    pub seconds: Option<f64>,
    pub value: u64,
}

/// Every counter at one moment, in the order the files describe them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals(pub Vec<Counter>);

impl Totals {
    /// Sums the values of `files` by name (a histogram counts as the sum
    /// of its buckets).
    pub fn of<R: ReadAt>(files: &[Stats<R>]) -> std::io::Result<Self> {
        let mut out: Vec<Counter> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for f in files {
            let snap = f.read()?;
            for (d, (name, value)) in f.descs.iter().zip(f.scalars(&snap)) {
                match index.get(&name) {
                    Some(&i) => out[i].value = out[i].value.wrapping_add(value),
                    None => {
                        index.insert(name.clone(), out.len());
                        out.push(Counter {
                            name,
                            cumulative: matches!(d.kind, Kind::Cumulative),
                            unit: d.unit_suffix(),
                            seconds: (d.unit == Unit::Seconds && !d.pow2)
                                .then(|| 10f64.powi(i32::from(d.exponent))),
                            value,
                        });
                    }
                }
            }
        }
        Ok(Self(out))
    }

    pub fn get(&self, name: &str) -> Option<u64> {
        self.0.iter().find(|c| c.name == name).map(|c| c.value)
    }
}

/// The statistics files of one VM.
pub struct HvStats {
    files: Vec<Stats>,
    /// The VM file's id ("rvmx-PID", "kvm-PID").
    id: String,
}

impl HvStats {
    /// The VM's file and, where the VM's values do not include its vCPUs'
    /// (KVM), each vCPU's.
    pub fn open(vm: &dyn Vm, vcpus: &[Box<dyn Vcpu>]) -> Result<Self> {
        let decode =
            |f: File, what: &str| Stats::new(f).with_context(|| format!("decoding {what}"));
        let vm_file = decode(vm.stats_fd()?, "the VM's statistics")?;
        let id = vm_file.id.clone();
        let mut files = vec![vm_file];
        if !vm.stats_include_vcpus() {
            for (i, v) in vcpus.iter().enumerate() {
                files.push(decode(v.stats_fd()?, &format!("vCPU {i}'s statistics"))?);
            }
        }
        Ok(Self { files, id })
    }

    /// Files opened elsewhere (`vmmctl stat`): all of them are summed.
    pub fn from_files(files: Vec<Stats>) -> Self {
        let id = files
            .iter()
            .find(|f| !f.id.contains("/vcpu"))
            .or(files.first())
            .map_or_else(String::new, |f| f.id.clone());
        Self { files, id }
    }

    /// The VM file's id ("rvmx-PID", "kvm-PID").
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn totals(&self) -> std::io::Result<Totals> {
        Totals::of(&self.files)
    }
}

/// How `vmmctl run` ends lines on stderr: a terminal its console put in
/// raw mode (stdin a tty) needs "\r\n" to return the carriage.
fn run_line_end() -> &'static str {
    // SAFETY: isatty only inspects the descriptors.
    let raw =
        unsafe { libc::isatty(libc::STDIN_FILENO) == 1 && libc::isatty(libc::STDERR_FILENO) == 1 };
    if raw {
        "\r\n"
    } else {
        "\n"
    }
}

/// The live view: the `top` busiest counts between `prev` and `now` (`dt`
/// seconds apart; by rate, then total), then every time counter with the
/// time it grew by per second (e.g. 1.50 s/s: one and a half vCPUs
/// halted). Counters still zero are left out. `nl` ends each line.
pub fn live_view(
    id: &str,
    elapsed: f64,
    prev: &Totals,
    now: &Totals,
    dt: f64,
    top: usize,
    nl: &str,
) -> String {
    let rate = |c: &Counter| {
        c.cumulative.then(|| {
            let before = prev.get(&c.name).unwrap_or(0);
            c.value.saturating_sub(before) as f64 / dt.max(1e-9)
        })
    };
    let moved = now.0.iter().filter(|c| c.value != 0);
    let mut counts: Vec<(&Counter, Option<f64>)> = moved
        .clone()
        .filter(|c| c.seconds.is_none())
        .map(|c| (c, rate(c)))
        .collect();
    counts.sort_by(|a, b| {
        let ra = a.1.unwrap_or(-1.0);
        let rb = b.1.unwrap_or(-1.0);
        rb.total_cmp(&ra)
            .then(b.0.value.cmp(&a.0.value))
            .then(a.0.name.cmp(&b.0.name))
    });
    let mut s = String::new();
    let _ = write!(
        s,
        "vmmctl stat {id} at {elapsed:.0} s{nl}  {:<32} {:>16} {:>12}{nl}",
        "counter", "total", "per second"
    );
    for (c, r) in counts.into_iter().take(top) {
        let r = r.map_or_else(|| "-".to_string(), |r| format!("{r:.0}"));
        let _ = write!(s, "  {:<32} {:>16} {r:>12}{nl}", c.name, c.value);
    }
    for c in moved.filter(|c| c.seconds.is_some()) {
        let scale = c.seconds.unwrap_or(1.0);
        let total = format!("{:.3} s", c.value as f64 * scale);
        let r = rate(c).map_or_else(|| "-".to_string(), |r| format!("{:.2} s/s", r * scale));
        let _ = write!(s, "  {:<32} {total:>16} {r:>12}{nl}", c.name);
    }
    s
}

/// The one-shot summary: every non-zero counter, in descriptor order, one
/// per line (`vmmctl: stat NAME VALUE`), after a title line.
pub fn summary(id: &str, wall: Duration, t: &Totals, nl: &str) -> String {
    let mut s = format!(
        "vmmctl: hypervisor statistics of {id} after {:.3} s:{nl}",
        wall.as_secs_f64()
    );
    for c in t.0.iter().filter(|c| c.value != 0) {
        let _ = write!(s, "vmmctl: stat {} {}{nl}", c.name, c.value);
    }
    s
}

/// How many rows the live view shows.
pub const LIVE_ROWS: usize = 12;

/// Prints the live view every second until the run stops.
pub fn spawn_live(
    stats: Arc<HvStats>,
    control: Arc<Control>,
) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("stat".into())
        .spawn(move || {
            let start = Instant::now();
            let mut prev = stats.totals().unwrap_or_default();
            let mut last = start;
            while !control.stopping() {
                // Sleep a second in small steps, to stop promptly.
                while last.elapsed() < Duration::from_secs(1) && !control.stopping() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if control.stopping() {
                    break;
                }
                let Ok(now) = stats.totals() else { break };
                let dt = last.elapsed().as_secs_f64();
                last = Instant::now();
                let view = live_view(
                    &stats.id,
                    start.elapsed().as_secs_f64(),
                    &prev,
                    &now,
                    dt,
                    LIVE_ROWS,
                    run_line_end(),
                );
                eprint!("{view}");
                prev = now;
            }
        })
        .context("starting the statistics thread")
}

/// The summary of `stats` now.
pub fn print_summary(stats: &HvStats, wall: Duration) {
    match stats.totals() {
        Ok(t) => eprint!("{}", summary(&stats.id, wall, &t, run_line_end())),
        Err(e) => eprintln!("vmmctl: reading the hypervisor's statistics: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uapi::stats::build_image;
    use uapi::sys;

    const CUM: u32 = sys::RVMX_STATS_TYPE_CUMULATIVE;
    const INSTANT: u32 = sys::RVMX_STATS_TYPE_INSTANT;

    fn file(id: &str, descs: &[(&str, u32, Vec<u64>)]) -> Stats<Vec<u8>> {
        Stats::new(build_image(id, 48, descs)).unwrap()
    }

    fn totals(files: &[Stats<Vec<u8>>]) -> Totals {
        Totals::of(files).unwrap()
    }

    #[test]
    fn files_are_summed_by_name_in_first_seen_order() {
        // KVM: the VM's own counters, then each vCPU's, summed by name.
        let vm = file("kvm-1", &[("remote_tlb_flush", CUM, vec![3])]);
        let v0 = file(
            "kvm-1/vcpu-0",
            &[
                ("exits", CUM, vec![10]),
                ("halt_wait_hist", sys::RVMX_STATS_TYPE_LOG_HIST, vec![1, 1]),
            ],
        );
        let v1 = file(
            "kvm-1/vcpu-1",
            &[
                ("exits", CUM, vec![5]),
                ("halt_wait_hist", sys::RVMX_STATS_TYPE_LOG_HIST, vec![0, 4]),
            ],
        );
        let t = totals(&[vm, v0, v1]);
        let names: Vec<&str> = t.0.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["remote_tlb_flush", "exits", "halt_wait_hist"]);
        assert_eq!(t.get("exits"), Some(15));
        assert_eq!(t.get("halt_wait_hist"), Some(6));
        assert!(!t.0[2].cumulative);
    }

    #[test]
    fn live_view_ranks_by_rate_and_shows_totals() {
        let c = |name: &str, cumulative, value| Counter {
            name: name.into(),
            cumulative,
            unit: String::new(),
            seconds: None,
            value,
        };
        let prev = Totals(vec![
            c("exits", true, 1000),
            c("halts", true, 10),
            c("vcpus", false, 2),
            c("idle", true, 0),
        ]);
        let mut now = prev.clone();
        now.0[0].value = 3000; // +2000 in 2 s: 1000/s
        now.0[1].value = 410; // +400: 200/s
        now.0.push(Counter {
            name: "halt_ns".into(),
            cumulative: true,
            unit: "ns".into(),
            seconds: Some(1e-9),
            value: 3_000_000_000,
        });
        let v = live_view("rvmx-9", 7.0, &prev, &now, 2.0, 2, "\n");
        let lines: Vec<&str> = v.lines().collect();
        assert!(lines[0].starts_with("vmmctl stat rvmx-9 at 7 s"), "{v}");
        let row = |i: usize, name: &str, total: &str, rate: &str| {
            let l: &str = lines[i];
            assert!(
                l.contains(name) && l.contains(total) && l.ends_with(rate),
                "row {i}, want {name} {total} {rate}:\n{v}"
            );
        };
        row(2, "exits", "3000", "1000");
        row(3, "halts", "410", "200");
        // Times last, in seconds: halt_ns is new since prev, so all of its
        // 3 s came in these 2 s.
        row(4, "halt_ns", "3.000 s", "1.50 s/s");
        // Only `top` counts; zero counters never.
        assert_eq!(lines.len(), 5, "{v}");
        assert!(!v.contains("idle"));
        let all = live_view("rvmx-9", 7.0, &prev, &now, 2.0, 10, "\n");
        let vcpus = all.lines().find(|l| l.contains("vcpus")).unwrap();
        assert!(
            vcpus.trim_end().ends_with('-'),
            "instant counters have no rate: {all}"
        );
    }

    #[test]
    fn time_counters_know_their_scale() {
        let ns = sys::RVMX_STATS_TYPE_CUMULATIVE | sys::RVMX_STATS_UNIT_SECONDS;
        let t = totals(&[file("kvm-1/vcpu-0", &[("halt_wait_ns", ns, vec![5])])]);
        assert_eq!(t.0[0].seconds, Some(1e-9));
        assert_eq!(t.0[0].unit, "ns");
    }

    #[test]
    fn summary_lists_nonzero_counters_for_scripts() {
        let t = totals(&[file(
            "rvmx-3",
            &[
                ("exits", CUM, vec![42]),
                ("mmio_exits", CUM, vec![0]),
                ("vcpus", INSTANT, vec![1]),
            ],
        )]);
        let s = summary("rvmx-3", Duration::from_millis(2500), &t, "\n");
        assert_eq!(
            s.lines().collect::<Vec<_>>(),
            [
                "vmmctl: hypervisor statistics of rvmx-3 after 2.500 s:",
                "vmmctl: stat exits 42",
                "vmmctl: stat vcpus 1",
            ]
        );
    }
}
