//! Standard output for every command: the only place that writes to stdout.
//!
//! Rust ignores SIGPIPE, so once stdout's reader has gone (`bcsim list ... | head -n 1`) every
//! write fails with EPIPE, and `println!` panics on it. Here the rules are:
//!
//! 1. The first write that fails closes the output for good: later writes are dropped without
//!    being formatted, and [`lines`] stops taking items, so a long listing stops promptly.
//! 2. A closed output never cuts the work short. The command goes on and returns what it would
//!    have returned with a reader: `mount` still unmounts cleanly, `fsck -y` still repairs, and
//!    fsck's exit code still reports the filesystem, not the pipe.
//! 3. EPIPE means the reader has all it wanted: it is no error, and nothing is said about it.
//! 4. Any other write error (a full disk behind a redirect) is the command's failure: [`finish`]
//!    returns it as an operational error (exit 8), once, however many writes it stopped.
//!
//! Commands print from the main thread only, so the state is that thread's.

use std::cell::RefCell;
use std::fmt;
use std::io::{self, Write};

use fs_core::error::{ErrCode, Error};

/// Where stdout stands.
enum State {
    /// Writes go through.
    Open,
    /// The reader went away: writes are dropped, and that is no error (rule 3).
    ReaderGone,
    /// A write failed otherwise: writes are dropped, and [`finish`] reports this (rule 4).
    Failed(io::Error),
}

thread_local! {
    static STATE: RefCell<State> = const { RefCell::new(State::Open) };
}

fn closed_by(err: io::Error) -> State {
    if err.kind() == io::ErrorKind::BrokenPipe { State::ReaderGone } else { State::Failed(err) }
}

/// True while stdout still takes output.
pub fn is_open() -> bool {
    STATE.with_borrow(|state| matches!(state, State::Open))
}

/// Writes `args` to stdout, and a newline after them if `newline`; does nothing once stdout is
/// closed. Use `out!` and `outln!`, which do not even format their arguments then.
pub fn write(args: fmt::Arguments<'_>, newline: bool) {
    STATE.with_borrow_mut(|state| {
        if !matches!(state, State::Open) {
            return;
        }
        let mut stdout = io::stdout().lock();
        let written =
            stdout.write_fmt(args).and_then(|()| if newline { stdout.write_all(b"\n") } else { Ok(()) });
        if let Err(err) = written {
            *state = closed_by(err);
        }
    });
}

/// Prints each item on a line of its own, and stops taking items once stdout is closed: items
/// made lazily (`keys.iter().map(key_text)`) are then no longer made.
pub fn lines<T: fmt::Display>(items: impl IntoIterator<Item = T>) {
    for item in items {
        if !is_open() {
            return;
        }
        write(format_args!("{item}"), true);
    }
}

/// Flushes what was printed so far, for a command that goes on running (a held mount): its
/// reader sees the output now. A failure closes the output as a failed write does.
pub fn flush() {
    STATE.with_borrow_mut(|state| {
        if matches!(state, State::Open)
            && let Err(err) = io::stdout().lock().flush()
        {
            *state = closed_by(err);
        }
    });
}

/// Flushes stdout at the end of a command. Ok if all output reached it or its reader went away;
/// the first other write error as an operational error otherwise. Later output is dropped.
pub fn finish() -> Result<(), Error> {
    STATE.with_borrow_mut(|state| {
        if matches!(state, State::Open)
            && let Err(err) = io::stdout().lock().flush()
        {
            *state = closed_by(err);
        }
        match std::mem::replace(state, State::ReaderGone) {
            State::Failed(err) => Err(Error::new(ErrCode::Eio, "cannot write to stdout").source(err)),
            State::Open | State::ReaderGone => Ok(()),
        }
    })
}

/// `print!` through [`write`]: once stdout is closed, the arguments are not even formatted.
macro_rules! out {
    ($($arg:tt)*) => {
        if $crate::cli::out::is_open() {
            $crate::cli::out::write(format_args!($($arg)*), false)
        }
    };
}

/// `println!` through [`write`]: once stdout is closed, the arguments are not even formatted.
macro_rules! outln {
    () => {
        $crate::cli::out::write(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        if $crate::cli::out::is_open() {
            $crate::cli::out::write(format_args!($($arg)*), true)
        }
    };
}

pub(crate) use {out, outln};
