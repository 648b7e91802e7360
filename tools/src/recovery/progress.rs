//! Progress of long recovery work, in the style of v1.39's log: `journal replay: N%, done X/Y
//! keys`, at most once per interval (10 s by default). On a terminal the line is redrawn in
//! place as a bar; in a log or pipe each report is a line of its own.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Where progress goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProgressSink {
    /// Nowhere (library callers, tests of other things).
    #[default]
    Off,
    /// Standard error: the command line's mount and fsck.
    Stderr,
    /// The recovery log (reports in order with the rest; tests set a zero interval).
    Log,
}

/// How progress is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub sink: ProgressSink,
    /// At most one report per this long.
    pub every: Duration,
}

impl Default for Progress {
    fn default() -> Self {
        Progress { sink: ProgressSink::Off, every: Duration::from_secs(10) }
    }
}

impl Progress {
    /// What the command line uses: standard error, every 10 s.
    pub fn stderr() -> Progress {
        Progress { sink: ProgressSink::Stderr, ..Progress::default() }
    }
}

/// One long piece of work being reported.
pub struct Meter {
    progress: Progress,
    what: String,
    unit: &'static str,
    last: Instant,
    bar_drawn: bool,
}

impl Meter {
    pub fn new(progress: Progress, what: impl Into<String>, unit: &'static str) -> Meter {
        Meter { progress, what: what.into(), unit, last: Instant::now(), bar_drawn: false }
    }

    /// Reports `done` of `total` if an interval has passed since the last report; log lines go
    /// to `log`.
    pub fn tick(&mut self, done: usize, total: usize, log: &mut Vec<String>) {
        if self.progress.sink == ProgressSink::Off || self.last.elapsed() < self.progress.every {
            return;
        }
        self.last = Instant::now();
        let pct = done.saturating_mul(100).checked_div(total).unwrap_or(100);
        let line = format!("{}: {pct}%, done {done}/{total} {}", self.what, self.unit);
        match self.progress.sink {
            ProgressSink::Off => {}
            ProgressSink::Log => log.push(line),
            ProgressSink::Stderr => {
                let mut err = std::io::stderr().lock();
                if err.is_terminal() {
                    let filled = pct.min(100) / 5;
                    let bar = format!("{}{}", "#".repeat(filled), " ".repeat(20 - filled));
                    let _ = write!(err, "\r{}: [{bar}] {pct}% {done}/{total} {}", self.what, self.unit);
                    self.bar_drawn = true;
                } else {
                    let _ = writeln!(err, "{line}");
                }
            }
        }
    }

    /// Ends a bar drawn in place with a newline.
    pub fn finish(&mut self) {
        if self.bar_drawn {
            let _ = writeln!(std::io::stderr());
            self.bar_drawn = false;
        }
    }
}
