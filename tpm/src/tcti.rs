//! Which TPM to talk to: a kernel device, a swtpm on TCP, or the swtpm the appliance starts for its data
//! dir on a Unix socket.
//!
//! Two spellings are accepted, the same ones tpm2-tools takes in `TPM2TOOLS_TCTI`:
//! `device:/dev/tpmrm0` (an absolute device path) and `swtpm:host=H,port=P` (keys in either order).
//! The swtpm TCTI reaches swtpm over TCP only (tss-esapi 7.7 ignores `swtpm:path=`, and the TCTI needs a
//! TCP control port as well). The appliance's own swtpm listens on a Unix socket instead, which only
//! processes that can enter its state dir reach; the TSS talks to it through its `cmd` TCTI, which runs
//! socat to relay the command stream ([`TctiSpec::SwtpmSocket`], never parsed from the command line).

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// How long a swtpm at a TCP address gets to answer one small command before a `Tpm` first connects to it.
pub const SWTPM_ANSWER_WAIT: Duration = Duration::from_secs(10);

/// TPM2_GetRandom of 8 bytes, without sessions (TPM 2.0 Part 3, 16.1): tag TPM_ST_NO_SESSIONS, size 12,
/// command code 0x17B, bytesRequested 8. Any TPM answers it, started up or not (then with an error code).
const PROBE_COMMAND: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7B, 0, 8];

/// Why a TCTI string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TctiParseError {
    /// Neither `device:` nor `swtpm:`.
    #[error("unknown TPM interface {0:?}: use device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321")]
    UnknownKind(String),
    /// `device:` without an absolute path.
    #[error("device TPM path {0:?} must be absolute, e.g. device:/dev/tpmrm0")]
    DevicePath(String),
    /// A `swtpm:` option that is not `host=` or `port=`, or is given twice.
    #[error("bad swtpm option {0:?}: only host=H and port=P are accepted, once each")]
    SwtpmOption(String),
    /// `swtpm:` without a host or port.
    #[error("swtpm needs both host= and port=, e.g. swtpm:host=127.0.0.1,port=2321")]
    SwtpmMissing,
    /// A host that is not a plain host name or IP address.
    #[error("swtpm host {0:?} is not a host name or IP address")]
    SwtpmHost(String),
    /// A port that is not 1..=65534 (the control port is port + 1).
    #[error("swtpm port {0:?} must be a number from 1 to 65534 (the control port is port + 1)")]
    SwtpmPort(String),
}

/// A TPM endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TctiSpec {
    /// A kernel TPM character device, normally the resource-managed `/dev/tpmrm0`.
    Device {
        /// Absolute device path.
        path: PathBuf,
    },
    /// A swtpm listening on TCP (`--server type=tcp`), control channel on `port + 1`.
    Swtpm {
        /// Host name or IP address.
        host: String,
        /// Data port.
        port: u16,
    },
    /// A swtpm listening on the Unix socket [`SWTPM_SOCKET`] in `dir` (started by
    /// [`crate::swtpm::PrivateSwtpm`]), reached through the TSS `cmd` TCTI and socat.
    SwtpmSocket {
        /// The swtpm's absolute state dir, which holds the socket.
        dir: PathBuf,
    },
}

/// The file name of a [`TctiSpec::SwtpmSocket`] swtpm's data socket in its state dir.
pub const SWTPM_SOCKET: &str = "data.sock";

/// `s` quoted for `sh` (single quotes; a single quote inside becomes `'\''`).
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl TctiSpec {
    /// The kernel resource manager device, the production default.
    pub fn default_device() -> Self {
        TctiSpec::Device { path: PathBuf::from("/dev/tpmrm0") }
    }

    /// A swtpm on loopback.
    pub fn swtpm_local(port: u16) -> Self {
        TctiSpec::Swtpm { host: "127.0.0.1".into(), port }
    }

    /// Whether a resource manager stands between bulwark and the TPM (the kernel's `/dev/tpmrm*`), so
    /// that what a process loads goes with its connection.
    pub(crate) fn has_resource_manager(&self) -> bool {
        match self {
            TctiSpec::Device { path } => {
                path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("tpmrm"))
            }
            TctiSpec::SwtpmSocket { .. } | TctiSpec::Swtpm { .. } => false,
        }
    }

    /// Whether a connection may stay open between operations: the kernel resource manager (`tpmrm*`)
    /// multiplexes its clients, and a [`TctiSpec::SwtpmSocket`] swtpm has a single user, the process
    /// that started it for its data dir (which holds that dir's swtpm lock), so holding its one
    /// connection slot shuts nobody out, and saves starting a relay per operation. A TCP swtpm serves
    /// one connection at a time to whoever shares it, and `tpm*` allows one opener, so those are
    /// connected per operation.
    pub(crate) fn keeps_connection(&self) -> bool {
        match self {
            TctiSpec::Device { .. } => self.has_resource_manager(),
            TctiSpec::SwtpmSocket { .. } => true,
            TctiSpec::Swtpm { .. } => false,
        }
    }

    /// The configuration string handed to the TSS TCTI loader. For a device or a TCP swtpm it is the
    /// canonical spelling; for [`TctiSpec::SwtpmSocket`] it is the `cmd` TCTI running socat from inside
    /// the state dir (so the socket path's length does not matter), its complaints silenced: a relay that
    /// fails shows as a TPM that does not answer.
    pub fn loader_conf(&self) -> String {
        match self {
            TctiSpec::SwtpmSocket { dir } => format!(
                "cmd:cd {} && exec socat STDIO UNIX-CONNECT:{SWTPM_SOCKET} 2>/dev/null",
                sh_quote(&dir.to_string_lossy())
            ),
            other => other.to_string(),
        }
    }

    /// Whether this is a swtpm on a loopback address (`localhost`, 127.0.0.0/8, `::1`) or on a local Unix
    /// socket: its traffic never leaves the machine.
    pub fn is_loopback_swtpm(&self) -> bool {
        match self {
            TctiSpec::Swtpm { host, .. } => {
                host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
            }
            TctiSpec::SwtpmSocket { .. } => true,
            TctiSpec::Device { .. } => false,
        }
    }

    /// What to tell an operator when nothing answers at this endpoint.
    pub(crate) fn start_hint(&self) -> String {
        match self {
            TctiSpec::Device { path } => format!(
                "check that the TPM is enabled in firmware, that the kernel driver (tpm_tis or tpm_crb) is loaded so {} exists, \
                 and that this user may open it (usually group tss); or let bulwark manage a software TPM with --tpm auto",
                path.display()
            ),
            TctiSpec::Swtpm { port, .. } => format!(
                "start one with `swtpm socket --tpm2 --server type=tcp,port={port} --ctrl type=tcp,port={} \
                 --tpmstate dir=/abs/dir --flags not-need-init,startup-clear &` or let bulwark manage one with --tpm auto",
                u32::from(*port) + 1
            ),
            TctiSpec::SwtpmSocket { dir } => format!(
                "the swtpm that bulwark started in {} stopped answering, or socat is missing (`apt-get install socat`); \
                 run the command again to start it anew",
                dir.display()
            ),
        }
    }

    /// What usually puts this kind of TPM into failure mode, and what to do (for [`TpmError::FailureMode`]).
    ///
    /// [`TpmError::FailureMode`]: crate::TpmError::FailureMode
    pub(crate) fn failure_hint(&self) -> String {
        match self {
            TctiSpec::Device { .. } => "a TPM device leaves failure mode only when the machine is restarted; if it \
                 comes back, the TPM's firmware reports a fault (see the vendor's tools)"
                .to_string(),
            TctiSpec::Swtpm { .. } => "a swtpm enters it when it cannot write its state, for example on a full disk: \
                 free space where its --tpmstate dir is, then restart it"
                .to_string(),
            TctiSpec::SwtpmSocket { dir } => format!(
                "the swtpm that bulwark started enters it when it cannot write its state in {}, for example on a \
                 full disk: free space there and run the command again (it is started anew)",
                dir.display()
            ),
        }
    }
}

/// Why a TCP swtpm did not pass [`TctiSpec::check_answers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Silent {
    /// It took the connection but sent nothing back in time.
    NoAnswer,
    /// It answered, but not with a TPM response header (another service on that port).
    NotATpm,
}

impl TctiSpec {
    /// For a swtpm on TCP: that it answers a TPM command (TPM2_GetRandom) within `wait`. The TSS's swtpm
    /// transport waits without end on a peer that takes the connection and never answers (one that is
    /// hung, another service, a swtpm serving another client: it serves one connection at a time), so
    /// this asks first. Nothing listening, or a name that does not resolve, passes: the TSS reports
    /// those itself. Other kinds always pass.
    pub(crate) fn check_answers(&self, wait: Duration) -> Result<(), Silent> {
        let TctiSpec::Swtpm { host, port } = self else { return Ok(()) };
        let Ok(addrs) = (host.as_str(), *port).to_socket_addrs() else { return Ok(()) };
        let Some(mut stream) = addrs.into_iter().find_map(|a| TcpStream::connect_timeout(&a, wait).ok()) else {
            return Ok(());
        };
        if stream.set_read_timeout(Some(wait)).is_err() || stream.set_write_timeout(Some(wait)).is_err() {
            return Ok(());
        }
        let mut header = [0u8; 10];
        match stream.write_all(&PROBE_COMMAND).and_then(|()| stream.read_exact(&mut header)) {
            // TPM_ST_NO_SESSIONS or TPM_ST_SESSIONS, then a size that covers at least the header.
            Ok(()) if matches!(header[..2], [0x80, 0x01 | 0x02]) && header[2..6] >= [0, 0, 0, 10][..] => {
                // The rest of the answer (the random bytes), read so the close is an orderly one.
                let size = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
                let mut rest = vec![0u8; usize::try_from(size).unwrap_or(0).saturating_sub(10).min(64)];
                let _ = stream.read_exact(&mut rest);
                Ok(())
            }
            Ok(()) => Err(Silent::NotATpm),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                Err(Silent::NoAnswer)
            }
            // It closed the connection, or reset it: not an answer, and not a hang either. Left to the TSS,
            // which reports the endpoint as unreachable.
            Err(_) => Ok(()),
        }
    }
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'))
}

impl FromStr for TctiSpec {
    type Err = TctiParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("device:") {
            let p = Path::new(path);
            if !p.is_absolute() || path.contains(',') {
                return Err(TctiParseError::DevicePath(path.to_string()));
            }
            return Ok(TctiSpec::Device { path: p.to_path_buf() });
        }
        if let Some(opts) = s.strip_prefix("swtpm:") {
            let (mut host, mut port) = (None, None);
            for kv in opts.split(',') {
                match kv.split_once('=') {
                    Some(("host", h)) if host.is_none() => {
                        if !valid_host(h) {
                            return Err(TctiParseError::SwtpmHost(h.to_string()));
                        }
                        host = Some(h.to_string());
                    }
                    Some(("port", p)) if port.is_none() => {
                        let n: u16 = p
                            .parse()
                            .ok()
                            .filter(|n| (1..u16::MAX).contains(n))
                            .ok_or_else(|| TctiParseError::SwtpmPort(p.to_string()))?;
                        port = Some(n);
                    }
                    _ => return Err(TctiParseError::SwtpmOption(kv.to_string())),
                }
            }
            return match (host, port) {
                (Some(host), Some(port)) => Ok(TctiSpec::Swtpm { host, port }),
                _ => Err(TctiParseError::SwtpmMissing),
            };
        }
        Err(TctiParseError::UnknownKind(s.to_string()))
    }
}

impl fmt::Display for TctiSpec {
    /// The canonical form; for a device or a TCP swtpm also the configuration string handed to the TSS
    /// TCTI loader (see [`TctiSpec::loader_conf`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TctiSpec::Device { path } => write!(f, "device:{}", path.display()),
            TctiSpec::Swtpm { host, port } => write!(f, "swtpm:host={host},port={port}"),
            TctiSpec::SwtpmSocket { dir } => write!(f, "swtpm on unix:{}", dir.join(SWTPM_SOCKET).display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tcp_peer_that_does_not_answer_as_a_tpm_is_told_apart() {
        let wait = Duration::from_millis(300);
        let spec_for = |l: &std::net::TcpListener| TctiSpec::Swtpm {
            host: "127.0.0.1".into(),
            port: l.local_addr().unwrap().port(),
        };
        // Takes the connection, never answers.
        let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(spec_for(&mute).check_answers(wait), Err(Silent::NoAnswer));
        // A peer that reads one probe and sends `reply`; what it read comes back from the thread.
        let answering = |reply: &'static [u8]| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let spec = spec_for(&l);
            let server = std::thread::spawn(move || {
                let (mut c, _) = l.accept().unwrap();
                let mut buf = [0u8; 12];
                c.read_exact(&mut buf).unwrap();
                c.write_all(reply).unwrap();
                buf
            });
            (spec, server)
        };
        // Answers, but not as a TPM.
        let (spec, server) = answering(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        assert_eq!(spec.check_answers(wait), Err(Silent::NotATpm));
        server.join().unwrap();
        // Answers as a TPM does (a TPM_RC_INITIALIZE response header).
        let (spec, server) = answering(&[0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0x00]);
        assert_eq!(spec.check_answers(wait), Ok(()));
        assert_eq!(server.join().unwrap(), PROBE_COMMAND);
        // Nothing listening, and the other kinds: left to the TSS.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert_eq!(TctiSpec::Swtpm { host: "127.0.0.1".into(), port }.check_answers(wait), Ok(()));
        assert_eq!(TctiSpec::Device { path: "/dev/tpmrm0".into() }.check_answers(wait), Ok(()));
    }

    #[test]
    fn a_socket_swtpm_is_reached_through_socat_from_its_dir_quoted_for_sh() {
        let s = TctiSpec::SwtpmSocket { dir: PathBuf::from("/srv/it's a dir/swtpm") };
        assert_eq!(
            s.loader_conf(),
            "cmd:cd '/srv/it'\\''s a dir/swtpm' && exec socat STDIO UNIX-CONNECT:data.sock 2>/dev/null"
        );
        assert_eq!(s.to_string(), "swtpm on unix:/srv/it's a dir/swtpm/data.sock");
        assert!(s.keeps_connection() && s.is_loopback_swtpm());
        let t = TctiSpec::swtpm_local(2321);
        assert_eq!(t.loader_conf(), t.to_string());
    }

    #[test]
    fn parses_and_prints_both_kinds() {
        let d: TctiSpec = "device:/dev/tpmrm0".parse().unwrap();
        assert_eq!(d, TctiSpec::default_device());
        assert_eq!(d.to_string(), "device:/dev/tpmrm0");
        assert!(d.keeps_connection());
        let s: TctiSpec = "swtpm:port=2321,host=localhost".parse().unwrap();
        assert_eq!(s.to_string(), "swtpm:host=localhost,port=2321");
        assert!(!s.keeps_connection());
        assert!(!"device:/dev/tpm0".parse::<TctiSpec>().unwrap().keeps_connection());
        assert!(s.is_loopback_swtpm() && TctiSpec::swtpm_local(1).is_loopback_swtpm());
        assert!(!"swtpm:host=10.0.0.5,port=2321".parse::<TctiSpec>().unwrap().is_loopback_swtpm());
        assert!(!d.is_loopback_swtpm());
    }

    #[test]
    fn rejects_with_clear_errors() {
        assert_eq!("mssim:".parse::<TctiSpec>(), Err(TctiParseError::UnknownKind("mssim:".into())));
        assert_eq!("device:tpmrm0".parse::<TctiSpec>(), Err(TctiParseError::DevicePath("tpmrm0".into())));
        assert_eq!("swtpm:host=a".parse::<TctiSpec>(), Err(TctiParseError::SwtpmMissing));
        assert_eq!("swtpm:path=/x".parse::<TctiSpec>(), Err(TctiParseError::SwtpmOption("path=/x".into())));
        assert_eq!("swtpm:host=a,port=1,port=2".parse::<TctiSpec>(), Err(TctiParseError::SwtpmOption("port=2".into())));
        assert_eq!("swtpm:host=a,port=65535".parse::<TctiSpec>(), Err(TctiParseError::SwtpmPort("65535".into())));
        assert_eq!("swtpm:host=a b,port=1".parse::<TctiSpec>(), Err(TctiParseError::SwtpmHost("a b".into())));
        let msg = "nope".parse::<TctiSpec>().unwrap_err().to_string();
        assert!(msg.contains("device:/dev/tpmrm0"), "{msg}");
    }

    #[test]
    fn hint_names_the_port_pair() {
        let h = TctiSpec::swtpm_local(4000).start_hint();
        assert!(h.contains("port=4000") && h.contains("port=4001") && h.contains("--tpm auto"), "{h}");
    }
}
