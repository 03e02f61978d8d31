// SPDX-License-Identifier: GPL-2.0

//! Anonymous-inode files (VM and vCPU file descriptors), as KVM makes them.
//!
//! The kernel has no Rust abstraction for new anon-inode fds, so this is one:
//! an object implementing [`AnonFile`] becomes the private data of a new file
//! (`anon_inode_getfd`), whose `file_operations` route ioctl, mmap and release
//! to it. The file holds a reference on this module (its `owner`) and an
//! `Arc` of the object, dropped when the last reference to the file goes.
//! Objects with a `read` (stats files) are installed by their own code
//! through `install_with`, which supplies the vtable.

use core::marker::PhantomData;

use kernel::{
    bindings,
    ffi::{c_int, c_long, c_uint, c_ulong, c_void},
    mm::virt::VmaNew,
    module::this_module,
    prelude::*,
    sync::{Arc, ArcBorrow},
    types::ForeignOwnable,
    uaccess::{UserPtr, UserSlice, UserSliceWriter},
};

extern "C" {
    fn anon_inode_getfd(
        name: *const u8,
        fops: *const c_void,
        priv_: *mut c_void,
        flags: c_int,
    ) -> c_int;
}

/// `O_RDWR | O_CLOEXEC`: VM and vCPU fds are not inherited across exec.
const FD_FLAGS: c_int = (1 << 1) | (1 << 19);

/// An object that lives behind an anonymous-inode file descriptor.
#[vtable]
pub(crate) trait AnonFile: Send + Sync + Sized + 'static {
    /// The name of the inode, shown in /proc/PID/fd (e.g. "rvmx-vm").
    const NAME: &'static CStr;

    fn ioctl(this: ArcBorrow<'_, Self>, cmd: u32, arg: usize) -> Result<isize>;

    fn mmap(_this: ArcBorrow<'_, Self>, _vma: &VmaNew) -> Result {
        build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Reads from file offset `pos` into `out` (its length is the count);
    /// returns the bytes written there, 0 at the end of the file.
    fn read(_this: ArcBorrow<'_, Self>, _out: &mut UserSliceWriter, _pos: usize) -> Result<usize> {
        build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }
}

/// Makes a file for `obj` with `make(name, fops, private_data)`, which
/// returns the new fd; `obj` is freed if it fails. For files that need
/// other flags than `install` gives.
pub(crate) fn install_with<T: AnonFile>(
    obj: Arc<T>,
    make: impl FnOnce(*const u8, *const c_void, *mut c_void) -> Result<i32>,
) -> Result<i32> {
    let data = obj.into_foreign();
    let fops: *const bindings::file_operations = Vtable::<T>::build();
    match make(T::NAME.as_char_ptr(), fops.cast(), data) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            // SAFETY: `make` failed, so no file took `data`, which came
            // from `into_foreign`.
            drop(unsafe { Arc::<T>::from_foreign(data) });
            Err(e)
        }
    }
}

/// Creates a new file descriptor for `obj` in the calling process.
pub(crate) fn install<T: AnonFile>(obj: Arc<T>) -> Result<i32> {
    let data = obj.into_foreign();
    // SAFETY: `NAME` is NUL-terminated and static, the vtable is static, and
    // `data` came from `into_foreign`; the file takes ownership of it if and
    // only if the call succeeds.
    let fd = unsafe {
        anon_inode_getfd(
            T::NAME.as_char_ptr(),
            (&raw const *Vtable::<T>::build()).cast(),
            data,
            FD_FLAGS,
        )
    };
    if fd < 0 {
        // SAFETY: the call failed, so `data` is still ours, from `into_foreign`.
        drop(unsafe { Arc::<T>::from_foreign(data) });
        return Err(Error::from_errno(fd));
    }
    Ok(fd)
}

struct Vtable<T: AnonFile>(PhantomData<T>);

impl<T: AnonFile> Vtable<T> {
    const VTABLE: bindings::file_operations = bindings::file_operations {
        owner: this_module::<crate::RvmxModule>().as_ptr(),
        release: Some(Self::release),
        unlocked_ioctl: Some(Self::ioctl),
        mmap: if T::HAS_MMAP { Some(Self::mmap) } else { None },
        read: if T::HAS_READ { Some(Self::read) } else { None },
        // As KVM's stats files: offsets come with pread.
        llseek: if T::HAS_READ {
            Some(bindings::noop_llseek)
        } else {
            None
        },
        ..pin_init::zeroed()
    };

    const fn build() -> &'static bindings::file_operations {
        &Self::VTABLE
    }

    /// # Safety
    ///
    /// `file` must be a file `install` created for a `T`, being released.
    unsafe extern "C" fn release(_inode: *mut bindings::inode, file: *mut bindings::file) -> c_int {
        // SAFETY: `install` stored an `Arc<T>` from `into_foreign` as the
        // private data; release runs once, after every other operation.
        drop(unsafe { Arc::<T>::from_foreign((*file).private_data) });
        0
    }

    /// # Safety
    ///
    /// `file` must be a file `install` created for a `T`.
    unsafe extern "C" fn ioctl(file: *mut bindings::file, cmd: c_uint, arg: c_ulong) -> c_long {
        // SAFETY: the private data is an `Arc<T>` (see `install`), alive
        // until `release`, which cannot run during an ioctl on the file.
        let this = unsafe { Arc::<T>::borrow((*file).private_data) };
        match T::ioctl(this, cmd, arg as usize) {
            Ok(ret) => ret as c_long,
            Err(err) => err.to_errno() as c_long,
        }
    }

    /// # Safety
    ///
    /// `file` must be a file `install` created for a `T`, and `vma` a VMA
    /// being set up by mmap of it.
    unsafe extern "C" fn mmap(
        file: *mut bindings::file,
        vma: *mut bindings::vm_area_struct,
    ) -> c_int {
        // SAFETY: as in `ioctl`: mmap runs between install and release.
        let this = unsafe { Arc::<T>::borrow((*file).private_data) };
        // SAFETY: the caller provides a VMA undergoing its initial setup.
        let vma = unsafe { VmaNew::from_raw(vma) };
        match T::mmap(this, vma) {
            Ok(()) => 0,
            Err(err) => err.to_errno(),
        }
    }

    /// # Safety
    ///
    /// `file` must be a file `install_with` created for a `T`, and `pos`
    /// the position of this read.
    unsafe extern "C" fn read(
        file: *mut bindings::file,
        buf: *mut u8,
        count: usize,
        pos: *mut bindings::loff_t,
    ) -> isize {
        // SAFETY: as in `ioctl`: read runs between install and release.
        let this = unsafe { Arc::<T>::borrow((*file).private_data) };
        // SAFETY: the VFS passes a valid position for this read.
        let at = unsafe { *pos };
        let Ok(at_usize) = usize::try_from(at) else {
            return EINVAL.to_errno() as isize;
        };
        let mut out = UserSlice::new(UserPtr::from_addr(buf as usize), count).writer();
        match T::read(this, &mut out, at_usize) {
            Ok(n) => {
                // SAFETY: as above; the VFS expects the position advanced.
                unsafe { *pos = at.saturating_add(n as bindings::loff_t) };
                n as isize
            }
            Err(err) => err.to_errno() as isize,
        }
    }
}
