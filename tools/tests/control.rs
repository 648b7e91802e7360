//! The control socket of a running mount, `set-fs-option`, `show-options` and `umount`, through
//! the built binary. Each test keeps its sockets in its own directory (`XDG_RUNTIME_DIR`), and
//! waits for a held mount by reading its "holding" line, never by sleeping.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use common::{bcsim, fails, spawn_piped};

/// A `bcsim mount --hold` running in the background.
struct Held {
    child: Child,
    stderr: BufReader<std::process::ChildStderr>,
}

impl Held {
    /// Starts a held mount of `images` and returns once it says it is holding.
    fn start(dir: &Path, images: &[&str]) -> Held {
        let mut args = vec!["mount", "--hold"];
        args.extend_from_slice(images);
        let mut child = spawn_piped(&args, dir);
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let mut held = Held { child, stderr };
        let mut line = String::new();
        loop {
            line.clear();
            assert!(held.stderr.read_line(&mut line).unwrap() > 0, "held mount ended before holding");
            if line.contains("holding until") {
                return held;
            }
        }
    }

    /// Waits for the mount to exit: its code, stdout and the rest of its stderr.
    fn wait(mut self) -> (i32, String, String) {
        let (mut stdout, mut rest) = (String::new(), String::new());
        self.child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
        self.stderr.read_to_string(&mut rest).unwrap();
        let status = self.child.wait().unwrap();
        (status.code().unwrap_or(-1), stdout, rest)
    }
}

/// A test that fails leaves no mount running behind it.
impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn format(dir: &Path) {
    let out =
        bcsim(&["format", "--size", "64M", "--label", "ssd.a", "a.img", "--label", "hdd.b", "b.img"], dir);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

fn socket(dir: &Path) -> PathBuf {
    let sockets: Vec<PathBuf> =
        std::fs::read_dir(dir.join("bcsim")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(sockets.len(), 1, "{sockets:?}");
    sockets.into_iter().next().unwrap()
}

/// Sends raw bytes as one request and returns the answer line.
fn raw(path: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    // The mount may answer and close before all of an oversized request is sent: the write
    // then fails with EPIPE, and the answer is still there to read.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).unwrap();
    answer
}

/// A running mount takes RUNTIME options through its socket, refuses the rest with the
/// option's name and why, shows the live values, and writes the change to the superblock, where
/// it is found after the unmount. Bad requests get one error line each and leave the mount as
/// it was; the socket is 0600 in a 0700 directory; a second mount of the same filesystem is
/// refused; `umount` ends the mount cleanly.
#[test]
fn running_mount_options_through_the_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    format(dir);
    let held = Held::start(dir, &["a.img", "b.img"]);
    let sock = socket(dir);
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(dir.join("bcsim")).unwrap().permissions().mode() & 0o777, 0o700);

    let out = bcsim(&["set-fs-option", "--metadata_replicas=2", "a.img", "b.img"], dir);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("set on the running mount"), "{}", out.stdout);
    let out = bcsim(&["set-option", "-o", "metadata_target=ssd,discard=0", "a.img", "b.img"], dir);
    assert_eq!(out.code, 0, "{}", out.stderr);

    fails(
        &bcsim(&["set-fs-option", "--behavior=v1.39", "a.img", "b.img"], dir),
        16,
        "option behavior cannot be set on a mounted filesystem",
    );
    fails(
        &bcsim(&["set-fs-option", "--metadata_replicas=9", "a.img", "b.img"], dir),
        16,
        "metadata_replicas",
    );
    fails(
        &bcsim(&["set-fs-option", "--metadata_target=nvme", "a.img", "b.img"], dir),
        16,
        "no member device has that label",
    );
    fails(&bcsim(&["set-fs-option", "-o", "nosuch=1", "a.img", "b.img"], dir), 16, "unknown option 'nosuch'");

    for (request, needle) in [
        (&b"garbage\n"[..], "unknown request 'garbage'"),
        (&b"\n"[..], "empty request"),
        (&[b'x'; 5000][..], "request longer than 4096 bytes"),
        (&b"set \xff\xfe\n"[..], "not UTF-8"),
        (&b"set\n"[..], "no option given"),
        (&b"set errors=panic\n"[..], "not modelled"),
    ] {
        let answer = raw(&sock, request);
        assert!(answer.contains(r#""ok":false"#) && answer.contains(needle), "{answer}");
    }
    // Many clients at once: each gets an answer, served or told the mount is busy.
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let sock = sock.clone();
            std::thread::spawn(move || raw(&sock, b"status\n"))
        })
        .collect();
    for c in clients {
        let answer = c.join().unwrap();
        assert!(answer.contains(r#""phase":"mounted""#) || answer.contains("too many requests"), "{answer}");
    }

    let out = bcsim(&["show-options", "--json", "a.img", "b.img"], dir);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["source"], "mount");
    assert_eq!(v["generation"], 3, "{v}");
    assert_eq!(v["options"]["metadata_replicas"], "2");
    assert_eq!(v["options"]["metadata_target"], "ssd");
    assert_eq!(v["options"]["discard"], "0");

    fails(&bcsim(&["mount", "a.img", "b.img"], dir), 8, "already mounted");
    // Nothing else that writes the images runs beside the mount; fsck -n warns.
    fails(&bcsim(&["fsck", "-y", "a.img", "b.img"], dir), 8, "fsck with repairs works offline only");
    fails(&bcsim(&["run", "--ops", "10", "a.img", "b.img"], dir), 8, "a workload run works offline only");
    fails(&bcsim(&["device", "resize", "a.img", "128M"], dir), 8, "resize works offline only");
    let out = bcsim(&["fsck", "-n", "a.img", "b.img"], dir);
    assert!(out.stderr.contains("is mounted: fsck -n reads what is on disk"), "{}", out.stderr);

    let out = bcsim(&["umount", "a.img", "b.img"], dir);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (code, stdout, stderr) = held.wait();
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("clean shutdown complete"), "{stdout}");
    assert!(stderr.contains("opt change: metadata_replicas=2"), "{stderr}");
    assert!(!sock.exists(), "the socket outlives its mount");

    let out = bcsim(&["show-options", "--json", "a.img", "b.img"], dir);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["source"], "superblock");
    assert_eq!(v["options"]["metadata_replicas"], "2", "the change was not written to the superblock");
    fails(&bcsim(&["umount", "a.img", "b.img"], dir), 8, "is not mounted");
}

/// A socket left by a killed mount does not answer: the next mount replaces it. SIGTERM ends a
/// held mount with a clean unmount.
#[test]
fn stale_socket_is_replaced_and_sigterm_unmounts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    format(dir);
    // Killed (SIGKILL, when dropped): no chance to remove its socket.
    drop(Held::start(dir, &["a.img", "b.img"]));
    let sock = socket(dir);
    assert!(sock.exists());

    let held = Held::start(dir, &["a.img", "b.img"]);
    let answer = raw(&sock, b"status\n");
    assert!(answer.contains(r#""phase":"mounted""#), "{answer}");
    let pid = held.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let (code, stdout, stderr) = held.wait();
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("clean shutdown complete"), "{stdout}");
    let out = bcsim(&["fsck", "-n", "a.img", "b.img"], dir);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}

/// With no mount running, set-fs-option writes the superblock of every member; options fixed
/// at format time and mount-only ones are refused by name, and nothing is written.
#[test]
fn offline_set_fs_option_writes_the_superblock() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    format(dir);
    let out = bcsim(&["set-fs-option", "--metadata_replicas=2", "--behavior=v1.37.5", "a.img", "b.img"], dir);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("written to the superblock"), "{}", out.stdout);
    for img in ["a.img", "b.img"] {
        let out = bcsim(&["show-super", img], dir);
        assert!(out.stdout.contains("metadata_replicas") && out.stdout.contains("v1.37.5"), "{}", out.stdout);
    }
    let before = std::fs::read(dir.join("a.img")).unwrap();
    fails(&bcsim(&["set-fs-option", "--btree_node_size=128k", "a.img", "b.img"], dir), 16, "btree_node_size");
    fails(&bcsim(&["set-fs-option", "-o", "degraded", "a.img", "b.img"], dir), 16, "degraded");
    fails(&bcsim(&["set-fs-option", "a.img", "b.img"], dir), 16, "no option given");
    assert!(std::fs::read(dir.join("a.img")).unwrap() == before, "a refused set wrote the image");
    let out = bcsim(&["mount", "a.img", "b.img"], dir);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// Fewer replicas are never silent. In the fixed profile `-o metadata_replicas=1` is a recovery
/// option: the mount says it writes short of the filesystem's 2, counts replicas_written_short
/// in the superblock, and `fsck -nf` lists the nodes written with one replica (exit 4) until
/// `fsck -yf` rewrites them. v1.37.5 refuses the option at mount with the kernel's message and
/// writes nothing short.
#[test]
fn fewer_replicas_at_mount_are_recorded_and_listed() {
    for behavior in ["v1.37.5", "fixed"] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ok = |args: &[&str]| common::ok(args, dir);
        let profile = format!("behavior={behavior}");
        ok(&["format", "--size", "64M", "--metadata-replicas", "2", "-o", &profile, "a.img", "b.img"]);
        ok(&["run", "--ops", "200", "--seed", "2", "--crash-after", "150", "a.img", "b.img"]);
        let log = ok(&["mount", "-o", "metadata_replicas=1", "a.img", "b.img"]);
        if behavior == "v1.37.5" {
            assert!(
                log.contains("option may no longer be specified at mount time; set via sysfs opts dir"),
                "{log}"
            );
            ok(&["fsck", "-nf", "a.img", "b.img"]);
            continue;
        }
        assert!(log.contains("metadata_replicas=1 for this mount, below the filesystem's 2"), "{log}");
        // The superblock says errors are recorded: fsck checks the clean filesystem without -f.
        let sb = ok(&["show-super", "a.img"]);
        assert!(sb.contains("Errors:                  recorded"), "{sb}");
        let out = bcsim(&["fsck", "-n", "-v", "a.img", "b.img"], dir);
        assert_eq!(out.code, 4, "{}{}", out.stdout, out.stderr);
        assert!(
            out.stdout.contains("replicas_written_short")
                && out.stdout.contains("1 replicas of metadata_replicas=2"),
            "{}",
            out.stdout
        );
        let out = bcsim(&["show-super", "a.img"], dir);
        assert!(out.stdout.contains("replicas_written_short"), "{}", out.stdout);
        let out = bcsim(&["fsck", "-y", "a.img", "b.img"], dir);
        assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
        ok(&["fsck", "-nf", "a.img", "b.img"]);
        // Repaired: the mark is gone, and a clean filesystem gets the quick check again.
        assert!(ok(&["fsck", "-n", "a.img", "b.img"]).contains("quick check only"));
    }
}
