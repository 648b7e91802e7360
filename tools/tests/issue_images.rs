//! Replays of committed issue image sets, the way the fsck fixtures run: each directory under
//! `tests/images/` (at the top of the repository) holds the metadata dump of a set `bcsim repro`
//! built and, for each command of its script, the expected output (stdout, stderr and exit
//! status, uuids and timings masked). The dumps pin the on-disk format and the behaviour of
//! every profile on the issue's damage.
//!
//! `cargo test -p bcsim --test issue_images -- --ignored regenerate` rebuilds them (after a
//! deliberate change of format or behaviour; with `BCSIM_KEEP_DUMP=1` only the expected outputs,
//! from the committed dump); review the diff of the expected outputs.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};

use common::bcsim;

/// The #1107 set's script: (expected-output file, arguments after the images are appended).
const ISSUE_1107: &[(&str, &[&str])] = &[
    ("expect.mount.v1.37.5", &["mount", "-o", "degraded,behavior=v1.37.5"]),
    ("expect.mount.v1.39", &["mount", "-o", "degraded,behavior=v1.39"]),
    ("expect.mount.fixed", &["mount", "-o", "degraded,behavior=fixed"]),
    ("expect.fsck-y", &["fsck", "-y", "-o", "degraded"]),
    ("expect.fsck-nf", &["fsck", "-nf", "-o", "degraded"]),
    ("expect.mount.after", &["mount", "-o", "degraded"]),
];
const ISSUE_1107_IMAGES: [&str; 7] =
    ["hdd0.img", "hdd1.img", "hdd2.img", "hdd3.img", "hdd4.img", "nvme0.img", "nvme1.img"];

fn set_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/images/issue-1107")
}

/// Replaces uuids by `UUID` and durations (`12.3ms`, `4µs`, `1.2s`) by `T`.
fn mask(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let is_uuid = chars.len() >= i + 36
            && (0..36).all(|k| {
                let c = chars[i + k];
                if matches!(k, 8 | 13 | 18 | 23) { c == '-' } else { c.is_ascii_hexdigit() }
            });
        if is_uuid {
            out.push_str("UUID");
            i += 36;
            continue;
        }
        let starts_number = chars[i].is_ascii_digit() && (i == 0 || !chars[i - 1].is_alphanumeric());
        if starts_number {
            let mut j = i;
            while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == '.') {
                j += 1;
            }
            let unit = ["ms", "µs", "ns", "s"].iter().find(|u| {
                let u: Vec<char> = u.chars().collect();
                chars.get(j..j + u.len()) == Some(&u[..])
                    && chars.get(j + u.len()).is_none_or(|c| !c.is_alphanumeric())
            });
            if let Some(u) = unit {
                out.push('T');
                i = j + u.chars().count();
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Runs the script on the images in `work`, returning each step's masked record.
fn run_script(work: &Path) -> Vec<(String, String)> {
    ISSUE_1107
        .iter()
        .map(|(name, args)| {
            let full: Vec<&str> = args.iter().copied().chain(ISSUE_1107_IMAGES).collect();
            let out = bcsim(&full, work);
            let record = format!(
                "$ bcsim {}\n{}--- stderr\n{}Exit status is {}\n",
                args.join(" "),
                out.stdout,
                out.stderr,
                out.code
            );
            ((*name).to_owned(), mask(&record))
        })
        .collect()
}

fn undump_into(work: &Path) {
    let dump = set_dir().join("issue-1107.dump");
    let out = bcsim(&["undump", dump.to_str().unwrap(), "--dir", "."], work);
    assert_eq!(out.code, 0, "undump: {}{}", out.stdout, out.stderr);
}

/// Rebuilds the #1107 dump and its expected outputs.
#[test]
#[ignore = "rebuilds the committed issue images; run after a deliberate change"]
fn regenerate() {
    let dir = set_dir();
    std::fs::create_dir_all(&dir).unwrap();
    // BCSIM_KEEP_DUMP=1: only the recorded outputs, from the committed dump (after a change of
    // behaviour that leaves the images as they are).
    if std::env::var_os("BCSIM_KEEP_DUMP").is_none() {
        let build = tempfile::tempdir().unwrap();
        let out = bcsim(&["repro", "1107", "--dir", "."], build.path());
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        let dump = dir.join("issue-1107.dump");
        let _ = std::fs::remove_file(&dump);
        let args: Vec<&str> =
            ["dump", "-o", dump.to_str().unwrap()].into_iter().chain(ISSUE_1107_IMAGES).collect();
        let out = bcsim(&args, build.path());
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    }
    let work = tempfile::tempdir().unwrap();
    undump_into(work.path());
    for (name, record) in run_script(work.path()) {
        std::fs::write(dir.join(name), record).unwrap();
    }
}

/// The #1107 set, restored from its dump: every profile's mount, then fsck -y, fsck -nf and a
/// mount, each exactly as recorded.
#[test]
fn issue_1107_set_behaves_as_recorded() {
    let work = tempfile::tempdir().unwrap();
    undump_into(work.path());
    for (name, got) in run_script(work.path()) {
        let want = std::fs::read_to_string(set_dir().join(&name)).unwrap();
        assert_eq!(got, want, "{name} differs from the recorded output");
    }
}

/// The masking itself: uuids and durations go, other numbers stay.
#[test]
fn mask_hides_uuids_and_durations_only() {
    assert_eq!(
        mask("bcsim (62eb82e4-c3a0-4f53-bcb7-55b6e3deee6b): read in 40.26ms, 7331 keys (1.5s) 4µs dev 3"),
        "bcsim (UUID): read in T, 7331 keys (T) T dev 3"
    );
}
