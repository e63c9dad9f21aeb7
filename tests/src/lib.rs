//! End-to-end test harness for Bulwark: finds (or builds) the real `bulwark` binary, starts one real
//! swtpm per test, and runs the binary against it in a fresh temporary data dir.
//!
//! # Trust model
//!
//! This is test code. It trusts nothing the binary prints: every check compares against a value the
//! test computed itself or an independent tool (tpm2-tools) reported. The TPM is always a real swtpm
//! process, started and killed by an RAII guard ([`TestTpm`]); there is no mock or fake of any part.
//! Helpers panic (`expect`) on any harness failure, with a message naming what failed, because a
//! harness failure is a failed test. Children run with `TSS2_LOG=all+NONE` so the TSS stays quiet.
//!
//! # Must not depend on
//!
//! Nothing outside the workspace's test needs; it is never linked into a product binary.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bulwark_appliance::ids::TenantId;
use bulwark_appliance::vault::{Vault, VaultError};
use bulwark_ledger::oar::{Actor, Digest, OarDraft, OpKind, Outcome, Role, RuntimeState, Target};
use bulwark_ledger::{Attested, Gate, LedgerSigner, SignerSeed};
use bulwark_tpm::swtpm::{Swtpm, SwtpmError};
use tempfile::TempDir;

/// How long one `bulwark` child may run before the test kills it and fails.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(180);

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(Path::to_path_buf).unwrap_or_else(|| here.to_path_buf())
}

/// The target profile directory this test executable was built into (`target/<profile>/deps/<test>` →
/// `target/<profile>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot locate the test executable");
    let deps = exe.parent().expect("test executable has no parent directory");
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps directory has no parent").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// A workspace binary `name`: `$env_var` if set, else `name` in the target profile directory this test
/// executable was built into, once [`build_binaries`] has brought it up to date.
fn workspace_bin(name: &str, env_var: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{env_var}={} is not a file", p.display());
        return p;
    }
    let profile_dir = profile_dir();
    build_binaries(&profile_dir);
    let bin = profile_dir.join(name);
    assert!(bin.is_file(), "{name} binary not found at {} after building it", bin.display());
    bin
}

/// The real `bulwark` binary (`$BULWARK_BIN` overrides), built first if stale.
pub fn bulwark_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("bulwark", "BULWARK_BIN"))
}

/// The real `bulwark-verify` binary (`$BULWARK_VERIFY_BIN` overrides), built first if stale.
pub fn verify_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("bulwark-verify", "BULWARK_VERIFY_BIN"))
}

/// Builds both binaries the way `scripts/run-appliance` builds them (one `cargo build --locked -p
/// bulwark-appliance -p bulwark-verify`, so with the features the shipped binaries get, not the ones a
/// workspace build of every test unifies), into `profile_dir`'s target dir, once per test process. Cargo
/// decides what is stale (a no-op when nothing is), so a change anywhere in either package, a `main.rs`
/// included, is in the binary a test runs.
fn build_binaries(profile_dir: &Path) {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let target_dir = profile_dir.parent().expect("profile directory has no parent");
        let profile = profile_dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root()).env("CARGO_TARGET_DIR", target_dir).args([
            "build",
            "--locked",
            "-p",
            "bulwark-appliance",
            "-p",
            "bulwark-verify",
        ]);
        match profile {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let status = cmd.status().unwrap_or_else(|e| panic!("cannot run cargo to build the binaries: {e}"));
        assert!(status.success(), "cargo build -p bulwark-appliance -p bulwark-verify failed: {status}");
    });
}

/// The result of one finished child process.
#[derive(Debug)]
pub struct Run {
    /// What was run, for messages.
    pub what: String,
    /// Exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr (lossily decoded).
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns self.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(
            self.status.success(),
            "`{}` failed ({}):\nstdout: {}\nstderr: {}",
            self.what,
            self.status,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        );
        self
    }

    /// Asserts a non-zero exit, an empty stdout, and a stderr containing each of `needles`
    /// (case-insensitive); returns self.
    #[track_caller]
    pub fn fails_with(self, needles: &[&str]) -> Self {
        assert!(
            !self.status.success(),
            "`{}` succeeded but must fail:\nstdout: {}\nstderr: {}",
            self.what,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        );
        assert!(
            self.stdout.is_empty(),
            "`{}` failed but printed on stdout: {:?}",
            self.what,
            String::from_utf8_lossy(&self.stdout)
        );
        let lower = self.stderr.to_lowercase();
        for n in needles {
            assert!(
                lower.contains(&n.to_lowercase()),
                "`{}` failed, but stderr does not mention {n:?}:\n{}",
                self.what,
                self.stderr
            );
        }
        self
    }

    /// Stdout as UTF-8.
    #[track_caller]
    pub fn stdout_str(&self) -> &str {
        std::str::from_utf8(&self.stdout).expect("stdout is not UTF-8")
    }

    /// Stdout parsed as exactly one JSON value on one line.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        let text = self.stdout_str();
        let trimmed = text.trim_end_matches('\n');
        assert!(!trimmed.contains('\n'), "`{}` printed more than one line: {text:?}", self.what);
        serde_json::from_str(trimmed).unwrap_or_else(|e| panic!("`{}` printed no JSON ({e}): {text:?}", self.what))
    }
}

/// Waits up to `timeout` for `child`, collecting its output; on timeout kills it and returns `None` as
/// the status (with whatever output it had written).
pub fn wait_within(mut child: Child, timeout: Duration) -> (Option<ExitStatus>, Vec<u8>, String) {
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(p) = out_pipe.as_mut() {
            let _ = p.read_to_end(&mut v);
        }
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = p.read_to_end(&mut v);
        }
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("cannot wait for child") {
            break Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out_t.join().expect("stdout reader panicked");
    let stderr = String::from_utf8_lossy(&err_t.join().expect("stderr reader panicked")).into_owned();
    (status, stdout, stderr)
}

/// Waits for `child` (whose stdin is already closed or fed) with [`CHILD_TIMEOUT`], collecting its output.
#[track_caller]
pub fn finish(what: String, child: Child) -> Run {
    let (status, stdout, stderr) = wait_within(child, CHILD_TIMEOUT);
    let Some(status) = status else {
        panic!("`{what}` ran longer than {CHILD_TIMEOUT:?}; killed.\nstderr: {stderr}");
    };
    Run { what, status, stdout, stderr }
}

/// A `bulwark` command with no data dir or TPM arguments (for `boot` and `tpm policy-pcr`).
pub fn bulwark() -> Command {
    let mut c = Command::new(bulwark_bin());
    c.env("TSS2_LOG", "all+NONE").env_remove("BULWARK_DATA_DIR").env_remove("BULWARK_LOG");
    c
}

/// Runs `cmd` with `stdin` fed and closed, and collects the result.
#[track_caller]
pub fn run_cmd(mut cmd: Command, stdin: Option<&[u8]>) -> Run {
    let what = describe(&cmd);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().expect("stdin was piped");
        // A child that refuses early may close its stdin: a broken pipe here is its answer, not ours.
        let _ = pipe.write_all(bytes);
        drop(pipe);
    }
    finish(what, child)
}

fn describe(cmd: &Command) -> String {
    let prog = Path::new(cmd.get_program()).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    format!("{prog} {}", args.join(" "))
}

/// A real swtpm for one test, in its own temporary state dir; killed on drop.
#[derive(Debug)]
pub struct TestTpm {
    swtpm: Option<Swtpm>,
    port: u16,
    state: TempDir,
}

impl TestTpm {
    /// Starts a fresh swtpm.
    #[track_caller]
    pub fn start() -> Self {
        let state = tempfile::Builder::new().prefix("bulwark-e2e-swtpm-").tempdir().expect("cannot create swtpm dir");
        let swtpm = match Swtpm::start(state.path()) {
            Ok(s) => s,
            // Every ephemeral port can be held by TIME_WAIT sockets when many short TPM connections ran
            // in the last minute (each TPM operation on a swtpm is its own connection): pick a port
            // pair below the ephemeral range instead.
            Err(SwtpmError::NoPorts(_)) => start_below_ephemeral_range(state.path()),
            Err(e) => panic!("cannot start swtpm: {e:?}"),
        };
        let port = swtpm.port();
        TestTpm { swtpm: Some(swtpm), port, state }
    }

    /// The TCTI string (`swtpm:host=127.0.0.1,port=P`).
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The data port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The swtpm's state directory (the TPM itself: never part of a data-dir backup).
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// Power-cycles the TPM: stops the swtpm and starts it again on the same state and port, which is a
    /// new boot cycle (PCRs reset, NV and persistent objects kept, reset count incremented).
    #[track_caller]
    pub fn restart(&mut self) {
        if let Some(s) = self.swtpm.take() {
            s.stop();
        }
        let mut last = None;
        for _ in 0..50 {
            match Swtpm::start_on(self.state.path(), self.port) {
                Ok(s) => {
                    self.swtpm = Some(s);
                    return;
                }
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        panic!("cannot restart swtpm on port {}: {last:?}", self.port);
    }

    /// A tpm2-tools command aimed at this swtpm.
    pub fn tpm2(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        c.env("TPM2TOOLS_TCTI", self.tcti()).env("TSS2_LOG", "all+NONE");
        c
    }

    /// Extends `pcr` from outside Bulwark, as other software or an attacker would, with `tpm2_pcrextend`.
    /// `digests` is a list of (bank name, digest).
    #[track_caller]
    pub fn extend(&self, pcr: u8, digests: &[(&str, &[u8])]) {
        let spec: Vec<String> = digests.iter().map(|(b, d)| format!("{b}={}", hex::encode(d))).collect();
        let mut c = self.tpm2("tpm2_pcrextend");
        c.arg(format!("{pcr}:{}", spec.join(",")));
        run_cmd(c, None).ok();
    }

    /// Reads PCRs with `tpm2_pcrread` (`selection` like `sha1:0,4+sha256:0,4`): bank → PCR → value.
    #[track_caller]
    pub fn pcr_read(&self, selection: &str) -> BTreeMap<String, BTreeMap<u32, Vec<u8>>> {
        let mut c = self.tpm2("tpm2_pcrread");
        c.arg(selection);
        let run = run_cmd(c, None).ok();
        parse_pcrread(run.stdout_str())
    }
}

/// Whether loopback port `p` can be bound right now.
fn port_free(p: u16) -> bool {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, p)).is_ok()
}

/// Candidate port pairs (`p`, `p + 1`) that are free right now: first from the kernel's ephemeral
/// range, then, when TIME_WAIT sockets hold all of those (each TPM operation on a swtpm is a short
/// connection, so a busy minute can use them up), at random in 10000..32000, below Linux's default
/// ephemeral range.
pub fn free_port_pairs() -> impl Iterator<Item = u16> {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let mut rng = SplitMix64::new((u64::from(std::process::id()) << 32) ^ u64::from(nanos));
    let ephemeral = (0..16).filter_map(|_| {
        let l = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).ok()?;
        let p = l.local_addr().ok()?.port();
        drop(l);
        (p < u16::MAX && port_free(p + 1)).then_some(p)
    });
    let low = (0..256).filter_map(move |_| {
        let p = 10_000 + u16::try_from(rng.below(22_000)).unwrap_or(0);
        (port_free(p) && port_free(p + 1)).then_some(p)
    });
    ephemeral.chain(low)
}

/// Starts a swtpm on a free port pair found by [`free_port_pairs`].
#[track_caller]
fn start_below_ephemeral_range(state: &Path) -> Swtpm {
    let mut last = None;
    for port in free_port_pairs().skip_while(|p| *p >= 32_768).take(32) {
        match Swtpm::start_on(state, port) {
            Ok(s) => return s,
            Err(e) => last = Some(e),
        }
    }
    panic!("cannot start swtpm on any port pair below the ephemeral range: {last:?}");
}

/// Parses `tpm2_pcrread`'s YAML-like text output.
pub fn parse_pcrread(text: &str) -> BTreeMap<String, BTreeMap<u32, Vec<u8>>> {
    let mut out: BTreeMap<String, BTreeMap<u32, Vec<u8>>> = BTreeMap::new();
    let mut bank = None::<String>;
    for line in text.lines() {
        let t = line.trim();
        if let Some(b) = t.strip_suffix(':') {
            bank = Some(b.to_string());
            out.entry(b.to_string()).or_default();
        } else if let (Some(b), Some((idx, val))) = (&bank, t.split_once(':')) {
            let idx: u32 = idx.trim().parse().expect("PCR index in tpm2_pcrread output");
            let val = val.trim().trim_start_matches("0x");
            let bytes = hex::decode(val).expect("PCR value in tpm2_pcrread output");
            out.entry(b.clone()).or_default().insert(idx, bytes);
        }
    }
    out
}

/// One appliance under test: its own swtpm and its own temporary data dir.
#[derive(Debug)]
pub struct Env {
    /// The swtpm.
    pub tpm: TestTpm,
    dir: TempDir,
}

/// A tenant as `tenant create --json` reported it.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Its id (32 hex digits).
    pub id: String,
    /// Its display name.
    pub name: String,
    /// Its one-time recovery secret text.
    pub recovery: String,
    /// Its TPM liveness slot number (`liveness_slot` in `tenant create --json`).
    pub slot: u64,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    /// A fresh swtpm and an empty data dir (not initialised).
    #[track_caller]
    pub fn new() -> Self {
        let tpm = TestTpm::start();
        let dir = tempfile::Builder::new().prefix("bulwark-e2e-").tempdir().expect("cannot create temp dir");
        Env { tpm, dir }
    }

    /// The data dir `D`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A scratch directory beside the data dir (same temp dir, removed with it).
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// `D/tenants/<id>`.
    pub fn tenant_dir(&self, id: &str) -> PathBuf {
        self.data_dir().join("tenants").join(id)
    }

    /// `bulwark --data-dir D --tpm swtpm:host=127.0.0.1,port=P ARGS…`.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = bulwark();
        c.arg("--data-dir").arg(self.data_dir()).arg("--tpm").arg(self.tpm.tcti()).args(args);
        c
    }

    /// Runs `bulwark … ARGS` with no stdin.
    #[track_caller]
    pub fn run(&self, args: &[&str]) -> Run {
        run_cmd(self.cmd(args), None)
    }

    /// Runs `bulwark … ARGS` with `stdin`.
    #[track_caller]
    pub fn run_stdin(&self, args: &[&str], stdin: &[u8]) -> Run {
        run_cmd(self.cmd(args), Some(stdin))
    }

    /// Starts `bulwark … ARGS` in the background with `stdin` fed; finish it with [`finish`].
    #[track_caller]
    pub fn spawn(&self, args: &[&str], stdin: Option<&[u8]>) -> (String, Child) {
        let mut cmd = self.cmd(args);
        let what = describe(&cmd);
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
        if let Some(bytes) = stdin {
            let mut pipe = child.stdin.take().expect("stdin was piped");
            let _ = pipe.write_all(bytes);
        }
        (what, child)
    }

    /// `init` with the default profile (dev-swtpm on this swtpm).
    #[track_caller]
    pub fn init(&self) {
        self.run(&["init"]).ok();
    }

    /// `tenant create NAME --json`, checked and parsed.
    #[track_caller]
    pub fn create_tenant(&self, name: &str) -> Tenant {
        let run = self.run(&["tenant", "create", name, "--json"]).ok();
        let v = run.json();
        let id = v["id"].as_str().expect("tenant create --json has a string id").to_string();
        assert_eq!(id.len(), 32, "tenant id {id:?} is not 32 hex digits");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "tenant id {id:?}");
        assert_eq!(v["name"].as_str(), Some(name));
        let recovery = v["recovery_secret"].as_str().expect("recovery_secret").to_string();
        let slot = v["liveness_slot"].as_u64().expect("liveness_slot");
        Tenant { id, name: name.to_string(), recovery, slot }
    }

    /// `vault put --tenant ID KEY` with `value` on stdin; must succeed.
    #[track_caller]
    pub fn put(&self, id: &str, key: &str, value: &[u8]) {
        self.run_stdin(&["vault", "put", "--tenant", id, key], value).ok();
    }

    /// `vault get --tenant ID KEY` (not checked).
    #[track_caller]
    pub fn get(&self, id: &str, key: &str) -> Run {
        self.run(&["vault", "get", "--tenant", id, key])
    }

    /// `vault get`, which must succeed and print exactly `value`.
    #[track_caller]
    pub fn assert_get(&self, id: &str, key: &str, value: &[u8]) {
        let run = self.get(id, key).ok();
        assert_eq!(run.stdout, value, "vault get {key} of {id} printed {:?}", String::from_utf8_lossy(&run.stdout));
    }
}

/// A real ledger gate for one tenant, in its own temporary directory, for tests that call [`Vault`]
/// directly: it mints the [`Attested`] tokens every record operation requires. The ledger is real (a
/// fresh ML-DSA-65 key, durable appends, signed checkpoints); only the runtime state it records is a
/// fixed placeholder (PCR 15, SHA-256, all zero), since no measurement stage ran.
pub struct TestGate {
    gate: Gate,
    tenant: TenantId,
    // Dropped after the gate, which writes into it until it closes.
    _dir: TempDir,
}

impl std::fmt::Debug for TestGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestGate").field("tenant", &self.tenant).finish_non_exhaustive()
    }
}

impl TestGate {
    /// A new ledger for `tenant` (on tmpfs when there is one) and its gate.
    #[track_caller]
    pub fn new(tenant: TenantId) -> Self {
        let dir = fast_tempdir();
        let seed = SignerSeed::generate().expect("cannot generate a ledger signing seed");
        let signer = LedgerSigner::tenant(tenant, &seed).expect("cannot derive the tenant's ledger key");
        let runtime = RuntimeState::new(15, 0x000B, vec![0; 32]).expect("runtime state");
        let gate = Gate::create(&dir.path().join("ledger"), signer, runtime).expect("cannot create the test ledger");
        TestGate { gate, tenant, _dir: dir }
    }

    /// The tenant this gate's ledger belongs to.
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// The gate itself.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Attests `op` on `target` (a tenant user acting, no parameters) and returns the token.
    #[track_caller]
    pub fn attest(&self, op: OpKind, target: Target) -> Attested {
        let actor = Actor { role: Role::TenantUser, subject: Digest::None };
        self.gate.attest(OarDraft::new(actor, op, target, Digest::None)).expect("the test ledger refused to attest")
    }

    /// A token for `op` on record `key` of `vault` (`VaultPut`, `VaultGet` or `VaultDelete`).
    #[track_caller]
    pub fn for_key(&self, vault: &Vault, op: OpKind, key: &str) -> Attested {
        let target = vault.key_target(key).unwrap_or_else(|e| panic!("no OAR target for key {key:?}: {e}"));
        self.attest(op, target)
    }

    /// A token for a whole-vault operation (`VaultList`, which also covers `verify`).
    #[track_caller]
    pub fn for_vault(&self, op: OpKind) -> Attested {
        self.attest(op, Target::None)
    }

    /// Records the token's operation as succeeded.
    #[track_caller]
    pub fn complete(&self, token: Attested) {
        self.gate.complete(token, Outcome::success(Digest::None)).expect("the test ledger refused an outcome");
    }

    /// `vault.put(key, value)` under a fresh token, completed with the result.
    #[track_caller]
    pub fn put(&self, vault: &Vault, key: &str, value: &[u8]) -> Result<u64, VaultError> {
        let token = self.for_key(vault, OpKind::VaultPut, key);
        let r = vault.put(&token, key, value);
        self.finish(token, r.is_ok());
        r
    }

    fn finish(&self, token: Attested, ok: bool) {
        let outcome = if ok { Outcome::success(Digest::None) } else { Outcome::failure(Digest::None) };
        self.gate.complete(token, outcome).expect("the test ledger refused an outcome");
    }
}

/// A temporary directory on tmpfs (`/dev/shm`) when there is one, else in the default temp dir. For
/// loops of thousands of small durable writes, where what is tested does not depend on the medium and
/// an fsync per iteration on a real disk would dominate the run time.
#[track_caller]
pub fn fast_tempdir() -> TempDir {
    let shm = Path::new("/dev/shm");
    let b = {
        let mut b = tempfile::Builder::new();
        b.prefix("bulwark-e2e-");
        b
    };
    let dir = if shm.is_dir() { b.tempdir_in(shm) } else { b.tempdir() };
    dir.expect("cannot create temp dir")
}

/// Writes a line to the real stderr, past the test harness' output capture, so counts and other
/// measurements show in the test log even when the test passes.
pub fn log_line(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// Copies a directory tree (regular files and directories only).
#[track_caller]
pub fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap_or_else(|e| panic!("mkdir {}: {e}", dst.display()));
    for entry in std::fs::read_dir(src).unwrap_or_else(|e| panic!("read_dir {}: {e}", src.display())) {
        let entry = entry.expect("dir entry");
        let ty = entry.file_type().expect("file type");
        let to = dst.join(entry.file_name());
        if ty.is_dir() {
            copy_tree(&entry.path(), &to);
        } else if ty.is_file() {
            std::fs::copy(entry.path(), &to).unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
}

/// Every regular file under `dir`, recursively, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for entry in rd.flatten() {
            let Ok(ty) = entry.file_type() else { continue };
            if ty.is_dir() {
                stack.push(entry.path());
            } else if ty.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

/// Whether the tests run as root (the owner of `/proc/self`), which some need for mounts and for
/// running a command as another user.
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").expect("/proc/self").uid() == 0
}

/// The exact bytes of every file under `dir`, keyed by path relative to `dir`.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    files_under(dir)
        .into_iter()
        .filter_map(|p| {
            let bytes = std::fs::read(&p).ok()?;
            Some((p.strip_prefix(dir).ok()?.to_path_buf(), bytes))
        })
        .collect()
}

/// Asserts that the files under `dir` are byte for byte what `before` (a [`snapshot`] of it) holds, naming
/// the files made, changed or removed (not their bytes) when they are not.
#[track_caller]
pub fn assert_unchanged(dir: &Path, before: &BTreeMap<PathBuf, Vec<u8>>) {
    let after = snapshot(dir);
    let differ: Vec<_> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(differ.is_empty(), "files made, changed or removed under {}: {differ:?}", dir.display());
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// A small deterministic generator (SplitMix64) for reproducible samples; not for secrets.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (n > 0; the tiny modulo bias is irrelevant for sampling positions).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A non-zero byte (an XOR mask that always changes the byte).
    pub fn nonzero_byte(&mut self) -> u8 {
        loop {
            let b = self.next_u64().to_le_bytes()[0];
            if b != 0 {
                return b;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcrread_output_parses() {
        let text = "  sha1:\n    4 : 0x0000000000000000000000000000000000000000\n  sha256:\n    7 : 0xAB\n";
        let m = parse_pcrread(text);
        assert_eq!(m["sha1"][&4], vec![0u8; 20]);
        assert_eq!(m["sha256"][&7], vec![0xab]);
    }

    #[test]
    fn splitmix_is_deterministic() {
        let (mut a, mut b) = (SplitMix64::new(7), SplitMix64::new(7));
        assert_eq!(a.next_u64(), b.next_u64());
        assert!(a.below(10) < 10);
        assert_ne!(a.nonzero_byte(), 0);
    }
}
