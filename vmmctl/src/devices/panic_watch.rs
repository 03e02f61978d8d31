//! Spots a Linux panic on the console. A panicked kernel spins with
//! interrupts off and never exits to the VMM, so its last console line is
//! the only news of it that a VMM without a pvpanic device gets.

/// The last line `panic()` prints, after the backtrace.
const END_OF_PANIC: &str = "---[ end Kernel panic";
/// Longer console lines are cut (they cannot be the marker's line).
const MAX_LINE: usize = 512;

#[derive(Default)]
pub struct PanicWatch {
    line: Vec<u8>,
}

impl PanicWatch {
    /// Feeds console output; true when a line with the marker completes.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut seen = false;
        for &b in bytes {
            if b == b'\n' {
                seen |= String::from_utf8_lossy(&self.line).contains(END_OF_PANIC);
                self.line.clear();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_split_across_writes_is_seen_at_end_of_line() {
        let mut w = PanicWatch::default();
        assert!(!w.feed(b"[    1.0] Kernel panic - not syncing: Attempted to kill init!\n"));
        assert!(!w.feed(b"[    1.1] ---[ end Kernel pa"));
        assert!(!w.feed(b"nic - not syncing: Attempted to kill init! ]---"));
        assert!(w.feed(b"\r\n"));
        assert!(!w.feed(b"ordinary line\n"));
    }
}
