//! QEMU's isa-debug-exit at port 0xf4: a guest write of `code` ends the VM
//! with exit status (code << 1) | 1. Test kernels report results with it.

use crate::control::Outcome;

pub const PORT: u16 = 0xf4;

/// The outcome of an `out` of 1, 2 or 4 bytes to the port.
pub fn write(data: &[u8]) -> Outcome {
    let mut value = [0u8; 4];
    let n = data.len().min(4);
    value[..n].copy_from_slice(&data[..n]);
    Outcome::DebugExit(u32::from_le_bytes(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_width_is_a_little_endian_code() {
        assert_eq!(write(&[0x21]), Outcome::DebugExit(0x21));
        assert_eq!(write(&[0x34, 0x12]), Outcome::DebugExit(0x1234));
        assert_eq!(write(&[1, 0, 0, 0x80]), Outcome::DebugExit(0x8000_0001));
    }
}
