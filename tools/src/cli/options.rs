//! `bcsim set-fs-option`, `bcsim show-options` and `bcsim umount`: a running mount's options
//! through its control socket, or the superblock's when no mount is running.

use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use serde_json::{Value, json};

use bcsim::control::{default_socket_path, request};
use bcsim::exit;
use bcsim::images::open_device_set;
use fs_core::error::{ErrCode, Error};
use fs_core::opts::{OPTIONS, OptContext, OptFlags, parse_opts};
use fs_core::uuid::Uuid;

use super::out::{self, outln};
use super::{CmdResult, print_json};

const ABOUT: &str = "Set filesystem options, on a running mount or in the superblock";
const LONG_ABOUT: &str = "Set filesystem options, on a running mount or in the superblock.\n\n\
    With a mount of these images running (bcsim mount, which serves a control socket), the \
    options are set on it as bcachefs's sysfs options/ directory sets them: only options that \
    may change at run time; the change wakes allocations waiting on it and is written to the \
    superblock. With no mount running, they are written to the superblock of every image, as \
    'bcachefs set-fs-option' does offline.\n\n\
    Example: bcsim set-fs-option --metadata_replicas=1 dev/*.img";

/// `set-fs-option`'s arguments: one `--NAME=VALUE` flag per filesystem option, from the option
/// table, so every option is listed in `--help` with its range.
pub struct SetOptionArgs {
    /// `name=value` items, in command-line order.
    items: Vec<String>,
    control: Option<PathBuf>,
    json: bool,
    images: Vec<PathBuf>,
}

impl FromArgMatches for SetOptionArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut indexed: Vec<(usize, String)> = Vec::new();
        for d in OPTIONS.iter().filter(|d| d.flags.contains(OptFlags::FS)) {
            if let (Some(at), Some(values)) = (m.indices_of(d.name), m.get_many::<String>(d.name)) {
                indexed.extend(at.zip(values.map(|v| format!("{}={v}", d.name))));
            }
        }
        if let (Some(at), Some(values)) = (m.indices_of("options"), m.get_many::<String>("options")) {
            indexed.extend(at.zip(values.cloned()));
        }
        indexed.sort_by_key(|(at, _)| *at);
        Ok(SetOptionArgs {
            items: indexed.into_iter().map(|(_, v)| v).collect(),
            control: m.get_one::<PathBuf>("control").cloned(),
            json: m.get_flag("json"),
            images: m.get_many::<PathBuf>("images").map(|v| v.cloned().collect()).unwrap_or_default(),
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = SetOptionArgs::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for SetOptionArgs {
    fn augment_args(cmd: Command) -> Command {
        let mut cmd = cmd.about(ABOUT).long_about(LONG_ABOUT);
        for d in OPTIONS.iter().filter(|d| d.flags.contains(OptFlags::FS)) {
            let when = if d.flags.contains(OptFlags::RUNTIME) {
                ""
            } else if d.flags.intersects(OptFlags::MOUNT | OptFlags::MOUNT_OLD) {
                " [offline only]"
            } else {
                " [fixed at format time]"
            };
            cmd = cmd.arg(
                Arg::new(d.name).long(d.name).value_name("VALUE").action(ArgAction::Append).help(format!(
                    "{} ({}){when}",
                    d.help,
                    d.allowed()
                )),
            );
        }
        cmd.arg(
            Arg::new("options")
                .short('o')
                .long("options")
                .value_name("OPTS")
                .action(ArgAction::Append)
                .help("Options as name=value,name=value"),
        )
        .arg(control_arg())
        .arg(Arg::new("json").long("json").action(ArgAction::SetTrue).help("Print what was set as JSON"))
        .arg(images_arg())
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        SetOptionArgs::augment_args(cmd)
    }
}

fn control_arg() -> Arg {
    Arg::new("control")
        .long("control")
        .value_name("PATH")
        .value_parser(clap::value_parser!(PathBuf))
        .help("Control socket of the running mount (default: the one its uuid names)")
}

fn images_arg() -> Arg {
    Arg::new("images")
        .value_name("IMAGE")
        .required(true)
        .num_args(1..)
        .value_parser(clap::value_parser!(PathBuf))
        .help("Image files of one filesystem")
}

/// The socket of the mount of the filesystem on `images`: `--control`, else the one its uuid
/// names. Reads only the superblocks.
fn socket_of(images: &[PathBuf], control: Option<&Path>) -> Result<(PathBuf, Uuid), Error> {
    let set = open_device_set(images, false)?;
    let uuid = set.sb.uuid;
    let path = match control {
        Some(p) => p.to_path_buf(),
        None => default_socket_path(uuid)?,
    };
    Ok((path, uuid))
}

pub fn run_set(args: SetOptionArgs) -> CmdResult {
    let text = args.items.join(",");
    if args.items.iter().all(|i| i.trim().is_empty()) {
        return Err(Error::new(
            ErrCode::InvalidArgument,
            "no option given: e.g. set-fs-option --metadata_replicas=1 IMAGE...",
        ));
    }
    let (path, uuid) = socket_of(&args.images, args.control.as_deref())?;
    if let Some(answer) = request(&path, &format!("set {text}"))? {
        let warnings: Vec<String> = answer
            .get("warnings")
            .and_then(Value::as_array)
            .map(|w| w.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        for w in &warnings {
            eprintln!("bcsim: warning: {w}");
        }
        if args.json {
            print_json(
                &json!({ "uuid": uuid.to_string(), "where": "mount", "set": args.items, "generation": answer.get("generation"), "warnings": warnings }),
            );
        } else {
            outln!("set on the running mount of {uuid}: {text}");
        }
        return Ok(exit::OK);
    }
    if args.control.is_some() {
        return Err(Error::new(ErrCode::ControlSocket, "no mount answers on the control socket given")
            .path(path.display().to_string()));
    }
    // No mount running: the superblock, on every member.
    let parsed = parse_opts(&text, OptContext::Offline)?;
    let mut set = open_device_set(&args.images, true)?;
    set.require_all(false)?;
    for p in &parsed {
        set.sb.opts.set(p.id, p.value.clone())?;
    }
    set.write_super()?;
    if args.json {
        print_json(&json!({ "uuid": uuid.to_string(), "where": "superblock", "set": args.items }));
    } else {
        outln!("no mount of {uuid} running: written to the superblock: {text}");
    }
    Ok(exit::OK)
}

/// Show a filesystem's options: a running mount's live ones, else the superblock's
#[derive(clap::Args)]
pub struct ShowOptionsArgs {
    /// Control socket of the running mount (default: the one its uuid names)
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Print the options as JSON
    #[arg(long)]
    json: bool,
    /// Image files of one filesystem
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

pub fn run_show(args: ShowOptionsArgs) -> CmdResult {
    let (path, uuid) = socket_of(&args.images, args.control.as_deref())?;
    let (source, options, generation) = match request(&path, "show")? {
        Some(answer) => (
            "mount",
            answer.get("options").cloned().unwrap_or(Value::Null),
            answer.get("generation").cloned(),
        ),
        None => {
            let set = open_device_set(&args.images, false)?;
            let map: serde_json::Map<String, Value> = set
                .sb
                .opts
                .fs_options()
                .map(|(id, v)| (id.name().to_owned(), Value::String(id.desc().format(v))))
                .collect();
            ("superblock", Value::Object(map), None)
        }
    };
    if args.json {
        print_json(
            &json!({ "uuid": uuid.to_string(), "source": source, "generation": generation, "options": options }),
        );
        return Ok(exit::OK);
    }
    outln!(
        "options of {uuid} ({}):",
        if source == "mount" { "running mount" } else { "superblock, not mounted" }
    );
    if let Some(map) = options.as_object() {
        out::lines(map.iter().map(|(k, v)| format!("  {k}={}", v.as_str().unwrap_or_default())));
    }
    Ok(exit::OK)
}

/// Unmount a mount held with 'bcsim mount --hold': it writes everything back and exits
#[derive(clap::Args)]
pub struct UmountArgs {
    /// Control socket of the running mount (default: the one its uuid names)
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Image files of one filesystem
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

pub fn run_umount(args: UmountArgs) -> CmdResult {
    let (path, uuid) = socket_of(&args.images, args.control.as_deref())?;
    let Some(answer) = request(&path, "umount")? else {
        return Err(Error::new(
            ErrCode::Enoent,
            format!("filesystem {uuid} is not mounted: no mount answers"),
        )
        .path(path.display().to_string()));
    };
    if answer.get("clean") == Some(&Value::Bool(true)) {
        outln!("{uuid}: unmounted cleanly");
        return Ok(exit::OK);
    }
    let why = answer.get("error").and_then(Value::as_str).unwrap_or("unknown error");
    Err(Error::new(ErrCode::Eio, format!("{uuid}: the unmount failed: {why}")))
}
