//! Argument parsing and dispatch. Each command module parses its own flags, calls the library
//! and prints; none of them decides anything about an image.

mod crash_states;
mod demo;
mod demo_issues;
mod device;
mod dump;
mod format;
mod fsck;
mod list;
mod list_journal;
mod mount;
mod options;
mod out;
mod repro;
mod run;
mod show_super;
mod sim;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use bcsim::exit;
use fs_core::bpos::BtreeId;
use fs_core::error::{ErrCode, Error};

#[derive(Parser)]
#[command(
    name = "bcsim",
    version,
    about = "A userspace model of bcachefs recovery (btree, key cache, journal, allocator) on image files",
    long_about = "bcsim models the bcachefs recovery machinery on image files, one file per device \
                  (usable behind a loop device), to reproduce recovery bugs and check their fixes.\n\n\
                  Exit codes follow fsck(8): 0 success, 8 operational error, 16 usage error.",
    after_help = "Run 'bcsim demo' to format a default 8-device set in a temporary directory and show it."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Format(Box<format::FormatArgs>),
    #[command(name = "show-super")]
    ShowSuper(show_super::ShowSuperArgs),
    List(list::ListArgs),
    Fsck(fsck::FsckArgs),
    #[command(name = "list-journal")]
    ListJournal(list_journal::ListJournalArgs),
    Mount(mount::MountArgs),
    Run(run::RunArgs),
    Demo(demo::DemoArgs),
    Repro(repro::ReproArgs),
    Dump(dump::DumpArgs),
    Undump(dump::UndumpArgs),
    #[command(name = "set-fs-option", visible_alias = "set-option")]
    SetFsOption(options::SetOptionArgs),
    #[command(name = "show-options")]
    ShowOptions(options::ShowOptionsArgs),
    Umount(options::UmountArgs),
    Device(device::DeviceArgs),
    #[command(name = "crash-states")]
    CrashStates(crash_states::CrashStatesArgs),
    Sim(sim::SimArgs),
}

/// What a command returns: an exit code on success paths, an error otherwise.
pub type CmdResult = Result<u8, Error>;

pub fn main() -> u8 {
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => return clap_exit(&e),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => return clap_exit(&e),
    };
    let sub = matches.subcommand().map(|(_, m)| m);
    let result = match (cli.command, sub) {
        (Command::Format(args), Some(m)) => format::run(*args, m),
        (Command::ShowSuper(args), _) => show_super::run(args),
        (Command::List(args), _) => list::run(args),
        (Command::Fsck(args), _) => fsck::run(args),
        (Command::ListJournal(args), _) => list_journal::run(args),
        (Command::Mount(args), _) => mount::run(args),
        (Command::Run(args), _) => run::run(args),
        (Command::Demo(args), _) => demo::run(args),
        (Command::Repro(args), _) => repro::run(args),
        (Command::Dump(args), _) => dump::run_dump(args),
        (Command::Undump(args), _) => dump::run_undump(args),
        (Command::SetFsOption(args), _) => options::run_set(args),
        (Command::ShowOptions(args), _) => options::run_show(args),
        (Command::Umount(args), _) => options::run_umount(args),
        (Command::Device(args), _) => device::run(args),
        (Command::CrashStates(args), _) => crash_states::run_cmd(args),
        (Command::Sim(args), _) => sim::run(args),
        (Command::Format(_), None) => Ok(exit::USAGE),
    };
    // A failed write to stdout fails a command that otherwise succeeded; a command that failed
    // reports its own error, the one line that explains it.
    let flushed = out::finish();
    match result.and_then(|code| flushed.map(|()| code)) {
        Ok(code) => code,
        Err(e) => {
            for line in kernel_bug_report(&e) {
                eprintln!("{line}");
            }
            eprintln!("bcsim: {e}");
            bcsim::exit_code(&e)
        }
    }
}

/// A simulated kernel BUG (profiles v1.37.5 and v1.39) is printed as the kernel prints one, with
/// the call chain #1107 reported, before the one-line error; nothing for any other error.
fn kernel_bug_report(e: &Error) -> Vec<String> {
    if !e.matches(ErrCode::KernelBug) {
        return Vec::new();
    }
    let msg = e.message();
    let bug = msg.split_once('!').map_or(msg, |(b, _)| b);
    let mut lines = vec![
        "------------[ cut here ]------------".to_owned(),
        format!("{bug}!"),
        "Oops: invalid opcode: 0000 [#1] SMP (simulated: the filesystem stopped dead, nothing more is written)".to_owned(),
        "Call Trace:".to_owned(),
    ];
    let chain = [
        "btree_key_cache_flush_pos",
        "bch2_btree_key_cache_journal_flush",
        "journal_flush_pins",
        "journal_flush_done",
        "bch2_journal_flush_pins",
        "__bch2_fs_recovery",
        "bch2_fs_recovery",
        "__bch2_fs_start",
    ];
    lines.extend(chain.iter().map(|f| format!(" <TASK> {f}")));
    lines.push("---[ end trace ]---".to_owned());
    lines
}

/// Help and version print and succeed; every other parse failure is a usage error (16), not
/// clap's own 2, so scripts see fsck(8) codes throughout.
fn clap_exit(e: &clap::Error) -> u8 {
    use clap::error::ErrorKind;
    let _ = e.print();
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => exit::OK,
        _ => exit::USAGE,
    }
}

/// A btree by its bcachefs name; an unknown name is a usage error listing the known ones.
pub fn parse_btree(name: &str) -> Result<BtreeId, Error> {
    BtreeId::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = BtreeId::ALL.iter().map(|b| b.name()).collect();
        Error::new(
            ErrCode::InvalidArgument,
            format!("unknown btree '{name}': expected one of {}", names.join(", ")),
        )
    })
}

/// Prints a JSON value on one line of stdout.
pub fn print_json(v: &serde_json::Value) {
    out::outln!("{v}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated kernel BUG prints the kernel's BUG line and #1107's call chain, from the key
    /// cache flush up to recovery; other errors print nothing extra.
    #[test]
    fn kernel_bug_prints_the_call_chain() {
        let e = Error::new(
            ErrCode::KernelBug,
            "kernel BUG at fs/bcachefs/btree/key_cache.c:475! (btree_key_cache_flush_pos)",
        );
        let lines = kernel_bug_report(&e);
        assert_eq!(
            lines.get(1).map(String::as_str),
            Some("kernel BUG at fs/bcachefs/btree/key_cache.c:475!")
        );
        let chain: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix(" <TASK> ")).collect();
        assert_eq!(chain.first(), Some(&"btree_key_cache_flush_pos"));
        assert!(chain.contains(&"__bch2_fs_recovery"));
        assert!(kernel_bug_report(&Error::new(ErrCode::Eio, "x")).is_empty());
    }
}
