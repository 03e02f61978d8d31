//! The guest console on vmmctl's terminal: stdin feeds COM1 (raw mode on a
//! tty, so keys such as Ctrl-C reach the guest), and Ctrl-A starts an
//! escape as in QEMU: Ctrl-A x quits, Ctrl-A Ctrl-A sends one Ctrl-A,
//! Ctrl-A h prints help.

use std::io::{self, Read};
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::control::{Control, Outcome};
use crate::devices::Devices;

const CTRL_A: u8 = 0x01;
pub const HELP: &str = "\r\nvmmctl console escapes:\r\n  \
    Ctrl-A x       quit (the guest is stopped)\r\n  \
    Ctrl-A Ctrl-A  send Ctrl-A to the guest\r\n  \
    Ctrl-A h       this help\r\n";

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Quit,
    Help,
}

/// The escape-sequence state across reads.
#[derive(Default)]
pub struct Escape {
    armed: bool,
}

impl Escape {
    /// Appends the bytes meant for the guest to `out`; returns a command
    /// if the input held one (bytes after a quit are dropped).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<Command> {
        let mut command = None;
        for &b in input {
            if self.armed {
                self.armed = false;
                match b {
                    b'x' | b'X' => return Some(Command::Quit),
                    b'h' | b'H' | b'?' => command = Some(Command::Help),
                    CTRL_A => out.push(CTRL_A),
                    // Not an escape: both keys go to the guest.
                    other => out.extend([CTRL_A, other]),
                }
            } else if b == CTRL_A {
                self.armed = true;
            } else {
                out.push(b);
            }
        }
        command
    }
}

/// Puts the terminal on stdin in raw mode while it lives.
pub struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    /// Raw mode if stdin is a terminal; None (and nothing changed) if not.
    pub fn enable() -> Result<Option<Self>> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return Ok(None);
        }
        let mut t = MaybeUninit::<libc::termios>::uninit();
        // SAFETY: tcgetattr fills the termios on success, checked below.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, t.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error()).context("tcgetattr on stdin");
        }
        // SAFETY: initialised by the successful tcgetattr.
        let saved = unsafe { t.assume_init() };
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: a valid termios for a valid descriptor.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error()).context("tcsetattr (raw mode) on stdin");
        }
        Ok(Some(Self { saved }))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enable`.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}

/// Starts the thread that copies stdin to the guest's serial port. It is
/// not joined: it may sit in read() when the VM ends.
pub fn spawn_input(devices: Arc<Devices>, control: Arc<Control>) -> Result<()> {
    thread::Builder::new()
        .name("console".into())
        .spawn(move || {
            let mut escape = Escape::default();
            let mut buf = [0u8; 256];
            let mut stdin = io::stdin();
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return, // EOF: the guest keeps running
                    Ok(n) => n,
                };
                let mut bytes = Vec::with_capacity(n);
                match escape.feed(&buf[..n], &mut bytes) {
                    Some(Command::Quit) => return control.finish(Outcome::UserQuit),
                    Some(Command::Help) => eprint!("{HELP}"),
                    None => {}
                }
                // The UART's FIFO holds 64 bytes: wait for the guest to
                // drain it rather than drop keys.
                let mut rest = &bytes[..];
                while !rest.is_empty() && !control.stopping() {
                    let taken = devices.serial_input(rest);
                    rest = &rest[taken..];
                    if taken == 0 {
                        thread::sleep(Duration::from_millis(2));
                    }
                }
            }
        })
        .context("cannot start the console thread")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_bytes_pass_through() {
        let mut e = Escape::default();
        let mut out = vec![];
        assert_eq!(e.feed(b"ls\r\x03", &mut out), None);
        assert_eq!(out, b"ls\r\x03");
    }

    #[test]
    fn ctrl_a_x_quits_even_across_reads() {
        let mut e = Escape::default();
        let mut out = vec![];
        assert_eq!(e.feed(b"ab\x01", &mut out), None);
        assert_eq!(e.feed(b"xcd", &mut out), Some(Command::Quit));
        assert_eq!(out, b"ab");
    }

    #[test]
    fn double_ctrl_a_sends_one_and_unknown_escape_sends_both() {
        let mut e = Escape::default();
        let mut out = vec![];
        assert_eq!(e.feed(b"\x01\x01\x01q", &mut out), None);
        assert_eq!(out, b"\x01\x01q");
        out.clear();
        assert_eq!(e.feed(b"\x01h", &mut out), Some(Command::Help));
        assert!(out.is_empty());
    }
}
