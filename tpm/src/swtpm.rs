//! A software TPM (swtpm) process that Bulwark starts, owns and stops, in two kinds.
//!
//! - [`PrivateSwtpm`], the appliance's embedded default where a machine has no TPM device: one per data
//!   dir, for as long as a bulwark command runs, reachable only through a Unix socket in its owner-only
//!   state dir (no TCP port, no control channel). The TSS talks to it through its `cmd` TCTI, which runs
//!   socat as a relay ([`TctiSpec::SwtpmSocket`]), because its swtpm TCTI speaks TCP only and insists on a
//!   control port besides.
//! - [`Swtpm`], on a pair of loopback TCP ports: what every test starts for itself (swtpm has no resource
//!   manager and only three object slots, so two users of one swtpm would evict each other's objects), and
//!   what `--tpm swtpm:host=…,port=…` expects someone to have started.
//!
//! Lessons this module encodes: swtpm is started in the foreground as our child and killed by PID (never
//! `--daemon`); on TCP its control channel is the data port plus one, which is what the swtpm TCTI assumes
//! (tss-esapi 7.7 ignores `swtpm:path=`); it is started with `--flags not-need-init,startup-clear` so it
//! is usable without a separate init step; its state dir is absolute.
//!
//! Readiness is ownership, not reachability: a connect to the port succeeds just as well when another
//! process (say, another test's swtpm that bound the port between our probe and our child's bind) holds
//! it, while our child exits with a bind failure. So a start is complete only when the kernel's socket
//! table (`/proc/self/net/tcp{,6}`, or `/proc/self/net/unix` for the socket kind) lists a listening socket
//! on each of the ports, every such socket a connect to 127.0.0.1 could reach is one of our child's open
//! files (`/proc/<pid>/fd`), and the child is still running after a short grace period. A port held by
//! anyone else is [`SwtpmError::PortTaken`]. Linux only, as is swtpm's use here.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::tcti::{SWTPM_SOCKET, TctiSpec};

/// What can go wrong starting or stopping a swtpm.
#[derive(Debug, thiserror::Error)]
pub enum SwtpmError {
    /// The `swtpm` binary is not installed.
    #[error("the swtpm binary was not found on PATH; install it with `apt-get install swtpm swtpm-tools`")]
    NotInstalled,
    /// The state directory could not be created or resolved.
    #[error("cannot prepare swtpm state directory {path}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Spawning the process failed.
    #[error("cannot start swtpm")]
    Spawn(#[source] io::Error),
    /// swtpm exited or never listened within the start timeout.
    #[error("swtpm did not come up on 127.0.0.1:{port} within {timeout_ms} ms (exit status: {status})")]
    NotListening {
        /// The data port it was asked to use.
        port: u16,
        /// How long we waited.
        timeout_ms: u128,
        /// The process' exit status, if it exited.
        status: String,
    },
    /// No pair of free loopback ports could be found.
    #[error("no free pair of loopback TCP ports for swtpm")]
    NoPorts(#[source] io::Error),
    /// Another process listens on a port the swtpm was asked to use (data port or control port), so
    /// connections to it would not reach the swtpm we started.
    #[error("127.0.0.1:{port} is held by another process; pick another port for swtpm")]
    PortTaken {
        /// The port.
        port: u16,
    },
    /// socat, which relays the TSS's command stream to a swtpm on a Unix socket, is not installed.
    #[error("socat was not found on PATH; install it with `apt-get install socat`")]
    RelayNotInstalled,
    /// Another swtpm already listens on this state dir's socket.
    #[error("a swtpm already runs on {0}; stop it first")]
    InUse(PathBuf),
    /// A state dir whose path is not UTF-8 (the TSS takes its configuration as a string).
    #[error("swtpm state directory {0:?} is not valid UTF-8")]
    StateDirName(PathBuf),
    /// swtpm exited or never listened on its Unix socket within the start timeout.
    #[error("swtpm did not come up on {path} within {timeout_ms} ms (exit status: {status})")]
    SocketNotReady {
        /// The socket it was asked to listen on.
        path: PathBuf,
        /// How long we waited.
        timeout_ms: u128,
        /// The process' exit status, if it exited.
        status: String,
    },
    /// The kernel's socket tables could not be read, so whether our swtpm owns its port is unknown.
    #[error("cannot check which process listens on 127.0.0.1:{port}")]
    Ownership {
        /// The data port.
        port: u16,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A running swtpm child process, killed when dropped.
#[derive(Debug)]
pub struct Swtpm {
    child: Child,
    port: u16,
    state_dir: PathBuf,
}

const START_TIMEOUT: Duration = Duration::from_secs(10);
const START_ATTEMPTS: usize = 5;
/// How long the child must keep running, owning both ports, before a start counts as done.
const START_GRACE: Duration = Duration::from_millis(50);

impl Swtpm {
    /// Starts a swtpm whose state lives in `state_dir` (created if missing), on a free pair of loopback
    /// ports. The state persists across restarts: starting again on the same dir is a power cycle of the
    /// same TPM (PCRs reset, NV and persistent objects kept, reset count incremented).
    pub fn start(state_dir: &Path) -> Result<Self, SwtpmError> {
        Self::start_with_ports(state_dir, free_port_pair)
    }

    /// [`Swtpm::start`] with the port-pair picker as a parameter, so tests can hand it a taken port.
    fn start_with_ports(
        state_dir: &Path,
        mut next_port: impl FnMut() -> Result<u16, SwtpmError>,
    ) -> Result<Self, SwtpmError> {
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            let port = next_port()?;
            match Self::start_on(state_dir, port) {
                Ok(s) => return Ok(s),
                // Another process may have taken the port between our probe and swtpm's bind: retry.
                Err(e @ (SwtpmError::NotListening { .. } | SwtpmError::PortTaken { .. })) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(SwtpmError::NoPorts(io::Error::other("no attempt made"))))
    }

    /// Starts a swtpm on data port `port` (control port `port + 1`). Fails with
    /// [`SwtpmError::PortTaken`] when another process listens on either port.
    pub fn start_on(state_dir: &Path, port: u16) -> Result<Self, SwtpmError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|source| SwtpmError::StateDir { path: state_dir.to_path_buf(), source })?;
        let state_dir = std::fs::canonicalize(state_dir)
            .map_err(|source| SwtpmError::StateDir { path: state_dir.to_path_buf(), source })?;
        let ctrl = port
            .checked_add(1)
            .ok_or_else(|| SwtpmError::NoPorts(io::Error::other("port 65535 has no control port")))?;
        let child = spawn_swtpm(
            &state_dir,
            &[
                "--server",
                &format!("type=tcp,port={port},bindaddr=127.0.0.1"),
                "--ctrl",
                &format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"),
            ],
            Lifetime::UntilKilled,
        )?;
        // From here on, an error drops `me`, which kills and reaps the child.
        let mut me = Swtpm { child, port, state_dir };
        me.wait_listening(ctrl)?;
        Ok(me)
    }

    /// Waits until our child, and only our child, listens on `self.port` and `ctrl`, and has kept
    /// running for [`START_GRACE`] since. The child stays unreaped until we kill it, so its pid cannot be
    /// reused while we look at `/proc/<pid>/fd`.
    fn wait_listening(&mut self, ctrl: u16) -> Result<(), SwtpmError> {
        let started = Instant::now();
        let pid = self.child.id();
        let mut owned_since: Option<Instant> = None;
        // A port we saw held by another process during this start: the likely reason our child exits.
        let mut taken: Option<u16> = None;
        loop {
            let exited = self.child.try_wait().ok().flatten();
            let listeners = loopback_listeners().map_err(|source| SwtpmError::Ownership { port: self.port, source })?;
            let ours = socket_inodes(pid);
            let data = Holders::of(&listeners, self.port, &ours);
            let control = Holders::of(&listeners, ctrl, &ours);
            if let Some(p) = [(self.port, data), (ctrl, control)].into_iter().find(|(_, h)| h.others).map(|(p, _)| p) {
                taken.get_or_insert(p);
                // Our child shares the port with someone else (SO_REUSEPORT): connections would be split
                // between the two. Nothing to wait for.
                if data.ours || control.ours {
                    return Err(SwtpmError::PortTaken { port: p });
                }
            }
            if let Some(status) = exited {
                return Err(match taken {
                    Some(port) => SwtpmError::PortTaken { port },
                    None => SwtpmError::NotListening {
                        port: self.port,
                        timeout_ms: started.elapsed().as_millis(),
                        status: status.to_string(),
                    },
                });
            }
            if data.exclusively_ours() && control.exclusively_ours() {
                // Alive when this round began and owning both ports now; done once that held for the grace.
                if owned_since.get_or_insert_with(Instant::now).elapsed() >= START_GRACE {
                    return Ok(());
                }
            } else {
                owned_since = None;
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(match taken {
                    Some(port) => SwtpmError::PortTaken { port },
                    None => SwtpmError::NotListening {
                        port: self.port,
                        timeout_ms: started.elapsed().as_millis(),
                        status: "still running".into(),
                    },
                });
            }
            sleep(Duration::from_millis(10));
        }
    }

    /// The TCTI string tss-esapi and tpm2-tools accept for this swtpm.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The data port (control port is this plus one).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The absolute state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the swtpm (SIGKILL by PID) and waits for it. swtpm writes its state on every command, so no
    /// acknowledged TPM state is lost.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        // Ignoring errors: the child may already have exited, in which case there is nothing to stop.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A swtpm that only processes able to enter its state dir can reach: it listens on the Unix socket
/// [`SWTPM_SOCKET`] in that dir (mode 0700, socket 0600) and on no TCP port, and has no control channel.
/// The TSS reaches it through its `cmd` TCTI, which runs socat as a relay ([`TctiSpec::SwtpmSocket`]).
/// This is the swtpm the appliance starts for a data dir: a TCP swtpm answers any local process, which
/// could use the platform hierarchy it comes up with, or power-cycle it over the control port (which
/// opens that hierarchy again). Killed when dropped.
#[derive(Debug)]
pub struct PrivateSwtpm {
    child: Child,
    state_dir: PathBuf,
}

impl PrivateSwtpm {
    /// Starts a swtpm whose state lives in `state_dir` (created if missing, then restricted to its owner).
    /// A socket left by an earlier swtpm of this dir is removed first; the caller must make sure no other
    /// swtpm runs on this dir (the appliance holds the data dir's swtpm lock).
    pub fn start(state_dir: &Path) -> Result<Self, SwtpmError> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        if !on_path("socat") {
            return Err(SwtpmError::RelayNotInstalled);
        }
        let dir_error = |source| SwtpmError::StateDir { path: state_dir.to_path_buf(), source };
        std::fs::create_dir_all(state_dir).map_err(dir_error)?;
        let state_dir = std::fs::canonicalize(state_dir).map_err(dir_error)?;
        if state_dir.to_str().is_none() {
            return Err(SwtpmError::StateDirName(state_dir));
        }
        let dir_error = |source| SwtpmError::StateDir { path: state_dir.clone(), source };
        std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_error)?;
        let socket = state_dir.join(SWTPM_SOCKET);
        match std::fs::symlink_metadata(&socket) {
            // A socket that accepts a connection has a live swtpm behind it. The caller holds the data
            // dir's swtpm lock, so no running bulwark process uses it: a bulwark process that was killed
            // left it (one started before its swtpm died with it, see `spawn_swtpm`). Stop it and start
            // afresh; one this process started itself is left alone.
            Ok(m) if m.file_type().is_socket() && std::os::unix::net::UnixStream::connect(&socket).is_ok() => {
                stop_left_over(&state_dir, &socket)?;
                // A swtpm stopped by SIGTERM removes its socket itself; one that needed SIGKILL does not.
                match std::fs::remove_file(&socket) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(dir_error(e)),
                    _ => {}
                }
            }
            // Left behind by a swtpm that was killed: nothing listens on it any more.
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(&socket).map_err(dir_error)?,
            Ok(_) => {
                return Err(dir_error(io::Error::other(format!("{} exists and is not a socket", socket.display()))));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(dir_error(e)),
        }
        // The socket path is relative to the state dir (swtpm's working dir), so its length never matters.
        let channel = format!("type=unixio,path={SWTPM_SOCKET},mode=0600");
        let child = spawn_swtpm(&state_dir, &["--server", &channel], Lifetime::DiesWithThisThread)?;
        let mut me = PrivateSwtpm { child, state_dir };
        me.wait_listening(&socket)?;
        Ok(me)
    }

    /// Waits until our child listens on a Unix socket at `socket`. No grace period as on TCP: nobody else
    /// can bind in the owner-only state dir, and the stale socket is gone, so a listening socket in our
    /// child's files is the one the path names. Polled often: a command waits for this on every start.
    fn wait_listening(&mut self, socket: &Path) -> Result<(), SwtpmError> {
        let started = Instant::now();
        let pid = self.child.id();
        loop {
            let not_ready = |status: String| SwtpmError::SocketNotReady {
                path: socket.to_path_buf(),
                timeout_ms: started.elapsed().as_millis(),
                status,
            };
            if let Some(status) = self.child.try_wait().ok().flatten() {
                return Err(not_ready(status.to_string()));
            }
            let ours = socket_inodes(pid);
            let listening = unix_listeners()
                .map_err(|source| SwtpmError::StateDir { path: self.state_dir.clone(), source })?
                .into_iter()
                .any(|inode| ours.contains(&inode));
            if listening && socket.exists() {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(not_ready("still running".into()));
            }
            sleep(Duration::from_millis(2));
        }
    }

    /// The endpoint to open this swtpm with.
    pub fn spec(&self) -> TctiSpec {
        TctiSpec::SwtpmSocket { dir: self.state_dir.clone() }
    }

    /// The absolute state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PrivateSwtpm {
    fn drop(&mut self) {
        // Ignoring errors: the child may already have exited, in which case there is nothing to stop.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.state_dir.join(SWTPM_SOCKET));
    }
}

/// Whether a swtpm outlives the process that started it if that process is killed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lifetime {
    /// It gets SIGTERM when the thread that started it ends, the process killed included
    /// (PR_SET_PDEATHSIG), so a killed bulwark command never leaves its data dir's swtpm running. The
    /// thread that starts it must outlive it.
    DiesWithThisThread,
    /// It runs until it is killed by PID (the TCP swtpm of tests and benches).
    UntilKilled,
}

/// Stops a swtpm that still runs on `state_dir` (its working dir) and listens on `socket`, left by a
/// bulwark process that was killed: SIGTERM, then SIGKILL if it does not go. A swtpm this process
/// started is [`SwtpmError::InUse`], as is one that cannot be found or stopped.
fn stop_left_over(state_dir: &Path, socket: &Path) -> Result<(), SwtpmError> {
    let in_use = || SwtpmError::InUse(socket.to_path_buf());
    let pid = swtpm_on(state_dir).ok_or_else(in_use)?;
    if parent_of(pid) == Some(std::process::id()) {
        return Err(in_use());
    }
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        // SAFETY: kill only sends a signal; `pid` names a swtpm process working in our state dir.
        unsafe { libc::kill(pid, signal) };
        let sent = Instant::now();
        while sent.elapsed() < Duration::from_secs(2) {
            if std::os::unix::net::UnixStream::connect(socket).is_err() {
                return Ok(());
            }
            sleep(Duration::from_millis(5));
        }
    }
    Err(in_use())
}

/// The pid of a process named swtpm whose working dir is `state_dir`, if one runs.
fn swtpm_on(state_dir: &Path) -> Option<libc::pid_t> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: libc::pid_t = entry.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
        (comm.trim_end() == "swtpm" && cwd == state_dir).then_some(pid)
    })
}

/// The parent pid of `pid` (field 4 of `/proc/<pid>/stat`, after the parenthesised command name).
fn parent_of(pid: libc::pid_t) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Spawns `swtpm socket --tpm2` on the absolute `state_dir` (also its working dir) with the channel
/// arguments `channels`, usable at once (`not-need-init,startup-clear`), its output discarded, living
/// as `lifetime` says.
///
/// The child inherits no other descriptor of ours: the TSS opens its TCTI sockets without close-on-exec,
/// so a swtpm started while another thread held a TPM connection would otherwise keep that socket open
/// for as long as it runs.
fn spawn_swtpm(state_dir: &Path, channels: &[&str], lifetime: Lifetime) -> Result<Child, SwtpmError> {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new("swtpm");
    command
        .current_dir(state_dir)
        .args(["socket", "--tpm2", "--tpmstate"])
        .arg(format!("dir={}", state_dir.display()))
        .args(channels)
        .args(["--flags", "not-need-init,startup-clear"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Read before the fork: the hook itself may only make system calls.
    // SAFETY: sysconf has no preconditions.
    let open_max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) };
    let open_max = libc::c_int::try_from(open_max).unwrap_or(libc::c_int::MAX).max(3);
    let parent = std::process::id();
    // SAFETY: the hook runs in the forked child before exec and only makes async-signal-safe system
    // calls (close_range, fcntl, prctl, getppid) on its own process; it allocates nothing and touches no
    // lock.
    unsafe {
        command.pre_exec(move || {
            close_on_exec_above_stderr(open_max)?;
            if lifetime == Lifetime::DiesWithThisThread {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before the request was made: then nobody would signal us.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    return Err(io::Error::other("the process starting swtpm has ended"));
                }
            }
            Ok(())
        })
    };
    command
        .spawn()
        .map_err(|e| if e.kind() == io::ErrorKind::NotFound { SwtpmError::NotInstalled } else { SwtpmError::Spawn(e) })
}

/// Marks every descriptor this process holds above stderr close-on-exec, so that no program it starts
/// later inherits one: neither a swtpm nor the socat relay that the TSS's `cmd` TCTI starts with its own
/// fork and exec (where no hook of ours runs). For a command-line process to call once at start-up: what
/// it opens itself is close-on-exec already (std opens everything so), but its parent may have left
/// descriptors open without the flag, and they would pass on to those children.
pub fn close_inherited_descriptors_on_exec() {
    // SAFETY: close_range only changes the flags of this process' descriptors.
    let flagged = unsafe { libc::close_range(3, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) };
    if flagged == 0 {
        return;
    }
    // Kernels before 5.11: the descriptors that are open, from /proc (the listing's own is among them
    // and is closed after it, so marking it does no harm).
    let Ok(open) = std::fs::read_dir("/proc/self/fd") else { return };
    for fd in open.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::c_int>().ok()).filter(|fd| *fd > 2) {
        // SAFETY: fcntl on a descriptor that is open (or was, and then fails with EBADF) changes only its flag.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// Marks every descriptor above stderr close-on-exec (in a child between fork and exec), so that exec
/// closes them; std's own exec-error pipe is close-on-exec already and keeps working until then.
fn close_on_exec_above_stderr(open_max: libc::c_int) -> io::Result<()> {
    // SAFETY: close_range only changes the flags of this process' descriptors.
    let flagged = unsafe { libc::close_range(3, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) };
    if flagged == 0 {
        return Ok(());
    }
    // Kernels before 5.11 have no CLOSE_RANGE_CLOEXEC: one fcntl per possible descriptor instead.
    for fd in 3..open_max {
        // SAFETY: fcntl on a descriptor that may not be open fails with EBADF and changes nothing.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Whether an executable file named `name` is in a directory on `PATH`.
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| on_search_path(name, &path))
}

/// Whether an executable file named `name` is in one of the directories of `path` (`PATH` syntax).
fn on_search_path(name: &str, path: &std::ffi::OsStr) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .any(|d| std::fs::metadata(d.join(name)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// The inodes of the listening Unix stream sockets in this process' network namespace
/// (`/proc/self/net/unix`: `Num RefCount Protocol Flags Type St Inode [Path]`; a listening socket has
/// the `__SO_ACCEPTCON` flag, 0x10000). Lines that do not parse are skipped.
fn unix_listeners() -> io::Result<Vec<u64>> {
    const ACCEPTCON: u32 = 0x1_0000;
    Ok(std::fs::read_to_string("/proc/self/net/unix")?
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            (flags & ACCEPTCON != 0).then(|| f.get(6)?.parse().ok()).flatten()
        })
        .collect())
}

/// Who holds the LISTEN sockets on one port that a connect to 127.0.0.1 could reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Holders {
    /// At least one is an open file of our child.
    ours: bool,
    /// At least one is not.
    others: bool,
}

impl Holders {
    fn of(listeners: &[Listener], port: u16, ours: &HashSet<u64>) -> Self {
        let mut h = Holders { ours: false, others: false };
        for l in listeners.iter().filter(|l| l.port == port) {
            // Inode 0 would be a socket no process holds open; it is not our child's either.
            if l.inode != 0 && ours.contains(&l.inode) {
                h.ours = true;
            } else {
                h.others = true;
            }
        }
        h
    }

    fn exclusively_ours(self) -> bool {
        self.ours && !self.others
    }
}

/// A TCP socket in LISTEN state, bound to an address that accepts connections to 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Listener {
    port: u16,
    inode: u64,
}

/// The listeners in this process' network namespace (the one our connects, and our child, use).
fn loopback_listeners() -> io::Result<Vec<Listener>> {
    let mut out = parse_proc_net_tcp(&std::fs::read_to_string("/proc/self/net/tcp")?);
    // Absent when IPv6 is disabled: then no IPv6 socket can hold the port.
    match std::fs::read_to_string("/proc/self/net/tcp6") {
        Ok(text) => out.extend(parse_proc_net_tcp(&text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(out)
}

/// Parses `/proc/net/tcp` or `/proc/net/tcp6` (`sl local_address rem_address st ... uid timeout inode`),
/// keeping LISTEN (`0A`) sockets bound to 127.0.0.1, 0.0.0.0, `::` (may be dual-stack) or the
/// IPv4-mapped forms of the first two. The kernel prints each 32-bit word of an address as a native-endian
/// hex number and the port as plain hex. Lines that do not parse are skipped.
fn parse_proc_net_tcp(text: &str) -> Vec<Listener> {
    const LISTEN: &str = "0A";
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
            if *state != LISTEN {
                return None;
            }
            let (addr, port) = local.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let inode = inode.parse().ok()?;
            let mut bytes = Vec::with_capacity(16);
            for word in addr.as_bytes().chunks(8) {
                let word = std::str::from_utf8(word).ok()?;
                bytes.extend_from_slice(&u32::from_str_radix(word, 16).ok()?.to_ne_bytes());
            }
            let reaches_loopback = match bytes.len() {
                4 => {
                    let a: [u8; 4] = bytes.try_into().ok()?;
                    v4_reaches_loopback(Ipv4Addr::from(a))
                }
                16 => {
                    let a: [u8; 16] = bytes.try_into().ok()?;
                    let a = Ipv6Addr::from(a);
                    a.is_unspecified() || a.to_ipv4_mapped().is_some_and(v4_reaches_loopback)
                }
                _ => return None,
            };
            reaches_loopback.then_some(Listener { port, inode })
        })
        .collect()
}

fn v4_reaches_loopback(a: Ipv4Addr) -> bool {
    a == Ipv4Addr::LOCALHOST || a.is_unspecified()
}

/// The inodes of the sockets process `pid` has open. Empty once it has exited (a zombie has no files)
/// or when its fd table cannot be read; entries that vanish while we read are skipped.
fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return HashSet::new() };
    dir.filter_map(|e| {
        let target = std::fs::read_link(e.ok()?.path()).ok()?;
        target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
    })
    .collect()
}

/// Finds a port `p` such that `p` and `p + 1` are both free on loopback right now. Asks the kernel first;
/// when its ephemeral range is exhausted (each swtpm command is a TCP connection, and thousands of them
/// can sit in TIME_WAIT), scans a range below the ephemeral one from a pseudo-random start.
fn free_port_pair() -> Result<u16, SwtpmError> {
    let mut last = io::Error::other("no candidate");
    for _ in 0..64 {
        let Ok(a) = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) else { break };
        let p = a.local_addr().map_err(SwtpmError::NoPorts)?.port();
        let Some(q) = p.checked_add(1) else { continue };
        match TcpListener::bind((Ipv4Addr::LOCALHOST, q)) {
            Ok(_b) => return Ok(p),
            Err(e) => last = e,
        }
    }
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let start = (nanos ^ std::process::id().rotate_left(16)) % SPAN;
    for i in 0..SPAN / 2 {
        let Ok(p) = u16::try_from(LOW + (start + 2 * i) % SPAN) else { continue };
        let Some(q) = p.checked_add(1) else { continue };
        match (TcpListener::bind((Ipv4Addr::LOCALHOST, p)), TcpListener::bind((Ipv4Addr::LOCALHOST, q))) {
            (Ok(_a), Ok(_b)) => return Ok(p),
            (Err(e), _) | (_, Err(e)) => last = e,
        }
    }
    Err(SwtpmError::NoPorts(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_swtpm_listens_in_its_owner_only_dir_and_nowhere_else() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        // A quote and a space in the path: the relay's command line quotes it.
        let dir = d.path().join("it's a state dir");
        let sw = PrivateSwtpm::start(&dir).unwrap();
        let socket = sw.state_dir().join(SWTPM_SOCKET);
        assert_eq!(std::fs::metadata(sw.state_dir()).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);
        let tcp: HashSet<u64> = loopback_listeners().unwrap().iter().map(|l| l.inode).collect();
        assert!(socket_inodes(sw.pid()).is_disjoint(&tcp), "a private swtpm listens on TCP");
        let tpm = crate::Tpm::open(&sw.spec()).unwrap();
        tpm.clock_info().unwrap();
        // A second start on the same dir finds the live one and leaves it running.
        drop(tpm);
        match PrivateSwtpm::start(&dir) {
            Err(SwtpmError::InUse(p)) => assert_eq!(p, socket),
            other => panic!("expected InUse, got {other:?}"),
        }
        let tpm = crate::Tpm::open(&sw.spec()).unwrap();
        tpm.clock_info().unwrap();
        drop(tpm);
        drop(sw);
        assert!(!socket.exists());
    }

    #[test]
    fn a_private_swtpm_ends_with_the_thread_that_started_it() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state");
        // As when the bulwark process is killed: nothing drops (kills) it, the starting thread just ends.
        let (pid, socket) = std::thread::spawn({
            let dir = dir.clone();
            move || {
                let sw = PrivateSwtpm::start(&dir).unwrap();
                let out = (sw.pid(), sw.state_dir().join(SWTPM_SOCKET));
                std::mem::forget(sw);
                out
            }
        })
        .join()
        .unwrap();
        let gone = Instant::now();
        while std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            assert!(gone.elapsed() < Duration::from_secs(5), "swtpm {pid} still runs after its thread ended");
            sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_private_swtpm_left_running_by_a_killed_process_is_stopped_and_replaced() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state");
        std::fs::create_dir_all(&dir).unwrap();
        let dir = std::fs::canonicalize(&dir).unwrap();
        // A swtpm whose parent (a shell) has exited, as a killed bulwark process would leave it.
        let status = Command::new("sh")
            .current_dir(&dir)
            .args([
                "-c",
                "swtpm socket --tpm2 --tpmstate dir=\"$PWD\" --server type=unixio,path=data.sock,mode=0600 \
                    --flags not-need-init,startup-clear >/dev/null 2>&1 &",
            ])
            .status()
            .unwrap();
        assert!(status.success());
        let socket = dir.join(SWTPM_SOCKET);
        let up = Instant::now();
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(up.elapsed() < Duration::from_secs(5), "the left-over swtpm never listened");
            sleep(Duration::from_millis(5));
        }
        let left = swtpm_on(&dir).expect("the left-over swtpm is found by its working dir");
        let sw = PrivateSwtpm::start(&dir).unwrap();
        assert_ne!(i64::from(sw.pid()), i64::from(left));
        assert!(swtpm_on(&dir).is_some_and(|p| i64::from(p) == i64::from(sw.pid())), "the left-over one still runs");
        let tpm = crate::Tpm::open(&sw.spec()).unwrap();
        tpm.clock_info().unwrap();
    }

    /// Held by the tests that make a descriptor without close-on-exec and by the one that marks every
    /// descriptor of the test process, so that neither sees the other's change half way.
    static DESCRIPTOR_FLAGS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_swtpm_inherits_no_descriptor_of_ours() {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let _flags = DESCRIPTOR_FLAGS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let d = tempfile::tempdir().unwrap();
        // A descriptor without close-on-exec, as the TSS leaves its TCTI sockets.
        let marker = d.path().join("held-by-the-parent");
        let file = std::fs::File::create(&marker).unwrap();
        // SAFETY: dup of an open descriptor; it makes a new one, with close-on-exec clear.
        let copy = unsafe { libc::dup(file.as_raw_fd()) };
        assert!(copy >= 0, "dup failed");
        // SAFETY: `copy` is open and nothing else owns it; it is closed when this is dropped, below.
        let inheritable = unsafe { OwnedFd::from_raw_fd(copy) };
        // SAFETY: F_GETFD on the descriptor just made.
        assert_eq!(unsafe { libc::fcntl(inheritable.as_raw_fd(), libc::F_GETFD) } & libc::FD_CLOEXEC, 0);
        let sw = PrivateSwtpm::start(&d.path().join("state")).unwrap();
        let held: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{}/fd", sw.pid()))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .collect();
        assert!(!held.contains(&marker), "swtpm inherited the parent's descriptor: {held:?}");
        drop(inheritable);
    }

    #[test]
    fn inherited_descriptors_are_marked_close_on_exec() {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let _flags = DESCRIPTOR_FLAGS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let file = tempfile::tempfile().unwrap();
        // SAFETY: dup of an open descriptor; it makes a new one, with close-on-exec clear.
        let copy = unsafe { libc::dup(file.as_raw_fd()) };
        assert!(copy >= 0, "dup failed");
        // SAFETY: `copy` is open and nothing else owns it; it is closed when this is dropped.
        let inherited = unsafe { OwnedFd::from_raw_fd(copy) };
        // SAFETY: F_GETFD on an open descriptor.
        let flags = || unsafe { libc::fcntl(inherited.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags() & libc::FD_CLOEXEC, 0);
        close_inherited_descriptors_on_exec();
        assert_eq!(flags() & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        // stdin, stdout and stderr keep theirs (children are meant to share them).
        // SAFETY: F_GETFD on descriptor 2, which the test harness keeps open.
        assert_eq!(unsafe { libc::fcntl(2, libc::F_GETFD) } & libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn a_private_swtpm_restarts_over_a_dead_ones_socket_and_refuses_a_stranger_file() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state");
        let mut sw = PrivateSwtpm::start(&dir).unwrap();
        let socket = sw.state_dir().join(SWTPM_SOCKET);
        // SIGKILL leaves the socket file behind, as a crash would.
        let _ = sw.child.kill();
        let _ = sw.child.wait();
        std::mem::forget(sw);
        assert!(socket.exists());
        let sw = PrivateSwtpm::start(&dir).unwrap();
        crate::Tpm::open(&sw.spec()).unwrap().clock_info().unwrap();
        drop(sw);
        std::fs::write(&socket, b"not a socket").unwrap();
        match PrivateSwtpm::start(&dir) {
            Err(SwtpmError::StateDir { .. }) => {}
            other => panic!("expected StateDir, got {other:?}"),
        }
        assert_eq!(std::fs::read(&socket).unwrap(), b"not a socket");
    }

    #[test]
    fn the_relay_is_looked_up_on_the_search_path() {
        let d = tempfile::tempdir().unwrap();
        let empty = d.path().to_path_buf();
        assert!(!on_search_path("socat", empty.as_os_str()));
        let bin = d.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("socat"), b"#!/bin/sh\n").unwrap();
        assert!(!on_search_path("socat", bin.as_os_str()), "a file that is not executable counts");
        std::fs::set_permissions(bin.join("socat"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let both = std::env::join_paths([empty, bin]).unwrap();
        assert!(on_search_path("socat", &both));
    }

    #[test]
    fn starts_listens_and_restarts_on_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let s = Swtpm::start(dir.path()).unwrap();
        assert!(s.tcti().starts_with("swtpm:host=127.0.0.1,port="));
        let port = s.port();
        s.stop();
        // The state dir is reusable after a stop; the port may be reused too.
        let s2 = Swtpm::start_on(dir.path(), port).or_else(|_| Swtpm::start(dir.path())).unwrap();
        assert!(s2.state_dir().is_absolute());
    }

    /// Holds a loopback port with a plain listener (std sets SO_REUSEADDR, as swtpm does).
    fn occupy() -> (TcpListener, u16) {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        (l, port)
    }

    fn assert_owned_by(port: u16, pid: u32) {
        let h = Holders::of(&loopback_listeners().unwrap(), port, &socket_inodes(pid));
        assert!(h.exclusively_ours(), "port {port} not held by pid {pid} alone: {h:?}");
    }

    #[test]
    fn start_on_refuses_a_data_port_held_by_a_listener() {
        let (l, port) = occupy();
        if port == u16::MAX {
            return; // no control port; start_on rejects it before spawning
        }
        let dir = tempfile::tempdir().unwrap();
        match Swtpm::start_on(dir.path(), port) {
            Err(SwtpmError::PortTaken { port: p }) => assert_eq!(p, port),
            other => panic!("expected PortTaken on {port}, got {other:?}"),
        }
        assert_owned_by(port, std::process::id());
        drop(l);
    }

    #[test]
    fn start_on_refuses_a_control_port_held_by_a_listener() {
        let (l, ctrl) = occupy();
        let Some(port) = ctrl.checked_sub(1) else { return };
        let dir = tempfile::tempdir().unwrap();
        match Swtpm::start_on(dir.path(), port) {
            // The data port could, rarely, be someone else's too: either way not a success.
            Err(SwtpmError::PortTaken { port: p }) => assert!(p == ctrl || p == port, "PortTaken on {p}"),
            other => panic!("expected PortTaken on {ctrl}, got {other:?}"),
        }
        drop(l);
    }

    /// The race a reviewer saw: a second swtpm asked for the first one's port must fail, not "succeed"
    /// by connecting to the first one, and the first must be left alone.
    #[test]
    fn start_on_refuses_a_port_held_by_another_swtpm() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = Swtpm::start(d1.path()).unwrap();
        match Swtpm::start_on(d2.path(), first.port()) {
            Err(SwtpmError::PortTaken { port }) => assert_eq!(port, first.port()),
            other => panic!("expected PortTaken on {}, got {other:?}", first.port()),
        }
        assert_owned_by(first.port(), first.pid());
        assert_owned_by(first.port() + 1, first.pid());
    }

    #[test]
    fn start_retries_when_its_first_port_is_taken() {
        let (_l, taken) = occupy();
        let dir = tempfile::tempdir().unwrap();
        let mut calls = 0;
        let s = Swtpm::start_with_ports(dir.path(), || {
            calls += 1;
            if calls == 1 { Ok(taken) } else { free_port_pair() }
        })
        .unwrap();
        assert!(calls >= 2);
        assert_ne!(s.port(), taken);
        assert_owned_by(s.port(), s.pid());
        assert_owned_by(s.port() + 1, s.pid());
    }

    #[test]
    fn parses_loopback_listeners_from_proc_net_tcp() {
        let v4 = |a: [u8; 4]| format!("{:08X}", u32::from_ne_bytes(a));
        let v6 = |a: Ipv6Addr| {
            a.octets()
                .chunks(4)
                .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
                .collect::<String>()
        };
        let row = |local: String, port: u16, st: &str, inode: u64| {
            format!(
                "   0: {local}:{port:04X} 00000000:0000 {st} 00000000:00000000 00:00000000 00000000  1000  0 {inode} 1 0000000000000000 100 0 0 10 0"
            )
        };
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
        let tcp = [
            header.to_string(),
            row(v4([127, 0, 0, 1]), 0x1F90, "0A", 11),
            row(v4([0, 0, 0, 0]), 0x1F91, "0A", 12),
            row(v4([127, 0, 0, 1]), 0x1F92, "01", 13), // established: not a listener
            row(v4([10, 0, 0, 1]), 0x1F93, "0A", 14),  // unreachable via 127.0.0.1
            "garbage".to_string(),
        ]
        .join("\n");
        assert_eq!(
            parse_proc_net_tcp(&tcp),
            [Listener { port: 0x1F90, inode: 11 }, Listener { port: 0x1F91, inode: 12 }]
        );
        let tcp6 = [
            header.to_string(),
            row(v6(Ipv6Addr::UNSPECIFIED), 80, "0A", 21),
            row(v6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()), 81, "0A", 22),
            row(v6(Ipv6Addr::LOCALHOST), 82, "0A", 23), // ::1 is not 127.0.0.1
        ]
        .join("\n");
        assert_eq!(parse_proc_net_tcp(&tcp6), [Listener { port: 80, inode: 21 }, Listener { port: 81, inode: 22 }]);
        let ours = HashSet::from([11]);
        let l = parse_proc_net_tcp(&tcp);
        assert!(Holders::of(&l, 0x1F90, &ours).exclusively_ours());
        assert_eq!(Holders::of(&l, 0x1F91, &ours), Holders { ours: false, others: true });
        assert_eq!(Holders::of(&l, 0x1F92, &ours), Holders { ours: false, others: false });
    }
}
