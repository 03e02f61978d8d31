//! The PC's CMOS real-time clock, an MC146818: an index port (0x70) that
//! selects one of 128 CMOS bytes and a data port (0x71) that reads or
//! writes it. The first fourteen bytes are the clock; the rest, and the
//! alarm bytes, are battery-backed RAM, here plain bytes that start at 0.
//!
//! The clock shows the host's UTC time plus whatever offset the guest set
//! it to, in the format register B asks for (BCD or binary, 24 or 12
//! hours), and is computed on each read: there is no update cycle, so UIP
//! never reads 1 and a guest that waits for it does not spin. (Linux reads
//! the time at boot; when nothing answered and UIP read 1, it polled
//! register A until it gave up, two exits to vmmctl a poll.) A guest that
//! reads several fields is expected to re-read the seconds, as Linux
//! does, to catch a tick between them.
//!
//! No interrupt is ever raised: register B's periodic, alarm and
//! update-ended enables are kept but do nothing, and register C reads 0.
//! That is why the FADT still says there is no CMOS RTC (boot::acpi):
//! Linux then reads the time at boot but does not bind rtc-cmos, which
//! would offer alarms that never ring.

/// Selects the register in bits 6:0; bit 7 masks NMIs on a PC, which a VM
/// has no source of, so it is dropped.
pub const INDEX_PORT: u16 = 0x70;
pub const DATA_PORT: u16 = 0x71;
const INDEX_MASK: u8 = 0x7f;

const SECONDS: usize = 0x00;
const MINUTES: usize = 0x02;
const HOURS: usize = 0x04;
const DAY_OF_WEEK: usize = 0x06;
const DAY_OF_MONTH: usize = 0x07;
const MONTH: usize = 0x08;
const YEAR: usize = 0x09;
const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
/// The IBM PC's century byte; the FADT's CENTURY field points here.
pub const CENTURY: u8 = 0x32;

/// The bytes that count time, in the order [`encode`] gives them.
const TIME_REGS: [usize; 8] = [
    SECONDS,
    MINUTES,
    HOURS,
    DAY_OF_WEEK,
    DAY_OF_MONTH,
    MONTH,
    YEAR,
    CENTURY as usize,
];

/// Register A: update in progress, read-only and never set here.
const UIP: u8 = 1 << 7;
/// 32.768 kHz time base, 1024 Hz periodic rate: what a PC BIOS leaves.
const REG_A_RESET: u8 = 0x26;
/// Register B: updates stopped while the guest sets the time.
const SET: u8 = 1 << 7;
/// Register B: binary rather than BCD.
const DM_BINARY: u8 = 1 << 2;
/// Register B: 24-hour rather than 12-hour hours.
const HOURS_24: u8 = 1 << 1;
/// 24-hour BCD, as a PC BIOS leaves it.
const REG_B_RESET: u8 = HOURS_24;
/// The hours byte in 12-hour mode: PM.
const PM: u8 = 1 << 7;
/// Register D: the battery is good (valid RAM and time).
const VRT: u8 = 1 << 7;

const SECS_PER_DAY: i64 = 86_400;

/// Where the time comes from: seconds since 1970-01-01 00:00 UTC.
pub trait Clock: Send {
    fn now(&self) -> i64;
}

/// The host's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        use std::time::{SystemTime, UNIX_EPOCH};
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
        }
    }
}

pub struct Rtc<C = SystemClock> {
    clock: C,
    /// The selected register, always below 128.
    index: u8,
    /// The CMOS bytes. The time bytes here matter only while SET is on:
    /// they hold the frozen time the guest reads and writes.
    cmos: [u8; 128],
    /// Guest time minus host time, in seconds: how far the guest set the
    /// clock away from the host's.
    offset: i64,
}

impl<C: Clock> Rtc<C> {
    pub fn new(clock: C) -> Self {
        let mut cmos = [0; 128];
        cmos[REG_A] = REG_A_RESET;
        cmos[REG_B] = REG_B_RESET;
        Self {
            clock,
            index: 0,
            cmos,
            offset: 0,
        }
    }

    /// A read of the index (0) or data (1) port.
    pub fn read(&self, offset: u8) -> u8 {
        if offset == 0 {
            // The index port is write-only on a PC.
            return 0xff;
        }
        let reg = usize::from(self.index);
        match reg {
            REG_A => self.cmos[REG_A] & !UIP,
            // No interrupt flags: none is ever raised.
            REG_C => 0,
            REG_D => VRT,
            _ => match time_slot(reg) {
                Some(slot) if !self.stopped() => encode(self.guest_now(), self.format())[slot],
                _ => self.cmos[reg],
            },
        }
    }

    /// A write to the index (0) or data (1) port.
    pub fn write(&mut self, offset: u8, value: u8) {
        if offset == 0 {
            self.index = value & INDEX_MASK;
            return;
        }
        let reg = usize::from(self.index);
        match reg {
            REG_A => self.cmos[REG_A] = value & !UIP,
            REG_B => self.write_b(value),
            REG_C | REG_D => {}
            _ => match time_slot(reg) {
                Some(slot) if !self.stopped() => {
                    // A running clock takes the new field at once and
                    // counts on from there.
                    let mut regs = encode(self.guest_now(), self.format());
                    regs[slot] = value;
                    self.set_guest_time(decode(regs, self.format()));
                }
                _ => self.cmos[reg] = value,
            },
        }
    }

    /// Setting SET freezes the time where it is, in the format the guest
    /// is switching to; clearing it starts the clock from whatever the
    /// guest left in the time bytes.
    fn write_b(&mut self, value: u8) {
        let was_stopped = self.stopped();
        let stops = value & SET != 0;
        if stops && !was_stopped {
            let regs = encode(self.guest_now(), value);
            for (reg, byte) in TIME_REGS.into_iter().zip(regs) {
                self.cmos[reg] = byte;
            }
        } else if was_stopped && !stops {
            let regs = TIME_REGS.map(|reg| self.cmos[reg]);
            self.set_guest_time(decode(regs, value));
        }
        self.cmos[REG_B] = value;
    }

    fn stopped(&self) -> bool {
        self.cmos[REG_B] & SET != 0
    }

    fn format(&self) -> u8 {
        self.cmos[REG_B]
    }

    fn guest_now(&self) -> i64 {
        self.clock.now().saturating_add(self.offset)
    }

    fn set_guest_time(&mut self, time: i64) {
        self.offset = time.saturating_sub(self.clock.now());
    }
}

/// Where `reg` is in [`TIME_REGS`], if it counts time.
fn time_slot(reg: usize) -> Option<usize> {
    TIME_REGS.iter().position(|&r| r == reg)
}

fn to_reg(value: u8, format: u8) -> u8 {
    if format & DM_BINARY != 0 {
        value
    } else {
        ((value / 10) << 4) | (value % 10)
    }
}

/// Any byte decodes: a nibble above 9 just counts for more than 9.
fn from_reg(byte: u8, format: u8) -> i64 {
    let byte = i64::from(byte);
    if format & DM_BINARY != 0 {
        byte
    } else {
        (byte >> 4) * 10 + (byte & 0xf)
    }
}

/// `time` as the time bytes, in [`TIME_REGS`] order, in register B's
/// `format`.
fn encode(time: i64, format: u8) -> [u8; 8] {
    let days = time.div_euclid(SECS_PER_DAY);
    let secs = time.rem_euclid(SECS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    // All below 100 from here on, so they fit a byte and two BCD digits.
    let field = |v: i64| to_reg(v.rem_euclid(100) as u8, format);
    let hour = secs / 3600;
    let hours = if format & HOURS_24 != 0 {
        field(hour)
    } else {
        // 12 AM is midnight, 12 PM noon.
        let pm = if hour >= 12 { PM } else { 0 };
        field((hour + 11) % 12 + 1) | pm
    };
    // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
    let weekday = (days + 4).rem_euclid(7) + 1;
    [
        field(secs % 60),
        field(secs / 60 % 60),
        hours,
        field(weekday),
        field(day),
        field(month),
        field(year),
        field(year.div_euclid(100)),
    ]
}

/// The time the bytes in [`TIME_REGS`] order say, in register B's
/// `format`. The day of the week follows from the date, so its byte is
/// ignored; fields out of range carry into the next one, as in mktime.
fn decode(regs: [u8; 8], format: u8) -> i64 {
    let [sec, min, hours, _weekday, day, month, year, century] = regs;
    let hour = if format & HOURS_24 != 0 {
        from_reg(hours, format)
    } else {
        let pm = if hours & PM != 0 { 12 } else { 0 };
        from_reg(hours & !PM, format) % 12 + pm
    };
    let year = from_reg(century, format) * 100 + from_reg(year, format);
    // Months past December carry into the next year; month 0 is the
    // December before.
    let month0 = from_reg(month, format) - 1;
    let days = days_from_civil(
        year + month0.div_euclid(12),
        month0.rem_euclid(12) + 1,
        from_reg(day, format),
    );
    days * SECS_PER_DAY + hour * 3600 + from_reg(min, format) * 60 + from_reg(sec, format)
}

// The proleptic Gregorian calendar, counted in days from 1970-01-01 in
// 400-year eras that start on March 1st (so a leap day ends its year):
// Howard Hinnant's `days_from_civil` and `civil_from_days`.

/// (year, month 1-12, day 1-31) of day `days`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The day number of `year`-`month`-`day`, for `month` 1 to 12 and any
/// `day` (past the month's end it carries on into the next).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;

    /// A clock the test sets and moves.
    impl Clock for Arc<AtomicI64> {
        fn now(&self) -> i64 {
            self.load(Ordering::Relaxed)
        }
    }

    /// Thursday 2024-02-29 13:45:07 UTC: a leap day, in the afternoon.
    const LEAP_DAY_PM: i64 = 1_709_214_307;

    fn rtc_at(time: i64) -> (Rtc<Arc<AtomicI64>>, Arc<AtomicI64>) {
        let clock = Arc::new(AtomicI64::new(time));
        (Rtc::new(clock.clone()), clock)
    }

    fn get(rtc: &mut Rtc<Arc<AtomicI64>>, reg: u8) -> u8 {
        rtc.write(0, reg);
        rtc.read(1)
    }

    fn put(rtc: &mut Rtc<Arc<AtomicI64>>, reg: u8, value: u8) {
        rtc.write(0, reg);
        rtc.write(1, value);
    }

    /// Seconds, minutes, hours, weekday, day, month, year, century.
    fn time_of(rtc: &mut Rtc<Arc<AtomicI64>>) -> [u8; 8] {
        TIME_REGS.map(|reg| get(rtc, reg as u8))
    }

    #[test]
    fn time_reads_as_bcd_24_hours_after_reset() {
        let (mut rtc, _) = rtc_at(LEAP_DAY_PM);
        assert_eq!(get(&mut rtc, REG_B as u8), REG_B_RESET);
        assert_eq!(
            time_of(&mut rtc),
            [0x07, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]
        );
    }

    #[test]
    fn binary_mode_gives_the_same_time_in_binary() {
        let (mut rtc, _) = rtc_at(LEAP_DAY_PM);
        put(&mut rtc, REG_B as u8, DM_BINARY | HOURS_24);
        assert_eq!(time_of(&mut rtc), [7, 45, 13, 5, 29, 2, 24, 20]);
    }

    #[test]
    fn twelve_hour_mode_sets_pm_and_counts_from_12() {
        let (mut rtc, clock) = rtc_at(LEAP_DAY_PM);
        put(&mut rtc, REG_B as u8, 0);
        assert_eq!(get(&mut rtc, HOURS as u8), PM | 0x01, "1 PM, BCD");
        put(&mut rtc, REG_B as u8, DM_BINARY);
        assert_eq!(get(&mut rtc, HOURS as u8), PM | 1, "1 PM, binary");
        let midnight = LEAP_DAY_PM - (13 * 3600 + 45 * 60 + 7);
        clock.store(midnight, Ordering::Relaxed);
        assert_eq!(get(&mut rtc, HOURS as u8), 12, "12 AM");
        clock.store(midnight + 12 * 3600, Ordering::Relaxed);
        assert_eq!(get(&mut rtc, HOURS as u8), PM | 12, "12 PM");
        put(&mut rtc, REG_B as u8, 0);
        assert_eq!(get(&mut rtc, HOURS as u8), PM | 0x12, "12 PM, BCD");
    }

    #[test]
    fn the_clock_follows_the_host() {
        let (mut rtc, clock) = rtc_at(LEAP_DAY_PM);
        clock.store(LEAP_DAY_PM + 11 * 3600 + 15 * 60, Ordering::Relaxed);
        assert_eq!(
            time_of(&mut rtc),
            [0x07, 0x00, 0x01, 0x06, 0x01, 0x03, 0x24, 0x20],
            "Friday 1 March, 01:00:07"
        );
    }

    #[test]
    fn uip_never_reads_set_and_the_rate_bits_read_back() {
        let (mut rtc, clock) = rtc_at(LEAP_DAY_PM);
        assert_eq!(get(&mut rtc, REG_A as u8), REG_A_RESET);
        put(&mut rtc, REG_A as u8, 0xff);
        assert_eq!(get(&mut rtc, REG_A as u8), 0x7f, "UIP is read-only");
        for t in 0..3000 {
            clock.store(LEAP_DAY_PM + t, Ordering::Relaxed);
            assert_eq!(get(&mut rtc, REG_A as u8) & UIP, 0);
        }
    }

    #[test]
    fn register_c_reads_0_and_d_says_the_battery_is_good() {
        let (mut rtc, _) = rtc_at(LEAP_DAY_PM);
        put(&mut rtc, REG_B as u8, 0x70 | HOURS_24); // every interrupt on
        put(&mut rtc, REG_C as u8, 0xff);
        put(&mut rtc, REG_D as u8, 0);
        assert_eq!(get(&mut rtc, REG_C as u8), 0);
        assert_eq!(get(&mut rtc, REG_D as u8), VRT);
        assert_eq!(get(&mut rtc, REG_B as u8), 0x70 | HOURS_24);
    }

    #[test]
    fn the_nmi_bit_of_the_index_is_ignored() {
        let (mut rtc, _) = rtc_at(LEAP_DAY_PM);
        put(&mut rtc, 0x80 | 0x40, 0x5a);
        assert_eq!(get(&mut rtc, 0x40), 0x5a);
        assert_eq!(get(&mut rtc, 0x80 | REG_D as u8), VRT);
        assert_eq!(get(&mut rtc, 0x80 | MINUTES as u8), 0x45);
        assert_eq!(rtc.read(0), 0xff, "the index port is write-only");
    }

    #[test]
    fn ram_and_alarms_read_back_what_was_written() {
        let (mut rtc, _) = rtc_at(LEAP_DAY_PM);
        let ram = (0x0e..0x80).filter(|&r| r != CENTURY);
        assert!(ram.clone().all(|r| get(&mut rtc, r) == 0), "starts at 0");
        for r in ram.clone().chain([0x01, 0x03, 0x05]) {
            put(&mut rtc, r, r ^ 0xa5);
        }
        for r in ram.chain([0x01, 0x03, 0x05]) {
            assert_eq!(get(&mut rtc, r), r ^ 0xa5, "register {r:#x}");
        }
        assert_eq!(get(&mut rtc, MINUTES as u8), 0x45, "the time is its own");
    }

    #[test]
    fn set_freezes_the_time_the_guest_writes_and_it_counts_on_after() {
        let (mut rtc, clock) = rtc_at(LEAP_DAY_PM);
        put(&mut rtc, REG_B as u8, SET | HOURS_24);
        let frozen = time_of(&mut rtc);
        clock.fetch_add(100, Ordering::Relaxed);
        assert_eq!(time_of(&mut rtc), frozen, "stopped while SET");
        // Set 2031-12-31 23:59:58 as Linux's rtc-cmos does: SET, the
        // fields, SET off.
        let written = [0x58, 0x59, 0x23, 0x01, 0x31, 0x12, 0x31, 0x20];
        for (reg, byte) in TIME_REGS.into_iter().zip(written) {
            put(&mut rtc, reg as u8, byte);
        }
        clock.fetch_add(100, Ordering::Relaxed);
        assert_eq!(time_of(&mut rtc), written);
        put(&mut rtc, REG_B as u8, HOURS_24);
        let mut expect = written;
        expect[3] = 0x04; // that day was a Wednesday
        assert_eq!(time_of(&mut rtc), expect, "runs from the written time");
        clock.fetch_add(3, Ordering::Relaxed);
        assert_eq!(
            time_of(&mut rtc),
            [0x01, 0x00, 0x00, 0x05, 0x01, 0x01, 0x32, 0x20],
            "into 2032"
        );
    }

    #[test]
    fn a_field_written_while_running_takes_effect_at_once() {
        let (mut rtc, clock) = rtc_at(LEAP_DAY_PM);
        put(&mut rtc, MINUTES as u8, 0x10);
        assert_eq!(get(&mut rtc, MINUTES as u8), 0x10);
        clock.fetch_add(60, Ordering::Relaxed);
        assert_eq!(get(&mut rtc, MINUTES as u8), 0x11, "and keeps counting");
        assert_eq!(get(&mut rtc, HOURS as u8), 0x13);
    }

    #[test]
    fn garbage_time_bytes_do_not_panic() {
        let (mut rtc, _) = rtc_at(LEAP_DAY_PM);
        for format in [0, DM_BINARY, HOURS_24, DM_BINARY | HOURS_24] {
            put(&mut rtc, REG_B as u8, SET | format);
            for reg in TIME_REGS {
                put(&mut rtc, reg as u8, 0xff);
            }
            put(&mut rtc, REG_B as u8, format);
            for reg in 0..=0xff {
                get(&mut rtc, reg);
            }
            put(&mut rtc, MONTH as u8, 0);
            put(&mut rtc, DAY_OF_MONTH as u8, 0);
            time_of(&mut rtc);
        }
        let (far, _) = rtc_at(i64::MAX);
        far.read(1);
        let (before, _) = rtc_at(i64::MIN);
        before.read(1);
    }

    #[test]
    fn calendar_round_trips_and_knows_its_leap_years() {
        for days in (-800_000..800_000).step_by(7) {
            let (y, m, d) = civil_from_days(days);
            assert!((1..=12).contains(&m) && (1..=31).contains(&d));
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(
            days_from_civil(2000, 2, 29) + 1,
            days_from_civil(2000, 3, 1)
        );
        assert_eq!(
            days_from_civil(2100, 2, 28) + 1,
            days_from_civil(2100, 3, 1)
        );
        assert_eq!(
            days_from_civil(2024, 1, 1) - days_from_civil(2023, 1, 1),
            365
        );
        assert_eq!(
            days_from_civil(2025, 1, 1) - days_from_civil(2024, 1, 1),
            366
        );
    }
}
