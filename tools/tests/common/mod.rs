//! Helpers the command-line test files share: run the built `bcsim`, check a failure the way
//! every bad input must fail, unpack a gzip'd fixture image.

// Each test binary uses a subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

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
