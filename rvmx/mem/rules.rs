// SPDX-License-Identifier: GPL-2.0

//! What a memory-region request may do: the checks of
//! `RVMX_SET_USER_MEMORY_REGION` that need no kernel.
//! Pure logic: also compiled into the host unit tests.

const PAGE_SIZE: u64 = 4096;
/// Flags a slot may have (RVMX_MEM_READONLY).
pub(crate) const VALID_FLAGS: u32 = 1 << 1;
pub(crate) const MAX_SLOTS: u32 = 32;
/// Guest-physical addresses EPT maps (48 bits).
pub(crate) const MAX_GPA: u64 = 1 << 48;
/// The largest slot: 64 GiB, 16 Mi pinned pages.
pub(crate) const MAX_SLOT_SIZE: u64 = 64 << 30;
/// The end of the user half of the x86-64 address space.
const USER_END: u64 = 1 << 47;

/// A slot as the request describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Region {
    pub(crate) slot: u32,
    pub(crate) flags: u32,
    pub(crate) gpa: u64,
    pub(crate) size: u64,
    pub(crate) uaddr: u64,
}

impl Region {
    fn end(&self) -> u64 {
        self.gpa + self.size
    }

    pub(crate) fn overlaps(&self, other: &Region) -> bool {
        self.gpa < other.end() && other.gpa < self.end()
    }
}

/// What the request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Create,
    Delete,
    /// Same range and memory, other flags.
    SetFlags,
}

/// Why the request is refused; each maps to one errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// EINVAL: unknown flags, slot number, misalignment, wraparound, size
    /// or address range, deleting an absent slot, or moving or resizing one.
    Invalid,
    /// EEXIST: the range overlaps another slot.
    Overlap,
}

/// Checks `req` against the slots that exist.
pub(crate) fn check(req: &Region, existing: &[Region]) -> Result<Change, Refusal> {
    if req.flags & !VALID_FLAGS != 0 || req.slot >= MAX_SLOTS {
        return Err(Refusal::Invalid);
    }
    let current = existing.iter().find(|r| r.slot == req.slot);
    if req.size == 0 {
        return current.map(|_| Change::Delete).ok_or(Refusal::Invalid);
    }
    let aligned = (req.gpa | req.size | req.uaddr).is_multiple_of(PAGE_SIZE);
    let gpa_end = req.gpa.checked_add(req.size);
    let user_end = req.uaddr.checked_add(req.size);
    if !aligned
        || req.size > MAX_SLOT_SIZE
        || gpa_end.is_none_or(|end| end > MAX_GPA)
        || user_end.is_none_or(|end| end > USER_END)
    {
        return Err(Refusal::Invalid);
    }
    if let Some(cur) = current {
        return if (cur.gpa, cur.size, cur.uaddr) == (req.gpa, req.size, req.uaddr) {
            Ok(Change::SetFlags)
        } else {
            Err(Refusal::Invalid)
        };
    }
    if existing.iter().any(|r| r.overlaps(req)) {
        return Err(Refusal::Overlap);
    }
    Ok(Change::Create)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(slot: u32, gpa: u64, size: u64) -> Region {
        Region {
            slot,
            flags: 0,
            gpa,
            size,
            uaddr: 0x7f00_0000_0000_u64.wrapping_add(gpa),
        }
    }

    #[test]
    fn creates_deletes_and_changes_flags() {
        let slots = [region(0, 0, 0x10_0000)];
        assert_eq!(
            check(&region(1, 0x10_0000, 0x1000), &slots),
            Ok(Change::Create)
        );
        assert_eq!(check(&region(0, 0, 0), &slots), Ok(Change::Delete));
        let ro = Region {
            flags: VALID_FLAGS,
            ..slots[0]
        };
        assert_eq!(check(&ro, &slots), Ok(Change::SetFlags));
    }

    #[test]
    fn refuses_overlap_with_eexist() {
        let slots = [region(0, 0x1000, 0x3000)];
        assert_eq!(
            check(&region(1, 0x3000, 0x1000), &slots),
            Err(Refusal::Overlap)
        );
        assert_eq!(check(&region(1, 0, 0x2000), &slots), Err(Refusal::Overlap));
        assert_eq!(check(&region(1, 0, 0x1000), &slots), Ok(Change::Create));
        assert_eq!(
            check(&region(1, 0x4000, 0x1000), &slots),
            Ok(Change::Create)
        );
    }

    #[test]
    fn refuses_bad_requests_with_einval() {
        let slots = [region(0, 0, 0x1000)];
        let bad = [
            Region {
                flags: 1,
                ..region(1, 0x1000, 0x1000)
            },
            region(MAX_SLOTS, 0x1000, 0x1000),
            region(1, 0x1001, 0x1000),
            region(1, 0x1000, 0x1800),
            Region {
                uaddr: 0x1234,
                ..region(1, 0x1000, 0x1000)
            },
            region(1, !0xfff, 0x2000),
            region(1, MAX_GPA - 0x1000, 0x2000),
            region(1, 0x1000, MAX_SLOT_SIZE + 0x1000),
            Region {
                uaddr: USER_END - 0x1000,
                ..region(1, 0x1000, 0x2000)
            },
            Region {
                uaddr: !0xfff,
                ..region(1, 0x1000, 0x2000)
            },
            region(5, 0, 0),
            region(0, 0x2000, 0x1000),
            region(0, 0, 0x2000),
        ];
        for req in bad {
            assert_eq!(check(&req, &slots), Err(Refusal::Invalid), "{req:?}");
        }
    }
}
