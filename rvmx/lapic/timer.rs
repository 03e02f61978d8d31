// SPDX-License-Identifier: GPL-2.0

//! The local APIC timer (SDM Vol. 3, 11.5.4): one-shot, periodic and
//! TSC-deadline modes, kept as absolute TSC deadlines.
//!
//! The timer counts at the TSC rate divided by the divide configuration:
//! rvmx tells the guest so through CPUID leaf 0x15 (crystal = TSC), so the
//! count a guest programs and the TSC it reads agree. Nothing here reads a
//! clock: the caller passes the TSC. Pure logic: also compiled into the
//! host unit tests.

/// LVT timer mode, bits 18:17.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    OneShot,
    Periodic,
    TscDeadline,
}

impl Mode {
    pub(crate) fn from_lvt(lvt: u32) -> Self {
        match (lvt >> 17) & 3 {
            1 => Self::Periodic,
            2 => Self::TscDeadline,
            // 3 is reserved: treated as one-shot, as KVM does.
            _ => Self::OneShot,
        }
    }
}

/// The divisor that divide-configuration register value `dcr` selects
/// (bits 3 and 1:0).
pub(crate) fn divisor(dcr: u32) -> u64 {
    let code = ((dcr >> 1) & 4) | (dcr & 3);
    if code == 7 {
        1
    } else {
        2 << code
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Timer {
    initial: u32,
    dcr: u32,
    /// TSC at which the timer next fires; `None` when it is not armed.
    deadline: Option<u64>,
    /// IA32_TSC_DEADLINE as the guest last wrote it (0 after it fired).
    tsc_deadline: u64,
}

impl Timer {
    fn period(&self) -> u64 {
        u64::from(self.initial) * divisor(self.dcr)
    }

    /// The next expiry, as an absolute TSC.
    pub(crate) fn deadline(&self) -> Option<u64> {
        self.deadline
    }

    pub(crate) fn initial_count(&self) -> u32 {
        self.initial
    }

    pub(crate) fn divide_config(&self) -> u32 {
        self.dcr
    }

    /// The current-count register at TSC `now`.
    pub(crate) fn current_count(&self, mode: Mode, now: u64) -> u32 {
        match (mode, self.deadline) {
            (Mode::TscDeadline, _) | (_, None) => 0,
            (_, Some(deadline)) => {
                let left = deadline.saturating_sub(now) / divisor(self.dcr);
                left.min(u64::from(self.initial)) as u32
            }
        }
    }

    /// A write of the initial-count register: (re)starts or stops the
    /// counting modes; ignored in TSC-deadline mode.
    pub(crate) fn set_initial(&mut self, mode: Mode, count: u32, now: u64) {
        if mode == Mode::TscDeadline {
            return;
        }
        self.initial = count;
        self.deadline = (count != 0).then(|| now.saturating_add(self.period()));
    }

    /// Restores a saved timer: `current` counts left of `initial` at TSC
    /// `now` (the counting modes; TSC-deadline mode is IA32_TSC_DEADLINE's).
    pub(crate) fn restore(&mut self, mode: Mode, dcr: u32, initial: u32, current: u32, now: u64) {
        self.set_divide(dcr);
        self.initial = initial;
        self.deadline = match mode {
            Mode::TscDeadline => (self.tsc_deadline != 0).then_some(self.tsc_deadline),
            _ if current == 0 => None,
            _ => Some(now.saturating_add(u64::from(current) * divisor(self.dcr))),
        };
    }

    /// A write of the divide-configuration register. A running count keeps
    /// its deadline; the new divisor applies from the next period.
    pub(crate) fn set_divide(&mut self, dcr: u32) {
        self.dcr = dcr & 0xb;
    }

    /// The LVT timer's mode changed: the timer stops, as on hardware.
    pub(crate) fn mode_changed(&mut self) {
        self.deadline = None;
        self.initial = 0;
        self.tsc_deadline = 0;
    }

    pub(crate) fn tsc_deadline(&self, mode: Mode) -> u64 {
        if mode == Mode::TscDeadline {
            self.tsc_deadline
        } else {
            0
        }
    }

    /// A write of IA32_TSC_DEADLINE: arms the timer in TSC-deadline mode
    /// (0 disarms it); ignored in the other modes.
    pub(crate) fn set_tsc_deadline(&mut self, mode: Mode, value: u64) {
        if mode != Mode::TscDeadline {
            return;
        }
        self.tsc_deadline = value;
        self.deadline = (value != 0).then_some(value);
    }

    /// Whether the timer fired by TSC `now`; re-arms a periodic timer for
    /// its next period after `now` (missed periods fire once, as a busy
    /// guest would see them coalesced on hardware).
    pub(crate) fn expire(&mut self, mode: Mode, now: u64) -> bool {
        let Some(deadline) = self.deadline else {
            return false;
        };
        if now < deadline {
            return false;
        }
        let period = self.period();
        self.deadline = match mode {
            Mode::Periodic if period != 0 => {
                let late = (now - deadline) % period;
                Some(now.saturating_add(period - late))
            }
            _ => None,
        };
        if mode == Mode::TscDeadline {
            self.tsc_deadline = 0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divisors() {
        assert_eq!(divisor(0b0000), 2);
        assert_eq!(divisor(0b0011), 16);
        assert_eq!(divisor(0b1000), 32);
        assert_eq!(divisor(0b1010), 128);
        assert_eq!(divisor(0b1011), 1);
    }

    #[test]
    fn one_shot_fires_once_at_count_times_divisor() {
        let mut t = Timer::default();
        t.set_divide(0b0001); // 4
        t.set_initial(Mode::OneShot, 1000, 10_000);
        assert_eq!(t.deadline(), Some(14_000));
        assert_eq!(t.current_count(Mode::OneShot, 12_000), 500);
        assert!(!t.expire(Mode::OneShot, 13_999));
        assert!(t.expire(Mode::OneShot, 14_000));
        assert_eq!(t.deadline(), None);
        assert!(!t.expire(Mode::OneShot, 20_000));
        assert_eq!(t.current_count(Mode::OneShot, 20_000), 0);
    }

    #[test]
    fn periodic_stays_periodic_and_keeps_phase() {
        let mut t = Timer::default();
        t.set_divide(0b1011); // 1
        t.set_initial(Mode::Periodic, 100, 0);
        assert!(t.expire(Mode::Periodic, 100));
        assert_eq!(t.deadline(), Some(200));
        // Seen late: fires once, next deadline still on the period grid.
        assert!(t.expire(Mode::Periodic, 351));
        assert_eq!(t.deadline(), Some(400));
        assert_eq!(t.current_count(Mode::Periodic, 390), 10);
    }

    #[test]
    fn zero_count_stops_and_deadline_mode_ignores_counts() {
        let mut t = Timer::default();
        t.set_initial(Mode::OneShot, 10, 0);
        t.set_initial(Mode::OneShot, 0, 5);
        assert_eq!(t.deadline(), None);
        t.set_initial(Mode::TscDeadline, 10, 0);
        assert_eq!(t.deadline(), None);
    }

    #[test]
    fn tsc_deadline_arms_fires_and_clears() {
        let mut t = Timer::default();
        t.set_tsc_deadline(Mode::OneShot, 500);
        assert_eq!(t.deadline(), None, "ignored outside deadline mode");
        t.set_tsc_deadline(Mode::TscDeadline, 500);
        assert_eq!(t.tsc_deadline(Mode::TscDeadline), 500);
        assert!(!t.expire(Mode::TscDeadline, 499));
        assert!(t.expire(Mode::TscDeadline, 501));
        assert_eq!(t.tsc_deadline(Mode::TscDeadline), 0);
        t.set_tsc_deadline(Mode::TscDeadline, 900);
        t.set_tsc_deadline(Mode::TscDeadline, 0);
        assert_eq!(t.deadline(), None);
    }
}
