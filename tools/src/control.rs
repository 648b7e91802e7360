//! The control socket of a running mount: bcsim's stand-in for the sysfs `options/` directory.
//!
//! A mount serves a Unix socket from the moment it has read the superblock, through recovery,
//! until it has unmounted. Other processes talk to it with `bcsim set-fs-option`,
//! `bcsim show-options` and `bcsim umount`.
//!
//! **Where.** `$XDG_RUNTIME_DIR/bcsim/<uuid>.sock`, or `/tmp/bcsim-<uid>/<uuid>.sock` without a
//! runtime directory. The directory is made 0700 and must be the user's own and closed to
//! others (it is refused otherwise); the socket is 0600. A socket file that does not answer was
//! left by a mount that was killed: it is replaced. One that answers means the filesystem is
//! mounted already (`fs_already_mounted`).
//!
//! **Protocol.** One request per connection: a line of at most [`MAX_REQUEST`] bytes, sent
//! within [`REQUEST_TIMEOUT`]; one JSON line back, `{"ok":true,...}` or
//! `{"ok":false,"code":...,"error":...}`. A bad request gets its error line and changes nothing.
//! At most [`MAX_CLIENTS`] requests are served at once; others are told the mount is busy.
//!
//! | request | answer |
//! |---|---|
//! | `status` | uuid, pid, phase (`starting`, `recovery`, `mounted`, `unmounted`) |
//! | `show` | the live options and their generation |
//! | `set NAME=VALUE[,NAME=VALUE...]` | the new generation |
//! | `umount` | once the mount has unmounted (or failed to) |
//!
//! **Setting an option** follows the kernel's sysfs store: parse (only `RUNTIME` options), the
//! pre-set hook (a target must name a member), set (the live options' generation moves, which
//! wakes waiting allocations), then the post-set hook: `opt change: NAME=VALUE` is logged and
//! the option is written to the superblock, as bcachefs's `bch2_opt_set_sb` does. A change made
//! before recovery has assembled the filesystem is written when it has.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use fs_core::error::{ErrCode, Error, Result};
use fs_core::opts::{LiveOpts, OptContext, OptId, OptValue, ParsedOpt, parse_opts};
use fs_core::sb::Member;
use fs_core::sync::{Arc, AtomicBool, Condvar, Mutex, Ordering, Weak, thread};
use fs_core::uuid::Uuid;

use crate::fs::{FsShared, LogSink};

/// The longest request line, in bytes.
pub const MAX_REQUEST: usize = 4096;
/// How long a client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests served at once.
pub const MAX_CLIENTS: usize = 8;

/// Where a mount stands, as `status` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Recovery,
    Mounted,
    /// Unmounted: cleanly, or with the error that ended the mount.
    Unmounted(std::result::Result<(), String>),
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Recovery => "recovery",
            Phase::Mounted => "mounted",
            Phase::Unmounted(_) => "unmounted",
        }
    }
}

struct State {
    live: Option<Arc<LiveOpts>>,
    fs: Option<Weak<FsShared>>,
    /// Changes made before the filesystem was assembled, written to its superblock then.
    pending_sb: Vec<ParsedOpt>,
    phase: Phase,
    umount_requested: bool,
}

/// What the control socket acts on: the mount's live options, its filesystem once assembled,
/// its phase, and whether someone asked it to unmount.
pub struct Control {
    uuid: Uuid,
    members: Vec<Member>,
    /// Where `opt change` lines go, and, once the filesystem is assembled, what it logs while
    /// running (stuck allocator reports, discards): the mount's log.
    log: LogSink,
    state: Mutex<State>,
    changed: Condvar,
}

impl Control {
    /// The control state of a mount of the filesystem `uuid` with these members; `log` receives
    /// the lines the post-set hook logs and those the running filesystem logs.
    pub fn new(uuid: Uuid, members: Vec<Member>, log: impl Fn(&str) + Send + Sync + 'static) -> Arc<Control> {
        Arc::new(Control {
            uuid,
            members,
            log: Arc::new(log),
            state: Mutex::new(State {
                live: None,
                fs: None,
                pending_sb: Vec::new(),
                phase: Phase::Starting,
                umount_requested: false,
            }),
            changed: Condvar::new(),
        })
    }

    pub fn uuid(&self) -> Uuid {
        self.uuid
    }

    /// Recovery has built the live options: from now on they can be shown and set.
    pub fn attach_opts(&self, live: Arc<LiveOpts>) {
        let mut st = self.state.lock();
        st.live = Some(live);
        st.phase = Phase::Recovery;
    }

    /// Recovery has assembled the filesystem: changes made so far go into its superblock (they
    /// are written with its next superblock write), and later ones are written at once.
    pub(crate) fn attach_fs(&self, fs: &Arc<FsShared>) {
        fs.set_klog_sink(self.log.clone());
        let pending = {
            let mut st = self.state.lock();
            st.fs = Some(Arc::downgrade(fs));
            std::mem::take(&mut st.pending_sb)
        };
        let mut set = fs.set();
        for p in pending {
            // Validated when it was set live; a failure here would be a bug, and the live
            // value stands either way.
            let _ = set.sb.opts.set(p.id, p.value);
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        self.state.lock().phase = phase;
        self.changed.notify_all();
    }

    pub fn phase(&self) -> Phase {
        self.state.lock().phase.clone()
    }

    /// Asks a held mount to unmount.
    pub fn request_umount(&self) {
        self.state.lock().umount_requested = true;
        self.changed.notify_all();
    }

    /// Waits until someone asks the mount to unmount (`bcsim umount`, or a signal through
    /// [`Control::request_umount`]).
    pub fn wait_umount_request(&self) {
        let mut st = self.state.lock();
        while !st.umount_requested {
            st = self.changed.wait(st);
        }
    }

    /// The live options as `name: value`, and their generation.
    pub fn show(&self) -> Result<Value> {
        let live = self.live()?;
        let (opts, generation) = live.snapshot();
        let map: serde_json::Map<String, Value> = opts
            .fs_options()
            .map(|(id, v)| (id.name().to_owned(), Value::String(id.desc().format(v))))
            .collect();
        Ok(json!({ "options": map, "generation": generation }))
    }

    fn live(&self) -> Result<Arc<LiveOpts>> {
        self.state
            .lock()
            .live
            .clone()
            .ok_or_else(|| Error::new(ErrCode::Eagain, "the mount has not read its options yet: try again"))
    }

    /// Sets options on the running mount: all of `text` or none of it. Returns the new
    /// generation and any warning (an option set but not written to the superblock).
    pub fn set_options(&self, text: &str) -> Result<(u64, Vec<String>)> {
        let parsed = parse_opts(text, OptContext::Runtime)?;
        if parsed.is_empty() {
            return Err(Error::new(ErrCode::ControlRequestInvalid, "set: no option given (set NAME=VALUE)"));
        }
        for p in &parsed {
            self.pre_set(p)?;
        }
        let live = self.live()?;
        let mut generation = live.generation();
        let mut warnings = Vec::new();
        for p in parsed {
            generation = live.set(p.id, p.value.clone())?;
            (self.log)(&format!("opt change: {}={}", p.id.name(), p.id.desc().format(&p.value)));
            if let Err(e) = self.persist(&p) {
                warnings.push(format!("{} set, but not written to the superblock: {e}", p.id.name()));
            }
        }
        Ok((generation, warnings))
    }

    /// The pre-set hook: checks a value against this filesystem (the parser checked it against
    /// the option's range). A target must name at least one member.
    fn pre_set(&self, p: &ParsedOpt) -> Result<()> {
        if let (OptId::MetadataTarget | OptId::ForegroundTarget, OptValue::Str(t)) = (p.id, &p.value)
            && !t.is_empty()
            && !self.members.iter().any(|m| !m.is_unused() && m.in_target(t))
        {
            return Err(Error::new(
                ErrCode::OptionValueInvalid,
                format!("option {}={t}: no member device has that label or label group", p.id.name()),
            ));
        }
        Ok(())
    }

    /// The post-set hook's superblock write.
    fn persist(&self, p: &ParsedOpt) -> Result<()> {
        let fs = {
            let mut st = self.state.lock();
            match st.fs.as_ref().map(Weak::upgrade) {
                Some(Some(fs)) => fs,
                Some(None) => return Err(Error::new(ErrCode::Erofs, "the filesystem is unmounting")),
                None => {
                    st.pending_sb.push(p.clone());
                    return Ok(());
                }
            }
        };
        fs.health().check_rw()?;
        let mut set = fs.set();
        set.sb.opts.set(p.id, p.value.clone())?;
        set.write_super()
    }

    /// Answers one request.
    fn answer(&self, request: Result<Request<'_>>) -> Value {
        let result = request.and_then(|r| match r {
            Request::Status => Ok(json!({
                "uuid": self.uuid.to_string(),
                "pid": std::process::id(),
                "phase": self.phase().name(),
            })),
            Request::Show => self.show(),
            Request::Set(text) => self
                .set_options(text)
                .map(|(generation, warnings)| json!({ "generation": generation, "warnings": warnings })),
            Request::Umount => Ok(self.umount_and_wait()),
        });
        match result {
            Ok(mut v) => {
                if let Some(o) = v.as_object_mut() {
                    o.insert("ok".to_owned(), Value::Bool(true));
                }
                v
            }
            Err(e) => error_answer(&e),
        }
    }

    /// Asks for an unmount and waits until the mount has done it.
    fn umount_and_wait(&self) -> Value {
        let mut st = self.state.lock();
        st.umount_requested = true;
        self.changed.notify_all();
        loop {
            if let Phase::Unmounted(r) = &st.phase {
                return match r {
                    Ok(()) => json!({ "clean": true }),
                    Err(e) => json!({ "clean": false, "error": e }),
                };
            }
            st = self.changed.wait(st);
        }
    }
}

fn error_answer(e: &Error) -> Value {
    json!({ "ok": false, "code": e.code().name(), "error": e.to_string(), "message": e.message() })
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

/// The default socket path of filesystem `uuid`, creating its directory (0700) if needed.
pub fn default_socket_path(uuid: Uuid) -> Result<PathBuf> {
    let uid = rustix::process::getuid().as_raw();
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("bcsim"),
        None => PathBuf::from(format!("/tmp/bcsim-{uid}")),
    };
    ensure_private_dir(&dir, uid)?;
    Ok(dir.join(format!("{uuid}.sock")))
}

fn ensure_private_dir(dir: &Path, uid: u32) -> Result<()> {
    let io = |e: std::io::Error, what: &str| {
        Error::new(ErrCode::ControlSocket, format!("{what} the control socket directory"))
            .path(dir.display().to_string())
            .source(e)
    };
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(e, "creating")),
    }
    let md = std::fs::symlink_metadata(dir).map_err(|e| io(e, "reading"))?;
    let refuse = |why: &str| {
        Err(Error::new(ErrCode::ControlSocket, format!("control socket directory {why}"))
            .path(dir.display().to_string()))
    };
    if !md.is_dir() {
        return refuse("is not a directory");
    }
    if md.uid() != uid {
        return refuse("belongs to another user");
    }
    if md.mode() & 0o077 != 0 {
        return refuse("is open to other users (it must be mode 0700)");
    }
    Ok(())
}

/// A control socket being served.
pub struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Server {
    /// Serves `control` at `path`. A socket already there that answers is a mount of this
    /// filesystem already running; one that does not was left by a killed mount and is
    /// replaced.
    pub fn start(control: Arc<Control>, path: PathBuf) -> Result<Server> {
        let at = || path.display().to_string();
        if let Ok(md) = std::fs::symlink_metadata(&path) {
            if !md.file_type().is_socket() {
                return Err(Error::new(
                    ErrCode::ControlSocket,
                    "something other than a socket is in the way",
                )
                .path(at()));
            }
            if UnixStream::connect(&path).is_ok() {
                return Err(Error::new(
                    ErrCode::FsAlreadyMounted,
                    format!("filesystem {} is already mounted: its control socket answers", control.uuid()),
                )
                .path(at()));
            }
            std::fs::remove_file(&path).map_err(|e| {
                Error::new(ErrCode::ControlSocket, "removing a stale control socket").path(at()).source(e)
            })?;
        }
        let listener = UnixListener::bind(&path).map_err(|e| {
            Error::new(ErrCode::ControlSocket, "binding the control socket").path(at()).source(e)
        })?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
            Error::new(ErrCode::ControlSocket, "setting the control socket's mode").path(at()).source(e)
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let stop = stop.clone();
            thread::Builder::new()
                .name("bcsim-control".to_owned())
                .spawn(move || accept_loop(&listener, &control, &stop))
                .map_err(|e| Error::new(ErrCode::ControlSocket, "starting the control thread").source(e))?
        };
        Ok(Server { path, stop, accept: Some(accept) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops serving and removes the socket; requests in flight are answered first.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(accept) = self.accept.take() else { return };
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which sees the stop flag.
        let _ = UnixStream::connect(&self.path);
        let _ = accept.join();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The requests being served: the accept loop counts them, and waits for them at shutdown.
#[derive(Default)]
struct Clients {
    active: Mutex<usize>,
    idle: Condvar,
}

impl Clients {
    fn enter(&self) -> bool {
        let mut n = self.active.lock();
        if *n >= MAX_CLIENTS {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self) {
        let mut n = self.active.lock();
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.idle.notify_all();
        }
    }

    fn wait_idle(&self) {
        let mut n = self.active.lock();
        while *n > 0 {
            n = self.idle.wait(n);
        }
    }
}

fn accept_loop(listener: &UnixListener, control: &Arc<Control>, stop: &AtomicBool) {
    let clients = Arc::new(Clients::default());
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(mut stream) = conn else { continue };
        if !clients.enter() {
            let busy = Error::new(ErrCode::Eagain, "the mount is serving too many requests: try again");
            let _ = writeln!(stream, "{}", error_answer(&busy));
            continue;
        }
        let (control, clients2) = (control.clone(), clients.clone());
        let spawned = thread::Builder::new().name("bcsim-control-client".to_owned()).spawn(move || {
            serve(stream, &control);
            clients2.leave();
        });
        if spawned.is_err() {
            clients.leave();
        }
    }
    // Every request is bounded in time (an unmount request ends as the mount unmounts).
    clients.wait_idle();
}

/// Reads one bounded request and answers it.
fn serve(stream: UnixStream, control: &Control) {
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
    let answer = match read_request(&stream) {
        Ok(line) => control.answer(parse_request(&line)),
        Err(e) => error_answer(&e),
    };
    let mut w = &stream;
    let _ = writeln!(w, "{answer}");
}

/// The request line a client sent, without its newline: at most [`MAX_REQUEST`] bytes, within
/// [`REQUEST_TIMEOUT`].
fn read_request(stream: &UnixStream) -> Result<Vec<u8>> {
    let mut reader = BufReader::new(stream.take(MAX_REQUEST as u64 + 1));
    let mut buf = Vec::new();
    match reader.read_until(b'\n', &mut buf) {
        Ok(_) => {}
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            return Err(Error::new(
                ErrCode::ControlRequestInvalid,
                format!("request not sent within {} s", REQUEST_TIMEOUT.as_secs()),
            ));
        }
        Err(e) => return Err(Error::new(ErrCode::ControlRequestInvalid, "reading the request").source(e)),
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    Ok(buf)
}

/// One request of the protocol.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Status,
    Show,
    /// `set NAME=VALUE[,NAME=VALUE...]`: the text after the verb.
    Set(&'a str),
    Umount,
}

/// Parses a request line (without its newline): UTF-8 text of at most [`MAX_REQUEST`] bytes,
/// a verb, and for `set` the options. Anything else is a `control_request_invalid` error whose
/// message says what was wrong.
pub fn parse_request(line: &[u8]) -> Result<Request<'_>> {
    if line.len() > MAX_REQUEST {
        return Err(Error::new(
            ErrCode::ControlRequestInvalid,
            format!("request longer than {MAX_REQUEST} bytes"),
        ));
    }
    let line = std::str::from_utf8(line)
        .map_err(|_| Error::new(ErrCode::ControlRequestInvalid, "request is not UTF-8 text"))?
        .trim();
    let (verb, rest) = line.split_once(' ').map_or((line, ""), |(v, r)| (v, r.trim()));
    match verb {
        "status" => Ok(Request::Status),
        "show" => Ok(Request::Show),
        "set" => Ok(Request::Set(rest)),
        "umount" => Ok(Request::Umount),
        "" => Err(Error::new(ErrCode::ControlRequestInvalid, "empty request")),
        _ => Err(Error::new(
            ErrCode::ControlRequestInvalid,
            format!("unknown request '{}' (known: status, show, set, umount)", truncate(verb, 64)),
        )),
    }
}

/// True if a mount of filesystem `uuid` answers on its default control socket.
pub fn is_mounted(uuid: Uuid) -> bool {
    default_socket_path(uuid).ok().and_then(|p| request(&p, "status").ok().flatten()).is_some()
}

/// Refuses `what`, which writes the images, while a mount of filesystem `uuid` runs.
pub fn refuse_if_mounted(uuid: Uuid, what: &str) -> Result<()> {
    if is_mounted(uuid) {
        return Err(Error::new(
            ErrCode::FsAlreadyMounted,
            format!("filesystem {uuid} is mounted: {what} works offline only; unmount it first"),
        ));
    }
    Ok(())
}

/// Sends one request to the mount serving `path`; `Ok(None)` when no mount serves it (no
/// socket, or a stale one). The answer's `ok: false` becomes the error it names.
pub fn request(path: &Path, line: &str) -> Result<Option<Value>> {
    let mut stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) =>
        {
            return Ok(None);
        }
        Err(e) => {
            return Err(Error::new(ErrCode::ControlSocket, "connecting to the control socket")
                .path(path.display().to_string())
                .source(e));
        }
    };
    let io = |e: std::io::Error| {
        Error::new(ErrCode::ControlSocket, "talking to the control socket")
            .path(path.display().to_string())
            .source(e)
    };
    writeln!(stream, "{line}").map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).take(1 << 20).read_line(&mut answer).map_err(io)?;
    let v: Value = serde_json::from_str(answer.trim()).map_err(|_| {
        Error::new(ErrCode::ControlSocket, "the control socket's answer is not JSON")
            .path(path.display().to_string())
    })?;
    if v.get("ok") == Some(&Value::Bool(true)) {
        return Ok(Some(v));
    }
    let code =
        v.get("code").and_then(Value::as_str).and_then(ErrCode::from_name).unwrap_or(ErrCode::ControlSocket);
    let msg = v.get("message").and_then(Value::as_str).unwrap_or("the mount refused the request");
    Err(Error::new(code, msg.to_owned()))
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("uuid", &self.uuid)
            .field("phase", &self.phase())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use fs_core::dev::{MemDevice, SharedDevice};
    use fs_core::format::{DeviceSpec, format};
    use fs_core::opts::Options;
    use fs_core::sb::DeviceSet;

    use super::*;
    use crate::recovery::{MountOpts, ReclaimMode, mount};

    /// What the running filesystem logs (stuck allocator reports, discards) reaches the mount's
    /// log through its control state, as `opt change` lines do: `bcsim mount` prints them as
    /// they happen.
    #[test]
    fn the_running_filesystem_logs_to_the_mount() {
        let dev: SharedDevice = Arc::new(MemDevice::new("mem0", 64 << 20));
        format(&[DeviceSpec::new(dev.clone())], &Options::default(), None).unwrap();
        let set = DeviceSet::open(vec![dev]).unwrap();
        let lines = Arc::new(StdMutex::new(Vec::new()));
        let sink = lines.clone();
        let control = Control::new(set.sb.uuid, set.sb.members.clone(), move |l| {
            sink.lock().unwrap().push(l.to_owned());
        });
        let mopts = MountOpts {
            reclaim: ReclaimMode::Manual,
            control: Some(control.clone()),
            ..MountOpts::default()
        };
        let fs = mount(set, &mopts).unwrap().fs;
        fs.shared().klog("Allocator stuck? (a test line)");
        control.set_options("metadata_replicas=1").unwrap();
        let got = lines.lock().unwrap().clone();
        assert_eq!(got, ["Allocator stuck? (a test line)", "opt change: metadata_replicas=1"]);
        fs.unmount().unwrap();
    }
}
