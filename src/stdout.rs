//! The command's report on standard output. A reader that stops early (`phonebak snapshots |
//! head -1`) closes the pipe: the rest of the report is dropped and the command still ends with
//! its own status (a backup whose snapshot was saved exits 0). Any other failure to write (a
//! full disk under `> report.txt`) is kept, and reported when the command ends.

use std::io::{self, Write};
use std::sync::Mutex;

static FAILED: Mutex<Option<io::Error>> = Mutex::new(None);

/// Writes one line of the report; `say!` formats it.
pub fn line(text: std::fmt::Arguments) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(text).and_then(|()| out.write_all(b"\n")) {
        if e.kind() != io::ErrorKind::BrokenPipe {
            FAILED.lock().expect("stdout failure lock").get_or_insert(e);
        }
    }
}

/// Keeps a failure to write the report that a command met on its own writer (`ls` buffers its
/// listing), to be reported like the others when the command ends.
pub fn failed(e: io::Error) {
    if e.kind() != io::ErrorKind::BrokenPipe {
        FAILED.lock().expect("stdout failure lock").get_or_insert(e);
    }
}

/// Flushes the report; the first failure to write it other than a closed pipe, if any.
pub fn finish() -> Option<io::Error> {
    let mut failed = FAILED.lock().expect("stdout failure lock").take();
    if let Err(e) = io::stdout().lock().flush() {
        if e.kind() != io::ErrorKind::BrokenPipe {
            failed.get_or_insert(e);
        }
    }
    failed
}

/// `println!` for the command's report: see the module's comment.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::stdout::line(format_args!($($arg)*))
    };
}

/// Writes one line to standard error, dropping it if standard error is closed (`2>&1 | head -1`):
/// a message that cannot be shown must not stop the command it is about.
pub fn tell_line(text: std::fmt::Arguments) {
    let mut err = io::stderr().lock();
    let _ = err.write_fmt(text).and_then(|()| err.write_all(b"\n"));
}

/// `eprintln!` that never panics: see `tell_line`.
#[macro_export]
macro_rules! tell {
    ($($arg:tt)*) => {
        $crate::stdout::tell_line(format_args!($($arg)*))
    };
}
