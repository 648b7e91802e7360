//! `bcsim mount`: recover a filesystem, print the recovery log, unmount cleanly.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use std::io::Write;
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use bcsim::control::{Control, Phase, Server, default_socket_path};
use bcsim::exit;
use bcsim::images::open_device_set;
use bcsim::recovery::progress::Progress;
use bcsim::recovery::{MountOpts, mount, parse_mount_opts};

use super::out::{self, outln};
use fs_core::error::{ErrCode, Error};

use super::{CmdResult, print_json};

/// Mount (recover) a filesystem, print the recovery log, unmount cleanly
///
/// Reads the superblocks; after an unclean shutdown reads the journal of every device, sorts
/// its keys, runs the recovery passes and replays the journal; then writes everything back and
/// records a clean shutdown. The log lines follow bcachefs's dmesg output.
#[derive(Args)]
pub struct MountArgs {
    /// Mount options, e.g. degraded,fsck,errors=ro,behavior=v1.37.5
    #[arg(short = 'o', long = "options", value_name = "OPTS", default_value = "")]
    options: String,
    /// Print the log, what recovery found and repaired, and a summary as JSON
    #[arg(long)]
    json: bool,
    /// Stay mounted after recovery until SIGINT/SIGTERM or 'bcsim umount'; meanwhile
    /// set-fs-option and show-options talk to this mount through its control socket
    #[arg(long)]
    hold: bool,
    /// Control socket path (default: $XDG_RUNTIME_DIR/bcsim/<uuid>.sock, else
    /// /tmp/bcsim-<uid>/<uuid>.sock)
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Image files of one filesystem
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

pub fn run(args: MountArgs) -> CmdResult {
    let failed_log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    // The text log goes out as recovery writes it (a mount that hangs has said everything up to
    // the hang); `printed` counts what has gone, so the end prints only the rest.
    let printed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let live_log = (!args.json).then(|| {
        let printed = printed.clone();
        bcsim::recovery::LiveLog(std::sync::Arc::new(move |line: &str| {
            out::lines(std::iter::once(line));
            out::flush();
            printed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }))
    });
    let mut mopts = MountOpts {
        progress: Progress::stderr(),
        failed_log: Some(failed_log.clone()),
        live_log,
        ..parse_mount_opts(&args.options)?
    };
    let rest = |lines: &[String]| -> Vec<String> {
        lines.iter().skip(printed.load(std::sync::atomic::Ordering::Relaxed)).cloned().collect()
    };
    let set = open_device_set(&args.images, true)?;
    let control = Control::new(set.sb.uuid, set.sb.members.clone(), |line| {
        let _ = writeln!(std::io::stderr(), "bcsim: {line}");
    });
    let server = serve_control(&control, args.control.clone(), args.hold)?;
    mopts.control = Some(control.clone());
    let mounted = match mount(set, &mopts) {
        Ok(m) => m,
        Err(e) => {
            control.set_phase(Phase::Unmounted(Err(e.to_string())));
            // The log up to the failure, as dmesg shows it before the error.
            if let Ok(lines) = failed_log.lock() {
                out::lines(rest(&lines).iter());
            }
            return Err(e);
        }
    };
    control.set_phase(Phase::Mounted);
    let (log, replayed, read, kept) =
        (mounted.log.clone(), mounted.replayed, mounted.journal_keys_read, mounted.journal_keys_kept);
    let problems: Vec<_> = mounted
        .problems
        .iter()
        .map(|p| json!({ "id": p.err.id(), "name": p.err.name(), "message": p.msg, "fixed": p.fixed }))
        .collect();
    if args.hold {
        if !args.json {
            out::lines(rest(&log));
        }
        out::flush();
        hold(&control, server.as_ref().map(Server::path))?;
    }
    let unmounted = mounted.fs.unmount();
    control.set_phase(Phase::Unmounted(unmounted.as_ref().map(|_| ()).map_err(ToString::to_string)));
    drop(server);
    unmounted?;
    if args.json {
        print_json(&json!({
            "log": log,
            "problems": problems,
            "replayed": replayed.map(|(a, b)| json!([a, b])),
            "journal_keys_read": read,
            "journal_keys_kept": kept,
            "clean_unmount": true,
        }));
    } else {
        if !args.hold {
            out::lines(rest(&log));
        }
        outln!("clean shutdown complete");
    }
    Ok(exit::OK)
}

/// Starts the control socket. A mount of the same filesystem already running is an error; any
/// other failure to serve one only costs this mount its socket, with a warning — unless the
/// socket was asked for (`--control`, `--hold`), which then fails the mount.
fn serve_control(control: &Arc<Control>, path: Option<PathBuf>, hold: bool) -> Result<Option<Server>, Error> {
    let required = hold || path.is_some();
    let started = match path {
        Some(p) => Server::start(control.clone(), p),
        None => default_socket_path(control.uuid()).and_then(|p| Server::start(control.clone(), p)),
    };
    match started {
        Ok(s) => Ok(Some(s)),
        Err(e) if required || e.code() == ErrCode::FsAlreadyMounted => Err(e),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "bcsim: warning: no control socket for this mount: {e}");
            Ok(None)
        }
    }
}

/// Stays mounted until `bcsim umount` or SIGINT/SIGTERM asks for the unmount.
fn hold(control: &Arc<Control>, socket: Option<&std::path::Path>) -> Result<(), Error> {
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| Error::new(ErrCode::Internal, "installing the signal handlers").source(e))?;
    let handle = signals.handle();
    let waiter = {
        let control = control.clone();
        std::thread::spawn(move || {
            if signals.forever().next().is_some() {
                control.request_umount();
            }
        })
    };
    let at = socket.map_or_else(String::new, |p| format!(" (control socket {})", p.display()));
    let _ = writeln!(std::io::stderr(), "bcsim: mounted; holding until SIGINT/SIGTERM or 'bcsim umount'{at}");
    control.wait_umount_request();
    handle.close();
    let _ = waiter.join();
    Ok(())
}
