//! A software TPM (swtpm) process that Bulwark starts, owns and stops.
//!
//! Used where a machine has no TPM device: the appliance's embedded default starts one for its data dir,
//! and every test starts its own (swtpm has no resource manager and only three object slots, so two
//! users of one swtpm would evict each other's objects).
//!
//! Lessons this module encodes: swtpm is started in the foreground as our child and killed by PID (never
//! `--daemon`); it listens on TCP because tss-esapi 7.7 ignores `swtpm:path=`; its control channel is the
//! data port plus one, which is what the swtpm TCTI assumes; it is started with
//! `--flags not-need-init,startup-clear` so it is usable without a separate init step; its state dir is
//! absolute.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

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

impl Swtpm {
    /// Starts a swtpm whose state lives in `state_dir` (created if missing), on a free pair of loopback
    /// ports. The state persists across restarts: starting again on the same dir is a power cycle of the
    /// same TPM (PCRs reset, NV and persistent objects kept, reset count incremented).
    pub fn start(state_dir: &Path) -> Result<Self, SwtpmError> {
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port_pair()?;
            match Self::start_on(state_dir, port) {
                Ok(s) => return Ok(s),
                // Another process may have taken the port between our probe and swtpm's bind: retry.
                Err(e @ SwtpmError::NotListening { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(SwtpmError::NoPorts(io::Error::other("no attempt made"))))
    }

    /// Starts a swtpm on data port `port` (control port `port + 1`).
    pub fn start_on(state_dir: &Path, port: u16) -> Result<Self, SwtpmError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|source| SwtpmError::StateDir { path: state_dir.to_path_buf(), source })?;
        let state_dir = std::fs::canonicalize(state_dir)
            .map_err(|source| SwtpmError::StateDir { path: state_dir.to_path_buf(), source })?;
        let ctrl = port
            .checked_add(1)
            .ok_or_else(|| SwtpmError::NoPorts(io::Error::other("port 65535 has no control port")))?;
        let child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", state_dir.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"))
            .arg("--flags")
            .arg("not-need-init,startup-clear")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound { SwtpmError::NotInstalled } else { SwtpmError::Spawn(e) }
            })?;
        let mut me = Swtpm { child, port, state_dir };
        me.wait_listening()?;
        Ok(me)
    }

    fn wait_listening(&mut self) -> Result<(), SwtpmError> {
        let started = Instant::now();
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(SwtpmError::NotListening {
                    port: self.port,
                    timeout_ms: started.elapsed().as_millis(),
                    status: status.to_string(),
                });
            }
            if TcpStream::connect_timeout(&addr.into(), Duration::from_millis(100)).is_ok() {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(SwtpmError::NotListening {
                    port: self.port,
                    timeout_ms: started.elapsed().as_millis(),
                    status: "still running".into(),
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
}
