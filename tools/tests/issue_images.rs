//! Replays of committed issue image sets, the way the fsck fixtures run: each directory under
//! `tests/images/` (at the top of the repository) holds the metadata dump of a set `bcsim repro`
//! built and, for each command of its script, the expected output (stdout, stderr and exit
//! status, uuids and timings masked). The dumps pin the on-disk format and the behaviour of
//! every profile on the issue's damage. Where a mount's output depends on thread timing (the
//! #1108 set's discard workers), the test checks what each profile must do instead.
//!
//! `cargo test -p bcsim --test issue_images -- --ignored regenerate` rebuilds them (after a
//! deliberate change of format or behaviour; with `BCSIM_KEEP_DUMP=1` only the expected outputs,
//! from the committed dumps); review the diff of the expected outputs.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};

use common::{IMAGES_1108, bcsim};

/// A committed set: its directory under `tests/images/`, how `bcsim repro` builds it and how it
/// is dumped, its images, and its script: (expected-output file, arguments before the images).
struct IssueSet {
    name: &'static str,
    build: &'static [&'static str],
    dump: &'static [&'static str],
    images: &'static [&'static str],
    script: &'static [(&'static str, &'static [&'static str])],
    /// Steps that each run on a fresh restore of the dump: mounts that repair what they find,
    /// whose output the script's later steps would not see again.
    fresh: &'static [(&'static str, &'static [&'static str])],
}

const ISSUE_1107: IssueSet = IssueSet {
    name: "issue-1107",
    build: &["repro", "1107", "--dir", "."],
    dump: &["dump"],
    images: &["hdd0.img", "hdd1.img", "hdd2.img", "hdd3.img", "hdd4.img", "nvme0.img", "nvme1.img"],
    script: &[
        ("expect.mount.v1.37.5.errors-ro", &["mount", "-o", "degraded,behavior=v1.37.5,errors=ro"]),
        ("expect.mount.v1.39.errors-ro", &["mount", "-o", "degraded,behavior=v1.39,errors=ro"]),
        ("expect.mount.fixed.errors-ro", &["mount", "-o", "degraded,behavior=fixed,errors=ro"]),
        ("expect.fsck-y", &["fsck", "-y", "-o", "degraded"]),
        ("expect.fsck-nf", &["fsck", "-nf", "-o", "degraded"]),
        ("expect.mount.after", &["mount", "-o", "degraded"]),
    ],
    // Under the default errors=fix_safe every profile repairs the set as it mounts.
    fresh: &[
        ("expect.mount.v1.37.5", &["mount", "-o", "degraded,behavior=v1.37.5"]),
        ("expect.mount.v1.39", &["mount", "-o", "degraded,behavior=v1.39"]),
        ("expect.mount.fixed", &["mount", "-o", "degraded,behavior=fixed"]),
    ],
};

/// The #1108 set at `--scale 64` (the report's bucket counts divided by 64), dumped with only
/// what a mount reads: its churn leaves some 60 MB of reclaimed journal entries and stale nodes
/// that no mount looks at. The mounts are checked by [`common::reported_1108_behaves`].
const ISSUE_1108: IssueSet = IssueSet {
    name: "issue-1108",
    build: &["repro", "1108", "--dir", ".", "--scale", "64"],
    dump: &["dump", "--live-only"],
    images: &IMAGES_1108,
    script: &[
        ("expect.list-journal", &["list-journal", "-H"]),
        ("expect.fsck-nv", &["fsck", "-nv"]),
        ("expect.fsck-nf", &["fsck", "-nf"]),
    ],
    fresh: &[],
};

/// The no-discard #1108 set (vde keeps its data, so nothing on it can be discarded), built and
/// dumped as the reported one. Its fixed-profile mount is checked by
/// [`common::no_discard_1108_completes_after_set`].
const ISSUE_1108_NO_DISCARD: IssueSet = IssueSet {
    name: "issue-1108-no-discard",
    build: &["repro", "1108", "--dir", ".", "--scale", "64", "--variant", "no-discard"],
    dump: &["dump", "--live-only"],
    images: &IMAGES_1108,
    script: &[("expect.list-journal", &["list-journal", "-H"]), ("expect.fsck-nf", &["fsck", "-nf"])],
    fresh: &[],
};

impl IssueSet {
    fn dir(&self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/images").join(self.name)
    }

    fn dump_file(&self) -> PathBuf {
        self.dir().join(format!("{}.dump", self.name))
    }

    /// Restores the committed dump into `work`.
    fn undump_into(&self, work: &Path) {
        let out = bcsim(&["undump", self.dump_file().to_str().unwrap(), "--dir", "."], work);
        assert_eq!(out.code, 0, "undump {}: {}{}", self.name, out.stdout, out.stderr);
    }

    /// Runs the script on a restore of the dump, then each fresh step on a restore of its own,
    /// returning each step's masked record.
    fn records(&self) -> Vec<(String, String)> {
        let work = tempfile::tempdir().unwrap();
        self.undump_into(work.path());
        let mut records = self.run_steps(self.script, work.path());
        for step in self.fresh {
            let work = tempfile::tempdir().unwrap();
            self.undump_into(work.path());
            records.extend(self.run_steps(std::slice::from_ref(step), work.path()));
        }
        records
    }

    /// Runs `steps` in order on the images in `work`, returning each step's masked record.
    fn run_steps(&self, steps: &[(&str, &[&str])], work: &Path) -> Vec<(String, String)> {
        steps
            .iter()
            .map(|(name, args)| {
                let full: Vec<&str> = args.iter().chain(self.images).copied().collect();
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

    /// Rebuilds the dump (unless `BCSIM_KEEP_DUMP` is set: after a change of behaviour that
    /// leaves the images as they are) and the expected outputs.
    fn regenerate(&self) {
        let dir = self.dir();
        std::fs::create_dir_all(&dir).unwrap();
        if std::env::var_os("BCSIM_KEEP_DUMP").is_none() {
            let build = tempfile::tempdir().unwrap();
            let out = bcsim(self.build, build.path());
            assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
            let dump = self.dump_file();
            let _ = std::fs::remove_file(&dump);
            let out_arg = ["-o", dump.to_str().unwrap()];
            let args: Vec<&str> = self.dump.iter().chain(&out_arg).chain(self.images).copied().collect();
            let out = bcsim(&args, build.path());
            assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        }
        for (name, record) in self.records() {
            std::fs::write(dir.join(name), record).unwrap();
        }
    }

    /// Restores the dump and checks every step of the script against its recorded output.
    fn check_script(&self) {
        for (name, got) in self.records() {
            let want = std::fs::read_to_string(self.dir().join(&name)).unwrap();
            assert_eq!(got, want, "{}: {name} differs from the recorded output", self.name);
        }
    }
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

/// Rebuilds the committed sets and their expected outputs.
#[test]
#[ignore = "rebuilds the committed issue images; run after a deliberate change"]
fn regenerate() {
    ISSUE_1107.regenerate();
    ISSUE_1108.regenerate();
    ISSUE_1108_NO_DISCARD.regenerate();
}

/// The #1107 set, restored from its dump: every profile's mount, then fsck -y, fsck -nf and a
/// mount, each exactly as recorded.
#[test]
fn issue_1107_set_behaves_as_recorded() {
    ISSUE_1107.check_script();
}

/// The #1108 set, restored from its dump: the journal's entry headers, `fsck -nv` and `fsck -nf`
/// exactly as recorded (the unreplayed journal is read and checked, nothing is wrong), then each profile's mount: v1.37.5 stuck
/// for ever on vde, v1.39 and fixed through by discarding during recovery.
#[test]
fn issue_1108_set_behaves_as_reported() {
    ISSUE_1108.check_script();
    let work = tempfile::tempdir().unwrap();
    common::reported_1108_behaves(64, &|name| {
        let dir = work.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        ISSUE_1108.undump_into(&dir);
        dir
    });
}

/// The masking itself: uuids and durations go, other numbers stay.
#[test]
fn mask_hides_uuids_and_durations_only() {
    assert_eq!(
        mask("bcsim (62eb82e4-c3a0-4f53-bcb7-55b6e3deee6b): read in 40.26ms, 7331 keys (1.5s) 4µs dev 3"),
        "bcsim (UUID): read in T, 7331 keys (T) T dev 3"
    );
}

/// The no-discard #1108 set, restored from its dump: the journal's headers and `fsck -nf` as
/// recorded, then fixed parks the split until `set-fs-option --metadata_replicas=1` reaches it.
#[test]
fn issue_1108_no_discard_set_waits_for_the_option() {
    ISSUE_1108_NO_DISCARD.check_script();
    let work = tempfile::tempdir().unwrap();
    ISSUE_1108_NO_DISCARD.undump_into(work.path());
    common::no_discard_1108_completes_after_set(work.path());
}
