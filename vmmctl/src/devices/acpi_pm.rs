//! The ACPI PM1 registers the FADT (boot::acpi) points at: the event
//! block (status, write-1-to-clear, always 0 here; enable, kept) and the
//! control block, where SLP_EN with the S5 sleep type powers off.

use crate::boot::acpi::{PM1_CONTROL_PORT, PM1_EVENT_PORT, S5_SLEEP_TYPE};
use crate::control::Outcome;

const SCI_EN: u16 = 1 << 0;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 7 << SLP_TYP_SHIFT;
const SLP_EN: u16 = 1 << 13;

#[derive(Default)]
pub struct AcpiPm {
    enable: u16,
}

/// True for the ports of the PM1 event and control blocks.
pub fn claims(port: u16) -> bool {
    (PM1_EVENT_PORT..PM1_CONTROL_PORT + 2).contains(&port)
}

impl AcpiPm {
    /// The register bytes at `port` (little endian, as wide as `data`).
    pub fn read(&self, port: u16, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.byte(port.wrapping_add(i as u16));
        }
    }

    fn byte(&self, port: u16) -> u8 {
        let reg = match port & !1 {
            p if p == PM1_EVENT_PORT + 2 => self.enable,
            // Always in ACPI mode.
            PM1_CONTROL_PORT => SCI_EN,
            _ => 0,
        };
        (reg >> (8 * (port & 1))) as u8
    }

    /// A write; returns the outcome if it powers the machine off.
    pub fn write(&mut self, port: u16, data: &[u8]) -> Option<Outcome> {
        let value = data
            .iter()
            .take(2)
            .enumerate()
            .fold(0u16, |v, (i, b)| v | u16::from(*b) << (8 * i));
        if port == PM1_EVENT_PORT + 2 {
            self.enable = value;
        } else if port == PM1_CONTROL_PORT
            && value & SLP_EN != 0
            && (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT == S5_SLEEP_TYPE
        {
            return Some(Outcome::PowerOff);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_slp_en_powers_off_and_nothing_else_does() {
        let mut pm = AcpiPm::default();
        let typ = S5_SLEEP_TYPE << SLP_TYP_SHIFT;
        // Linux writes the type first, then type | SLP_EN.
        assert_eq!(pm.write(PM1_CONTROL_PORT, &typ.to_le_bytes()), None);
        let s3 = (3 << SLP_TYP_SHIFT) | SLP_EN;
        assert_eq!(pm.write(PM1_CONTROL_PORT, &s3.to_le_bytes()), None);
        let off = (typ | SLP_EN).to_le_bytes();
        assert_eq!(pm.write(PM1_CONTROL_PORT, &off), Some(Outcome::PowerOff));
    }

    #[test]
    fn enable_register_keeps_its_value_and_control_reads_acpi_mode() {
        let mut pm = AcpiPm::default();
        pm.write(PM1_EVENT_PORT + 2, &0x0120u16.to_le_bytes());
        let mut v = [0u8; 2];
        pm.read(PM1_EVENT_PORT + 2, &mut v);
        assert_eq!(u16::from_le_bytes(v), 0x0120);
        pm.read(PM1_CONTROL_PORT, &mut v);
        assert_eq!(u16::from_le_bytes(v) & SCI_EN, SCI_EN);
        let mut status = [0xffu8; 2];
        pm.read(PM1_EVENT_PORT, &mut status);
        assert_eq!(status, [0, 0]);
        assert!(claims(0x605) && !claims(0x606) && !claims(0x5ff));
    }
}
