//! What the command line prints, on stdout and stderr, without `println!`'s panic when
//! the reader has gone: `mlx-serve pull … | head -1` closes the pipe after one line, and
//! the command must neither panic nor stop its work for that. Output after a closed pipe
//! is dropped; any other write failure (a full disk under `> file`) is remembered and
//! reported by [`failure`] when the command ends, so it still exits non-zero.

use std::io::Write;
use std::sync::Mutex;

static FAILURE: Mutex<Option<String>> = Mutex::new(None);

/// Writes `text` to stdout.
pub fn write_out(text: &str) {
    let mut out = std::io::stdout().lock();
    note(out.write_all(text.as_bytes()).and_then(|()| out.flush()), "stdout");
}

/// Writes `text` to stderr.
pub fn write_err(text: &str) {
    note(std::io::stderr().lock().write_all(text.as_bytes()), "stderr");
}

fn note(result: std::io::Result<()>, stream: &str) {
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            let mut f = FAILURE.lock().unwrap_or_else(|p| p.into_inner());
            f.get_or_insert_with(|| format!("cannot write to {stream}: {e}"));
        }
        _ => {}
    }
}

/// The first write failure other than a closed pipe, if any.
pub fn failure() -> Option<String> {
    FAILURE.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// `println!` for the command line: see the module header.
macro_rules! outln {
    () => { $crate::console::write_out("\n") };
    ($($arg:tt)*) => { $crate::console::write_out(&format!("{}\n", format_args!($($arg)*))) };
}

/// `print!` for the command line.
macro_rules! out {
    ($($arg:tt)*) => { $crate::console::write_out(&format!($($arg)*)) };
}

/// `eprintln!` for the command line.
macro_rules! errln {
    ($($arg:tt)*) => { $crate::console::write_err(&format!("{}\n", format_args!($($arg)*))) };
}

pub(crate) use {errln, out, outln};
