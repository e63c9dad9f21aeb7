//! How the CLI talks to people: one logging setup, and errors printed once with their causes.

use std::error::Error;
use std::io::Write;

/// Logs go to stderr, at `warn` unless `BULWARK_LOG` says otherwise (e.g. `BULWARK_LOG=info`). Nothing a
/// tenant sends and no secret is ever a log field.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BULWARK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // A second init (tests) is harmless: the first subscriber stays.
    // Colours only for a person at a terminal: a log redirected to a file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
}

/// Keeps the default panic report for real bugs, but not for the panics the vault catches and reports
/// as an error of its own (the storage engine on a damaged file): those would print a Rust panic message,
/// and with `RUST_BACKTRACE` a backtrace, before the clean error. They are logged at debug level instead.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if crate::vault::storage_panic_is_caught() {
            tracing::debug!("storage engine panicked on a damaged file (reported as an error): {info}");
            return;
        }
        default(info);
    }));
}

/// Prints `error: …` and then each cause on its own line, once.
pub fn print_error(e: &(dyn Error + 'static)) {
    eprintln!("error: {e}");
    let mut cause = e.source();
    while let Some(c) = cause {
        eprintln!("  caused by: {c}");
        cause = c.source();
    }
}

/// For `--json`: the error as one JSON object on one line of stderr, `{"error": …, "causes": […]}` (the
/// message, then each cause in order), after whatever was logged, so it is stderr's last line.
pub fn print_error_json(e: &(dyn Error + 'static)) {
    let mut causes = Vec::new();
    let mut cause = e.source();
    while let Some(c) = cause {
        causes.push(c.to_string());
        cause = c.source();
    }
    eprintln!("{}", serde_json::json!({ "error": e.to_string(), "causes": causes }));
}

/// A write to stdout failed: the reader closed the pipe (`| head`), or a redirect hit a full disk.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to stdout")]
pub struct StdoutError(#[source] pub std::io::Error);

impl StdoutError {
    /// Whether the reader went away (a closed pipe): nobody is left to tell, so the output just ends.
    pub fn reader_gone(&self) -> bool {
        self.0.kind() == std::io::ErrorKind::BrokenPipe
    }
}

/// Writes `args` to stdout, returning a failure instead of panicking as `print!` does.
pub fn out(args: std::fmt::Arguments<'_>) -> Result<(), StdoutError> {
    std::io::stdout().lock().write_fmt(args).map_err(StdoutError)
}

/// Writes `args` and a newline to stdout (see [`out`]).
pub fn outln(args: std::fmt::Arguments<'_>) -> Result<(), StdoutError> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_fmt(args).and_then(|()| stdout.write_all(b"\n")).map_err(StdoutError)
}

/// Flushes stdout, whose last bytes would otherwise be written (and their failure ignored) at exit.
pub fn flush_stdout() -> Result<(), StdoutError> {
    std::io::stdout().flush().map_err(StdoutError)
}

/// `print!` for commands that return errors: a failed write to stdout returns [`StdoutError`] from the
/// enclosing function.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::report::out(format_args!($($arg)*))? };
}

/// `println!` for commands that return errors (see [`out!`]).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => { $crate::report::outln(format_args!($($arg)*))? };
}

/// `e` and its causes on one line, for an error that carries another's text.
pub fn with_causes(e: &(dyn Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// What can go wrong parsing `bulwark tpm policy-pcr` arguments.
#[derive(Debug, thiserror::Error)]
pub enum PolicyArgError {
    /// `--pcr` is not `INDEX=HEX`.
    #[error("--pcr {0:?} is not INDEX=HEX")]
    Shape(String),
    /// The index is not a PCR number.
    #[error("PCR index {0:?} is not a number from 0 to 23")]
    Index(String),
    /// The value is not hex.
    #[error("PCR {0} value is not hex")]
    Hex(u8),
    /// The bank is unknown.
    #[error("unknown PCR bank {0:?}: use sha1, sha256, sha384 or sha512")]
    Bank(String),
    /// The same PCR twice.
    #[error("PCR {0} given twice")]
    Duplicate(u8),
    /// The policy layer refused the values (e.g. wrong length for the bank).
    #[error(transparent)]
    Policy(#[from] bulwark_tpm::PolicyError),
}

/// Computes the PolicyPCR digest for `bulwark tpm policy-pcr`.
pub fn policy_pcr(bank: &str, pcrs: &[String]) -> Result<Vec<u8>, PolicyArgError> {
    let bank: bulwark_tpm::PcrBank = bank.parse().map_err(|_| PolicyArgError::Bank(bank.to_string()))?;
    let mut values: Vec<(u8, Vec<u8>)> = Vec::new();
    for p in pcrs {
        let (i, v) = p.split_once('=').ok_or_else(|| PolicyArgError::Shape(p.clone()))?;
        let idx: u8 = i.trim().parse().ok().filter(|n| *n < 24).ok_or_else(|| PolicyArgError::Index(i.to_string()))?;
        if values.iter().any(|(j, _)| *j == idx) {
            return Err(PolicyArgError::Duplicate(idx));
        }
        let value = hex::decode(v.trim()).map_err(|_| PolicyArgError::Hex(idx))?;
        values.push((idx, value));
    }
    Ok(bulwark_tpm::policy::policy_pcr_digest(bank, &values)?.to_vec())
}
