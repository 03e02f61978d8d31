//! Exit statistics (`--stats`): how often each vCPU came back to vmmctl,
//! by reason, and which ports nobody answered. Exits the hypervisor
//! handles in the kernel (HLT, APIC, PIT with KVM) are not seen here.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct ExitStats {
    pub by_reason: BTreeMap<&'static str, u64>,
    /// (direction 'r'/'w', port) -> accesses nobody answered.
    pub unhandled_ports: BTreeMap<(char, u16), u64>,
}

impl ExitStats {
    pub fn exit(&mut self, reason: &'static str) {
        *self.by_reason.entry(reason).or_default() += 1;
    }

    pub fn unhandled(&mut self, dir: char, port: u16) {
        *self.unhandled_ports.entry((dir, port)).or_default() += 1;
    }

    pub fn merge(&mut self, other: &ExitStats) {
        for (k, v) in &other.by_reason {
            *self.by_reason.entry(k).or_default() += v;
        }
        for (k, v) in &other.unhandled_ports {
            *self.unhandled_ports.entry(*k).or_default() += v;
        }
    }

    pub fn total(&self) -> u64 {
        self.by_reason.values().sum()
    }

    /// The report printed to stderr at the end of a run.
    pub fn report(&self, wall: Duration) -> String {
        let mut s = String::new();
        let total = self.total();
        let _ = writeln!(
            s,
            "vmmctl: {total} exits to userspace in {:.3} s",
            wall.as_secs_f64()
        );
        let mut reasons: Vec<_> = self.by_reason.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (reason, n) in reasons {
            let _ = writeln!(s, "vmmctl:   {reason:<16} {n:>10}");
        }
        if !self.unhandled_ports.is_empty() {
            let n: u64 = self.unhandled_ports.values().sum();
            let _ = writeln!(
                s,
                "vmmctl: {n} unhandled port accesses (reads got all-ones):"
            );
            for ((dir, port), n) in &self.unhandled_ports {
                let _ = writeln!(s, "vmmctl:   {dir} {port:#06x} {n:>10}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_counts_and_report_order() {
        let mut a = ExitStats::default();
        a.exit("io-out");
        a.exit("io-out");
        a.unhandled('r', 0x70);
        let mut b = ExitStats::default();
        b.exit("io-in");
        b.exit("io-out");
        b.unhandled('r', 0x70);
        a.merge(&b);
        assert_eq!(a.total(), 4);
        assert_eq!(a.by_reason["io-out"], 3);
        assert_eq!(a.unhandled_ports[&('r', 0x70)], 2);
        let r = a.report(Duration::from_millis(1500));
        assert!(r.contains("4 exits to userspace in 1.500 s"), "{r}");
        let out = r.find("io-out").unwrap();
        assert!(out < r.find("io-in").unwrap(), "most frequent first:\n{r}");
        assert!(r.contains("r 0x0070          2"), "{r}");
    }
}
