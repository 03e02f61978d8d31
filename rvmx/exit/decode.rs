// SPDX-License-Identifier: GPL-2.0

//! Decoding the instruction that touched MMIO: the MOV family Linux's
//! `readX`/`writeX` and simple drivers use (MOV r/m<->r, MOV r/m<-imm,
//! MOVZX), with operand-size, address-size, segment, LOCK and REX
//! prefixes, in 16-, 32- and 64-bit code. The exit already gives the
//! guest-physical address, so only the access size, direction, register or
//! immediate, and the instruction length matter.
//! Pure logic: also compiled into the host unit tests.

/// The code segment's default operand and address size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CodeMode {
    Bits16,
    Bits32,
    Bits64,
}

/// A general-purpose register operand. `high_byte` means AH/CH/DH/BH
/// (byte operand, no REX, register number 4-7 = bits 15:8 of reg - 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reg {
    pub(crate) num: u8,
    pub(crate) high_byte: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// Memory to register: the loaded value, zero-extended, goes to `dest`,
    /// which is `dest_bytes` wide (1 and 2 merge into the register, 4
    /// zero-extends to 64 bits, 8 replaces it).
    Load {
        dest: Reg,
        dest_bytes: u8,
    },
    StoreReg(Reg),
    StoreImm(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MmioInsn {
    /// Instruction length in bytes.
    pub(crate) len: u8,
    /// Bytes accessed in memory: 1, 2, 4 or 8.
    pub(crate) size: u8,
    pub(crate) op: Op,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn next(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        (self.pos + n <= self.bytes.len()).then(|| self.pos += n)
    }

    fn imm(&mut self, n: usize) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..n {
            v |= u64::from(self.next()?) << (8 * i);
        }
        Some(v)
    }
}

/// Skips the memory operand's SIB byte and displacement after ModRM.
fn skip_memory_operand(c: &mut Cursor<'_>, modrm: u8, addr16: bool) -> Option<()> {
    let (md, rm) = (modrm >> 6, modrm & 7);
    if md == 3 {
        // A register operand cannot have touched memory.
        return None;
    }
    if addr16 {
        let disp = match md {
            0 if rm == 6 => 2,
            0 => 0,
            1 => 1,
            _ => 2,
        };
        return c.skip(disp);
    }
    let mut disp = match md {
        0 if rm == 5 => 4,
        0 => 0,
        1 => 1,
        _ => 4,
    };
    if rm == 4 {
        let sib = c.next()?;
        if md == 0 && sib & 7 == 5 {
            disp = 4;
        }
    }
    c.skip(disp)
}

pub(crate) fn decode(bytes: &[u8], mode: CodeMode) -> Option<MmioInsn> {
    let mut c = Cursor {
        bytes: &bytes[..bytes.len().min(15)],
        pos: 0,
    };
    let (mut opsize16, mut addr_override, mut rex) = (false, false, 0u8);
    let mut op = c.next()?;
    loop {
        match op {
            0x66 => opsize16 = true,
            0x67 => addr_override = true,
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0xf0 => {}
            _ => break,
        }
        op = c.next()?;
    }
    if mode == CodeMode::Bits64 && op & 0xf0 == 0x40 {
        rex = op;
        op = c.next()?;
    }
    let rex_w = rex & 8 != 0;
    let addr16 = match mode {
        CodeMode::Bits16 => !addr_override,
        CodeMode::Bits32 => addr_override,
        CodeMode::Bits64 => false,
    };
    // Operand size of a non-byte operation: 0x66 toggles the default.
    let word: u8 = if mode == CodeMode::Bits64 && rex_w {
        8
    } else if (mode == CodeMode::Bits16) != opsize16 {
        2
    } else {
        4
    };
    let reg_of = |modrm: u8, byte: bool| {
        let num = ((modrm >> 3) & 7) | if rex & 4 != 0 { 8 } else { 0 };
        let high_byte = byte && rex == 0 && (4..8).contains(&num);
        Reg {
            num: if high_byte { num - 4 } else { num },
            high_byte,
        }
    };
    let (size, op) = match op {
        0x88..=0x8b => {
            let modrm = c.next()?;
            skip_memory_operand(&mut c, modrm, addr16)?;
            let byte = op & 1 == 0;
            let size = if byte { 1 } else { word };
            let reg = reg_of(modrm, byte);
            if op & 2 == 0 {
                (size, Op::StoreReg(reg))
            } else {
                (
                    size,
                    Op::Load {
                        dest: reg,
                        dest_bytes: size,
                    },
                )
            }
        }
        0xc6 | 0xc7 => {
            let modrm = c.next()?;
            if modrm & 0x38 != 0 {
                return None;
            }
            skip_memory_operand(&mut c, modrm, addr16)?;
            let size = if op == 0xc6 { 1 } else { word };
            // 64-bit stores take a sign-extended 32-bit immediate.
            let imm = c.imm(usize::from(size.min(4)))?;
            let imm = if size == 8 {
                imm as u32 as i32 as i64 as u64
            } else {
                imm
            };
            (size, Op::StoreImm(imm))
        }
        0x0f => {
            let op2 = c.next()?;
            if op2 != 0xb6 && op2 != 0xb7 {
                return None;
            }
            let modrm = c.next()?;
            skip_memory_operand(&mut c, modrm, addr16)?;
            let size = if op2 == 0xb6 { 1 } else { 2 };
            (
                size,
                Op::Load {
                    dest: reg_of(modrm, false),
                    dest_bytes: word,
                },
            )
        }
        _ => return None,
    };
    Some(MmioInsn {
        len: c.pos as u8,
        size,
        op,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use CodeMode::*;

    fn reg(num: u8) -> Reg {
        Reg {
            num,
            high_byte: false,
        }
    }

    #[test]
    fn linux_readl_writel() {
        // mov eax, [rdi]
        assert_eq!(
            decode(&[0x8b, 0x07], Bits64),
            Some(MmioInsn {
                len: 2,
                size: 4,
                op: Op::Load {
                    dest: reg(0),
                    dest_bytes: 4
                }
            })
        );
        // mov [rsi+0x10], edx
        assert_eq!(
            decode(&[0x89, 0x56, 0x10], Bits64),
            Some(MmioInsn {
                len: 3,
                size: 4,
                op: Op::StoreReg(reg(2))
            })
        );
        // mov rax, [rbx+rcx*8+0x12345678]
        assert_eq!(
            decode(&[0x48, 0x8b, 0x84, 0xcb, 0x78, 0x56, 0x34, 0x12], Bits64),
            Some(MmioInsn {
                len: 8,
                size: 8,
                op: Op::Load {
                    dest: reg(0),
                    dest_bytes: 8
                }
            })
        );
        // mov r9w, [rip+disp32]
        assert_eq!(
            decode(&[0x66, 0x44, 0x8b, 0x0d, 1, 2, 3, 4], Bits64),
            Some(MmioInsn {
                len: 8,
                size: 2,
                op: Op::Load {
                    dest: reg(9),
                    dest_bytes: 2
                }
            })
        );
    }

    #[test]
    fn bytes_and_high_bytes() {
        // mov [rax], ah (no REX: register 4 is AH)
        assert_eq!(
            decode(&[0x88, 0x20], Bits64),
            Some(MmioInsn {
                len: 2,
                size: 1,
                op: Op::StoreReg(Reg {
                    num: 0,
                    high_byte: true
                })
            })
        );
        // mov [rax], spl (REX: register 4 is SPL)
        assert_eq!(
            decode(&[0x40, 0x88, 0x20], Bits64),
            Some(MmioInsn {
                len: 3,
                size: 1,
                op: Op::StoreReg(reg(4))
            })
        );
        // movzx ecx, byte [rdx]
        assert_eq!(
            decode(&[0x0f, 0xb6, 0x0a], Bits64),
            Some(MmioInsn {
                len: 3,
                size: 1,
                op: Op::Load {
                    dest: reg(1),
                    dest_bytes: 4
                }
            })
        );
    }

    #[test]
    fn immediates() {
        // mov dword [0x3000], 0xaa (SIB, disp32)
        assert_eq!(
            decode(&[0xc7, 0x04, 0x25, 0, 0x30, 0, 0, 0xaa, 0, 0, 0], Bits64),
            Some(MmioInsn {
                len: 11,
                size: 4,
                op: Op::StoreImm(0xaa)
            })
        );
        // mov qword [rax], -1 (sign-extended)
        assert_eq!(
            decode(&[0x48, 0xc7, 0x00, 0xff, 0xff, 0xff, 0xff], Bits64),
            Some(MmioInsn {
                len: 7,
                size: 8,
                op: Op::StoreImm(u64::MAX)
            })
        );
        // mov byte [bx+si], 7 in 16-bit code
        assert_eq!(
            decode(&[0xc6, 0x00, 7], Bits16),
            Some(MmioInsn {
                len: 3,
                size: 1,
                op: Op::StoreImm(7)
            })
        );
    }

    #[test]
    fn operand_and_address_sizes() {
        // 16-bit code: mov ax, [0x1234] (disp16); with 66: mov eax
        assert_eq!(
            decode(&[0x8b, 0x06, 0x34, 0x12], Bits16),
            Some(MmioInsn {
                len: 4,
                size: 2,
                op: Op::Load {
                    dest: reg(0),
                    dest_bytes: 2
                }
            })
        );
        assert_eq!(
            decode(&[0x66, 0x8b, 0x06, 0x34, 0x12], Bits16),
            Some(MmioInsn {
                len: 5,
                size: 4,
                op: Op::Load {
                    dest: reg(0),
                    dest_bytes: 4
                }
            })
        );
        // 32-bit code with 67: 16-bit addressing
        assert_eq!(
            decode(&[0x67, 0x89, 0x06, 0x34, 0x12], Bits32),
            Some(MmioInsn {
                len: 5,
                size: 4,
                op: Op::StoreReg(reg(0))
            })
        );
        // 32-bit code: REX bytes are INC/DEC, not prefixes
        assert_eq!(decode(&[0x48, 0x8b, 0x07], Bits32), None);
    }

    #[test]
    fn refuses_what_it_cannot_emulate() {
        assert_eq!(decode(&[0x8b, 0xc0], Bits64), None, "register operand");
        assert_eq!(decode(&[0x01, 0x07], Bits64), None, "ADD");
        assert_eq!(decode(&[0xc7, 0x08, 0, 0, 0, 0], Bits64), None, "C7 /1");
        assert_eq!(decode(&[0x8b], Bits64), None, "truncated");
        assert_eq!(decode(&[0x66; 20], Bits64), None, "prefixes only");
    }
}
