//! Helpers the command-line test files share: run the built `bcsim`, check a failure the way
//! every bad input must fail, unpack a gzip'd fixture image.

// Each test binary uses a subset of these helpers.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the built `bcsim` with `args` in `dir`.
pub fn bcsim(args: &[&str], dir: &Path) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_bcsim")).args(args).current_dir(dir).output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
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
