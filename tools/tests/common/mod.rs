//! Helpers the command-line test files share: run the built `bcsim`, check a failure the way
//! every bad input must fail, unpack a gzip'd fixture image.

// Each test binary uses a subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Far longer than any wait of a [`Running`] mount takes; only a hang reaches it.
const WATCHDOG: Duration = Duration::from_secs(300);

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the built `bcsim` with `args` in `dir`, which must succeed; returns its stdout.
pub fn ok(args: &[&str], dir: &Path) -> String {
    let out = bcsim(args, dir);
    assert_eq!(out.code, 0, "{args:?}: {}{}", out.stdout, out.stderr);
    out.stdout
}

/// Runs the built `bcsim` with `args` in `dir`.
pub fn bcsim(args: &[&str], dir: &Path) -> Out {
    run_bcsim(Command::new(env!("CARGO_BIN_EXE_bcsim")).args(args), dir)
}

/// [`bcsim`] under `timeout SECS`: a run past it exits 124, which the caller calls a hang.
pub fn bcsim_limited(args: &[&str], dir: &Path, secs: u32) -> Out {
    run_bcsim(Command::new("timeout").arg(secs.to_string()).arg(env!("CARGO_BIN_EXE_bcsim")).args(args), dir)
}

fn run_bcsim(cmd: &mut Command, dir: &Path) -> Out {
    let out = cmd.current_dir(dir).env("XDG_RUNTIME_DIR", dir).output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn finish(child: std::process::Child, stdout: String) -> Out {
    let out = child.wait_with_output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the built `bcsim` with its stdout a pipe whose reader went away before the command
/// started, as under `bcsim ... | true`: every write to stdout fails with EPIPE, however short
/// the output. The pipe is a FIFO opened read-write then write-only, and the read-write end is
/// closed before the spawn, so no reader exists and no timing decides the outcome.
pub fn bcsim_reader_gone(args: &[&str], dir: &Path) -> Out {
    let fifo = tempfile::tempdir().unwrap();
    let path = fifo.path().join("stdout");
    let made = Command::new("mkfifo").arg(&path).status().unwrap();
    assert!(made.success(), "mkfifo failed");
    // On Linux a read-write open of a FIFO does not wait for a peer; the write-only open then
    // finds that reader and does not wait either.
    let reader = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    drop(reader);
    let child = Command::new(env!("CARGO_BIN_EXE_bcsim"))
        .args(args)
        .current_dir(dir)
        .env("XDG_RUNTIME_DIR", dir)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    finish(child, String::new())
}

/// Starts the built `bcsim` with `args` in `dir`, its stdout and stderr pipes.
pub fn spawn_piped(args: &[&str], dir: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_bcsim"))
        .args(args)
        .current_dir(dir)
        .env("XDG_RUNTIME_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs the built `bcsim` with its stdout a pipe read for `lines` lines and then closed, as
/// `bcsim ... | head -n LINES` does; `stdout` holds the lines read. The command only meets
/// EPIPE if it prints more than was read plus a pipe buffer (64 KiB on Linux).
pub fn bcsim_head(args: &[&str], dir: &Path, lines: usize) -> Out {
    let mut child = spawn_piped(args, dir);
    let reader = BufReader::new(child.stdout.take().unwrap());
    let read: Vec<String> = reader.lines().take(lines).map(Result::unwrap).collect();
    // Dropping the reader (taken out of `child`) closes the pipe's only read end.
    finish(child, read.iter().map(|l| format!("{l}\n")).collect())
}

/// Asserts a command whose stdout reader went away stopped quietly: the exit code it has with a
/// reader, no panic, no backtrace, no `bcsim:` error line.
pub fn quiet(out: &Out, code: i32) {
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(!out.stderr.to_lowercase().contains("backtrace"), "{}", out.stderr);
    assert!(!out.stderr.lines().any(|l| l.starts_with("bcsim:")), "{}", out.stderr);
    assert_eq!(out.code, code, "stderr: {}", out.stderr);
}

/// Asserts a failure: the exit code, one stderr line containing `needle`, no panic.
pub fn fails(out: &Out, code: i32, needle: &str) {
    assert_eq!(out.code, code, "stderr: {}", out.stderr);
    assert!(!out.stderr.contains("panicked") && !out.stderr.contains("RUST_BACKTRACE"), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "expected one line: {}", out.stderr);
    assert!(out.stderr.contains(needle), "expected '{needle}' in: {}", out.stderr);
}

/// Unpacks the gzip'd `src` into `dst`.
pub fn gunzip(src: &Path, dst: &Path) {
    let out = Command::new("gzip").arg("-dc").arg(src).output().unwrap();
    assert!(out.status.success(), "gunzip failed on {}", src.display());
    std::fs::write(dst, out.stdout).unwrap();
}

/// A mount running in the background, its stdout and stderr read line by line.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    /// `bcsim mount ARGS IMAGES` in `dir`.
    pub fn mount(dir: &Path, args: &[&str], images: &[&str]) -> Running {
        let mut all = vec!["mount"];
        all.extend_from_slice(args);
        all.extend_from_slice(images);
        let mut child = spawn_piped(&all, dir);
        let (tx, lines) = mpsc::channel();
        // stdout (the recovery log) and stderr (the running filesystem's lines) both feed the
        // one channel; it closes when both have ended.
        let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [stdout, stderr] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Running { child, lines }
    }

    /// The next line, waiting until `deadline`.
    fn next_line(&self, deadline: std::time::Instant) -> Result<String, mpsc::RecvTimeoutError> {
        self.lines.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    }

    /// Lines up to and including the first containing `needle`.
    pub fn until(&mut self, needle: &str) -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + WATCHDOG;
        loop {
            match self.next_line(deadline) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    seen.push(line);
                    if hit {
                        return seen;
                    }
                }
                Err(e) => panic!("no line with {needle:?} ({e}); got:\n{}", seen.join("\n")),
            }
        }
    }

    /// Reads stdout and stderr to their end (the mount exits), failing at the first line
    /// containing `never`; returns the exit code and everything printed.
    pub fn finish(mut self, never: &str) -> (i32, String) {
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + WATCHDOG;
        loop {
            match self.next_line(deadline) {
                Ok(line) => {
                    assert!(!line.contains(never), "{line}; before it:\n{}", seen.join("\n"));
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(e) => panic!("the mount neither ended nor printed ({e}); got:\n{}", seen.join("\n")),
            }
        }
        let code = self.child.wait().unwrap().code().unwrap_or(-1);
        (code, seen.join("\n"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The #1108 member images, in the order of the report.
pub const IMAGES_1108: [&str; 6] = ["hdd0.img", "hdd1.img", "hdd2.img", "hdd3.img", "vde.img", "vdf.img"];

/// What each profile does with the reported #1108 set built at `scale`; `fresh(name)` makes a
/// fresh copy of the set, as the crash left it, and returns its directory. The reporter's
/// kernel (v1.37.5) prints the stuck report, for vde with nothing free and its emptied buckets
/// waiting for a discard, and keeps waiting; v1.39 and fixed discard vde as they go read-write,
/// the split goes ahead without a stuck report, the mount finishes and the set checks clean.
pub fn reported_1108_behaves(scale: u64, fresh: &dyn Fn(&str) -> std::path::PathBuf) {
    let mut m =
        Running::mount(&fresh("old"), &["-o", "behavior=v1.37.5,allocator_stuck_timeout=1"], &IMAGES_1108);
    let first = m.until("Allocator stuck? Waited for");
    let waited: u64 = first
        .last()
        .unwrap()
        .split("Waited for ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(waited >= 1, "reported before allocator_stuck_timeout: {first:?}");
    let report = m.until("the kernel waits here forever");
    let text = report.join("\n");
    let vde = report.iter().find(|l| l.contains("(ssd.vde)")).unwrap();
    assert!(vde.contains(" free 0 ") && vde.contains("btree 2"), "{vde}");
    let nd: u64 = vde.split("need_discard ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(nd >= 9416 / scale, "vde's emptied buckets are not waiting: {vde}");
    assert!(text.contains("request: replicas 2 target ssd watermark reclaim"), "{text}");
    assert!(m.child.try_wait().unwrap().is_none(), "v1.37.5 did not keep waiting");
    drop(m);

    for profile in ["v1.39", "fixed"] {
        let dir = fresh(profile);
        let opts = format!("behavior={profile},allocator_stuck_timeout=1");
        let (code, all) = Running::mount(&dir, &["-o", &opts], &IMAGES_1108).finish("Allocator stuck?");
        assert_eq!(code, 0, "{profile}: {all}");
        // Whether the split found vde's buckets already discarded or waited for the worker
        // depends on which thread runs first: both are the profile's behaviour.
        assert!(all.contains("discard: dev 4: "), "{profile}: vde was not discarded: {all}");
        let fsck = bcsim(&[&["fsck", "-n"][..], &IMAGES_1108].concat(), &dir);
        assert_eq!(fsck.code, 0, "{profile}: fsck -n after the mount: {}{}", fsck.stdout, fsck.stderr);
    }
}

/// The no-discard #1108 set in `dir`, held by a fixed-profile mount: the split parks and is
/// reported (vde has nothing to discard); `set-fs-option --metadata_replicas=1` from another
/// process reaches it through the control socket, it is rebuilt for one replica, and the held
/// mount completes; the new replica count is in the superblock after unmount, and the set
/// checks clean.
pub fn no_discard_1108_completes_after_set(dir: &Path) {
    let mut m =
        Running::mount(dir, &["--hold", "-o", "behavior=fixed,allocator_stuck_timeout=1"], &IMAGES_1108);
    let report = m.until("waiting on: buckets freed");
    assert!(report.iter().any(|l| l.contains("(ssd.vde)") && l.contains(" free 0 ")), "{report:?}");
    let set = ok(&[&["set-fs-option", "--metadata_replicas=1"][..], &IMAGES_1108].concat(), dir);
    assert!(set.contains("set on the running mount"), "{set}");
    m.until("holding until");
    ok(&[&["umount"][..], &IMAGES_1108].concat(), dir);
    let status = m.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let opts = ok(&["show-options", "vde.img"], dir);
    assert!(opts.contains("metadata_replicas") && opts.contains('1'), "{opts}");
    let fsck = bcsim(&[&["fsck", "-n"][..], &IMAGES_1108].concat(), dir);
    assert_eq!(fsck.code, 0, "fsck -n after the mount: {}{}", fsck.stdout, fsck.stderr);
}
