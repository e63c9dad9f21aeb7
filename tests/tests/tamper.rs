//! Files moved between tenants, single-byte flips in sealed blobs and vault files, and a deleted tenant
//! restored from a backup: every one is refused, and never yields different data without an error.

use std::collections::BTreeMap;
use std::path::Path;

use bulwark_appliance::appliance::{Appliance, ApplianceError};
use bulwark_appliance::datadir::DataDir;
use bulwark_appliance::ids::TenantId;
use bulwark_appliance::secret::SecretKey;
use bulwark_appliance::vault::{Vault, VaultError};
use bulwark_ledger::{Attested, OpKind};
use bulwark_tests::{Env, SplitMix64, TestGate, TestTpm, copy_tree};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

/// The vault's two tables, as `appliance/runtime/src/vault.rs` defines them.
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

#[track_caller]
fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
}

#[test]
fn sealed_blob_or_vault_moved_between_tenants_fails() {
    let env = Env::new();
    env.init();
    let a = env.create_tenant("alpha");
    let b = env.create_tenant("bravo");
    env.put(&a.id, "k", b"alpha's secret");
    env.put(&b.id, "k", b"bravo's secret");
    let (da, db) = (env.tenant_dir(&a.id), env.tenant_dir(&b.id));
    let backup = env.scratch().join("bravo-backup");
    copy_tree(&db, &backup);
    let restore_b = || {
        for f in ["kek.sealed", "vault.redb"] {
            copy(&backup.join(f), &db.join(f));
        }
    };

    // A's sealed KEK in B's place: it unseals (A is alive, same machine state), but A's KEK does not
    // open B's vault.
    copy(&da.join("kek.sealed"), &db.join("kek.sealed"));
    env.get(&b.id, "k").fails_with(&[]);
    env.run(&["vault", "list", "--tenant", &b.id]).fails_with(&[]);
    restore_b();
    env.assert_get(&b.id, "k", b"bravo's secret");

    // A's vault file in B's place: B's KEK does not unwrap A's data key.
    copy(&da.join("vault.redb"), &db.join("vault.redb"));
    env.get(&b.id, "k").fails_with(&[]);
    restore_b();
    env.assert_get(&b.id, "k", b"bravo's secret");

    // Both of A's files in B's place: A's KEK opens A's data key only under A's id.
    copy(&da.join("kek.sealed"), &db.join("kek.sealed"));
    copy(&da.join("vault.redb"), &db.join("vault.redb"));
    env.get(&b.id, "k").fails_with(&[]);
    restore_b();

    // One of A's stored records written into B's vault in place of B's record under the same key (no
    // bulwark process runs). Each vault holds that one record, under a locator only its own keys give.
    let only_record = |path: &Path| {
        let dbase = Database::open(path).expect("open a vault with redb");
        let tx = dbase.begin_read().expect("read tx");
        let t = tx.open_table(RECORDS).expect("records");
        let entries: Vec<(String, Vec<u8>)> = t
            .iter()
            .expect("iter")
            .map(|e| e.expect("entry"))
            .map(|(k, v)| (k.value().into(), v.value().into()))
            .collect();
        assert_eq!(entries.len(), 1, "one record, k");
        entries.into_iter().next().expect("one record")
    };
    let (a_locator, a_env) = only_record(&da.join("vault.redb"));
    let (b_locator, _) = only_record(&db.join("vault.redb"));
    assert_ne!(a_locator, b_locator, "the same key is stored under different names in different vaults");
    {
        let dbase = Database::open(db.join("vault.redb")).expect("open B's vault with redb");
        let tx = dbase.begin_write().expect("write tx");
        tx.open_table(RECORDS).expect("records").insert(b_locator.as_str(), a_env.as_slice()).expect("insert");
        tx.commit().expect("commit");
    }
    env.get(&b.id, "k").fails_with(&["integrity"]);
    env.run(&["vault", "verify", "--tenant", &b.id]).fails_with(&["integrity"]);
    restore_b();

    env.assert_get(&b.id, "k", b"bravo's secret");
    env.assert_get(&a.id, "k", b"alpha's secret");
}

fn kind(e: &ApplianceError) -> &'static str {
    match e {
        ApplianceError::SealedCorrupt { .. } => "sealed blob corrupt",
        ApplianceError::MeasuredStateChanged { .. } => "measured state changed",
        ApplianceError::Shredded(_) => "shredded",
        ApplianceError::Vault(_) => "vault",
        ApplianceError::Tpm(_) => "other TPM error",
        _ => "other",
    }
}

#[test]
fn every_byte_flip_of_a_sealed_blob_is_detected() {
    let tpm = TestTpm::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let dd = DataDir::new(&dir.path().join("data")).expect("data dir");
    // The library measures this test executable as "the runtime": fine, this data dir and swtpm are ours.
    let (mut app, _appliance_recovery) = Appliance::init(dd.clone(), &tpm.tcti(), None, false).expect("init");
    let id = app.create_tenant("legal").expect("create").record.id;
    app.unlock(id).expect("unlock").put("k", b"value").expect("put");
    let path = dd.tenant_dir(&id).join("kek.sealed");
    let pristine = std::fs::read(&path).expect("kek.sealed");
    assert!(pristine.len() > 200, "sealed blob is {} bytes", pristine.len());

    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let mut undetected = Vec::new();
    for pos in 0..pristine.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bytes = pristine.clone();
            bytes[pos] ^= mask;
            std::fs::write(&path, &bytes).expect("write flipped blob");
            match app.unlock(id) {
                Ok(_) => undetected.push((pos, mask)),
                Err(e) => *kinds.entry(kind(&e)).or_default() += 1,
            }
        }
    }
    std::fs::write(&path, &pristine).expect("restore");
    bulwark_tests::log_line(&format!(
        "sealed blob of {} bytes, 3 flips per byte: refused as {kinds:?}",
        pristine.len()
    ));
    assert!(undetected.is_empty(), "flips (position, mask) that still unlocked: {undetected:?}");
    let t = app.unlock(id).expect("restored blob unlocks");
    assert_eq!(&*t.get("k").expect("get").0, b"value");
}

/// What a vault at `path` shows when opened with the right tenant and KEK.
#[derive(Debug, PartialEq)]
enum Seen {
    /// Every read and the full verification passed, and every record equals the original.
    Intact,
    /// Some step refused, naming this.
    Refused(String),
    /// Something read back differently without any error: the one outcome that must never happen.
    Wrong(String),
}

/// Real attestation tokens for every operation [`examine`] runs on one vault: a `VaultGet` per wanted
/// record and one `VaultList` (which covers `list` and `verify`), minted once from a real ledger gate.
/// A token names scope, operation and target, so one token serves every reopened copy of the vault;
/// minting once keeps the tens of thousands of examinations below from each waiting on a signed,
/// durable ledger append, which is not what these tests measure.
struct Tokens {
    _gate: TestGate,
    gets: BTreeMap<String, Attested>,
    list: Attested,
    /// Each record's key by the locator it is stored under.
    keys: BTreeMap<String, String>,
}

impl Tokens {
    /// Mints the tokens for the pristine vault at `path` (opened once to derive each record's OAR target).
    fn mint(path: &Path, tenant: TenantId, kek: &SecretKey, want: &BTreeMap<String, Vec<u8>>) -> Self {
        let gate = TestGate::new(tenant);
        let v = Vault::open(path, tenant, kek).expect("open the pristine vault to mint tokens");
        let gets = want.keys().map(|k| (k.clone(), gate.for_key(&v, OpKind::VaultGet, k))).collect();
        let list = gate.for_vault(OpKind::VaultList);
        let keys = want.keys().map(|k| (v.record_locator(k).expect("locator"), k.clone())).collect();
        Tokens { _gate: gate, gets, list, keys }
    }
}

/// Opens the vault read-only (as every reading command does) and reads everything in it: every record,
/// the stored secret, the listing, and the full verification.
fn examine(
    path: &Path,
    tenant: TenantId,
    kek: &SecretKey,
    want: &BTreeMap<String, Vec<u8>>,
    seed: &SecretKey,
    tokens: &Tokens,
) -> Seen {
    let refused = |what: &str, e: VaultError| Seen::Refused(format!("{what}: {e}"));
    let v = match Vault::open_read_only(path, tenant, kek) {
        Ok(v) => v,
        Err(e) => return refused("open", e),
    };
    for (k, value) in want {
        match v.get(&tokens.gets[k], k) {
            Ok(got) if &*got == value.as_slice() => {}
            Ok(got) => return Seen::Wrong(format!("record {k:?} reads {:?}", String::from_utf8_lossy(&got))),
            Err(e) => return refused("get", e),
        }
    }
    match v.get_secret("signing-seed") {
        Ok(got) if got == *seed => {}
        Ok(_) => return Seen::Wrong("the stored secret reads differently".into()),
        Err(e) => return refused("get_secret", e),
    }
    let listing = match v.list(&tokens.list) {
        Ok(list) => list.into_iter().map(|r| r.key).collect::<Vec<_>>(),
        Err(e) => return refused("list", e),
    };
    match v.verify(&tokens.list) {
        Ok(n) if n == want.len() && listing.iter().eq(want.keys()) => Seen::Intact,
        Ok(n) => Seen::Wrong(format!("verify passed with {n} records listed as {listing:?}")),
        Err(e) => refused("verify", e),
    }
}

/// Whether opening or verifying the whole vault refuses (a renamed entry must fail `verify`, not only
/// be missing from `get`).
fn verify_refuses(path: &Path, tenant: TenantId, kek: &SecretKey, tokens: &Tokens) -> bool {
    Vault::open(path, tenant, kek).and_then(|v| v.verify(&tokens.list)).is_err()
}

struct SmallVault {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    tenant: TenantId,
    kek: SecretKey,
    seed: SecretKey,
    want: BTreeMap<String, Vec<u8>>,
    tokens: Tokens,
}

impl SmallVault {
    /// [`examine`] on this vault's file.
    fn examine(&self) -> Seen {
        examine(&self.path, self.tenant, &self.kek, &self.want, &self.seed, &self.tokens)
    }
}

fn small_vault() -> SmallVault {
    let dir = bulwark_tests::fast_tempdir();
    let path = dir.path().join("vault.redb");
    let tenant = TenantId::random().expect("tenant id");
    let (kek, seed) = (SecretKey::random(), SecretKey::random());
    let mut want = BTreeMap::new();
    {
        let gate = TestGate::new(tenant);
        let v = Vault::create(&path, tenant, &kek).expect("create");
        gate.put(&v, "k1", b"first version").expect("put");
        gate.put(&v, "k1", b"second version").expect("put");
        gate.put(&v, "contract/2026", b"Indemnity capped").expect("put");
        gate.put(&v, "empty", b"").expect("put");
        v.put_secret("signing-seed", &seed).expect("put_secret");
        want.insert("k1".to_string(), b"second version".to_vec());
        want.insert("contract/2026".to_string(), b"Indemnity capped".to_vec());
        want.insert("empty".to_string(), Vec::new());
    }
    let tokens = Tokens::mint(&path, tenant, &kek, &want);
    SmallVault { _dir: dir, path, tenant, kek, seed, want, tokens }
}

/// One stored entry: its table, key and value bytes.
type Entry = (TableDefinition<'static, &'static str, &'static [u8]>, String, Vec<u8>);

fn all_entries(db: &Database) -> Vec<Entry> {
    let tx = db.begin_read().expect("read tx");
    let mut out = Vec::new();
    for table in [RECORDS, META] {
        let t = tx.open_table(table).expect("table");
        for item in t.iter().expect("iter") {
            let (k, v) = item.expect("entry");
            out.push((table, k.value().to_string(), v.value().to_vec()));
        }
    }
    out
}

fn write_entry(path: &Path, table: TableDefinition<&str, &[u8]>, remove: Option<&str>, insert: &[(&str, &[u8])]) {
    let db = Database::open(path).expect("open with redb");
    let tx = db.begin_write().expect("write tx");
    {
        let mut t = tx.open_table(table).expect("table");
        if let Some(k) = remove {
            t.remove(k).expect("remove");
        }
        for (k, v) in insert {
            t.insert(*k, *v).expect("insert");
        }
    }
    tx.commit().expect("commit");
}

/// The wrapped data key's envelope starts with its version (a postcard varint, stored as 0); a vault whose
/// stored version was changed to 1 is refused. (Also covered by the sweep below; kept as a named check.)
#[test]
fn wrapped_data_key_version_byte_flip_is_detected() {
    let sv = small_vault();
    let mut dek = {
        let db = Database::open(&sv.path).expect("open with redb");
        let tx = db.begin_read().expect("read tx");
        let t = tx.open_table(META).expect("meta");
        t.get("dek").expect("get").expect("dek stored").value().to_vec()
    };
    assert_eq!(dek[0], 0, "the wrapped DEK's version varint");
    dek[0] ^= 0x01;
    write_entry(&sv.path, META, None, &[("dek", &dek)]);
    let seen = sv.examine();
    assert!(matches!(seen, Seen::Refused(_)), "a changed stored byte of the wrapped DEK went unnoticed: {seen:?}");
}

#[test]
fn every_stored_byte_flip_in_a_vault_is_detected() {
    let sv = small_vault();
    let entries = {
        let db = Database::open(&sv.path).expect("open with redb");
        all_entries(&db)
    };
    let names: Vec<String> = entries.iter().map(|(t, k, _)| format!("{}/{k}", t.name())).collect();
    assert!(names.contains(&"meta/dek".to_string()) && names.contains(&"meta/set-digest".to_string()), "{names:?}");
    assert_eq!(sv.examine(), Seen::Intact);

    let (mut value_flips, mut key_flips) = (0usize, 0usize);
    let mut undetected = Vec::new();
    for (table, key, value) in &entries {
        // Every byte of the stored value.
        for pos in 0..value.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut v = value.clone();
                v[pos] ^= mask;
                write_entry(&sv.path, *table, None, &[(key, &v)]);
                match sv.examine() {
                    Seen::Refused(_) => {}
                    Seen::Intact => undetected.push(format!("{}/{key} value byte {pos} ^ {mask:#04x}", table.name())),
                    Seen::Wrong(w) => panic!("{}/{key} value byte {pos} ^ {mask:#04x}: {w}", table.name()),
                }
                value_flips += 1;
            }
        }
        write_entry(&sv.path, *table, None, &[(key, value)]);
        // Every byte of the key: the entry renamed (flips that keep the key a valid string).
        for pos in 0..key.len() {
            for mask in [0x01u8, 0x20] {
                let mut k = key.clone().into_bytes();
                k[pos] ^= mask;
                let Ok(renamed) = String::from_utf8(k) else { continue };
                if entries.iter().any(|(t, other, _)| t.name() == table.name() && *other == renamed) {
                    continue;
                }
                write_entry(&sv.path, *table, Some(key), &[(&renamed, value)]);
                let seen = sv.examine();
                assert!(!matches!(seen, Seen::Wrong(_)), "{}/{key} renamed to {renamed:?}: {seen:?}", table.name());
                if seen == Seen::Intact || !verify_refuses(&sv.path, sv.tenant, &sv.kek, &sv.tokens) {
                    undetected.push(format!("{}/{key} renamed to {renamed:?}", table.name()));
                }
                if table.name() == RECORDS.name() {
                    // A read of the record whose entry was renamed reports the tampering, not "no record".
                    let name = &sv.tokens.keys[key];
                    let got =
                        Vault::open(&sv.path, sv.tenant, &sv.kek).and_then(|v| v.get(&sv.tokens.gets[name], name));
                    assert!(
                        matches!(&got, Err(VaultError::Integrity(m)) if m.contains("set digest")),
                        "get of {name:?} (stored as {key}) renamed to {renamed:?}: {got:?}"
                    );
                }
                write_entry(&sv.path, *table, Some(&renamed), &[(key, value)]);
                key_flips += 1;
            }
        }
    }
    bulwark_tests::log_line(&format!(
        "vault stored-byte flips: {value_flips} value flips and {key_flips} key flips over {} entries; undetected: {:?}",
        entries.len(),
        undetected
    ));
    assert!(undetected.is_empty(), "undetected: {undetected:#?}");
    assert_eq!(sv.examine(), Seen::Intact);
}

/// Silences panics raised inside redb (counted by the tests instead); every other panic still prints.
fn quiet_redb_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.location().is_some_and(|l| l.file().contains("/redb-")) {
                default(info);
            }
        }));
    });
}

/// [`examine`], with a panic inside the vault's store reported as a refusal of step "redb panicked".
fn examine_catching(
    path: &Path,
    tenant: TenantId,
    kek: &SecretKey,
    want: &BTreeMap<String, Vec<u8>>,
    seed: &SecretKey,
    tokens: &Tokens,
) -> Seen {
    quiet_redb_panics();
    // The tokens (which hold the gate's channel, hence not UnwindSafe) are only read by `examine`, so a
    // panic inside the store cannot leave them half-changed.
    let run = std::panic::AssertUnwindSafe(|| examine(path, tenant, kek, want, seed, tokens));
    std::panic::catch_unwind(run).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Seen::Refused(format!("redb panicked: {msg}"))
    })
}

/// The environment variable that turns [`raw_flip_worker`] on; it names the work directory.
const FLIP_DIR_ENV: &str = "BULWARK_E2E_FLIP_DIR";
/// Where the worker starts in the flip list.
const FLIP_START_ENV: &str = "BULWARK_E2E_FLIP_START";

/// How raw flips of a vault file came out.
#[derive(Debug, Default)]
struct FlipTally {
    /// Refused with an error, by the step that refused.
    refused: BTreeMap<String, usize>,
    /// Everything read back identical, and verified.
    no_effect: usize,
    /// The vault's store panicked (caught): a refusal, but not a clean error.
    panicked: Vec<(usize, u8, String)>,
    /// The process died (e.g. an allocation of terabytes aborted it): nothing wrong was returned, but
    /// no clean error either.
    crashed: Vec<(usize, u8, String)>,
    /// Different data without an error: must never happen.
    wrong: Vec<(usize, u8, String)>,
}

impl FlipTally {
    fn detected(&self) -> usize {
        self.refused.values().sum::<usize>() + self.panicked.len() + self.crashed.len()
    }
    fn total(&self) -> usize {
        self.detected() + self.no_effect + self.wrong.len()
    }
}

/// Flips one byte per (position, mask) of `flips` in copies of the vault file `sv`, one at a time, and
/// examines each. The examination runs in a child process (this test binary, running
/// [`raw_flip_worker`]), because a corrupt store can abort a process outright; a child that dies is
/// restarted after the flip that killed it.
fn raw_flips(sv: &SmallVault, flips: &[(usize, u8)]) -> FlipTally {
    let work = bulwark_tests::fast_tempdir();
    copy(&sv.path, &work.path().join("pristine.redb"));
    let mut params =
        format!("{}\n{}\n{}\n", sv.tenant, hex::encode(sv.kek.expose_secret()), hex::encode(sv.seed.expose_secret()));
    for (k, v) in &sv.want {
        params.push_str(&format!("{k}\t{}\n", hex::encode(v)));
    }
    std::fs::write(work.path().join("params.txt"), params).expect("params");
    let list: String = flips.iter().map(|(p, m)| format!("{p} {m}\n")).collect();
    std::fs::write(work.path().join("flips.txt"), list).expect("flips");

    let mut tally = FlipTally::default();
    let mut next = 0usize;
    while next < flips.len() {
        let exe = std::env::current_exe().expect("test executable");
        let child = std::process::Command::new(exe)
            .args(["raw_flip_worker", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(FLIP_DIR_ENV, work.path())
            .env(FLIP_START_ENV, next.to_string())
            .env("RUST_BACKTRACE", "0")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the flip worker");
        let (status, out, err) = bulwark_tests::wait_within(child, std::time::Duration::from_secs(120));
        let out = String::from_utf8_lossy(&out);
        let mut started = None;
        for line in out.lines() {
            let mut parts = line.splitn(4, ' ');
            match (parts.next(), parts.next().and_then(|i| i.parse::<usize>().ok())) {
                (Some("START"), Some(i)) => started = Some(i),
                (Some("DONE"), Some(i)) => {
                    started = None;
                    next = i + 1;
                    let kind = parts.next().unwrap_or("");
                    let msg = parts.next().unwrap_or("").to_string();
                    let (pos, mask) = flips[i];
                    match kind {
                        "intact" => tally.no_effect += 1,
                        "wrong" => tally.wrong.push((pos, mask, msg)),
                        _ if msg.starts_with("redb panicked") => tally.panicked.push((pos, mask, msg)),
                        _ => *tally.refused.entry(msg.split(':').next().unwrap_or("?").to_string()).or_default() += 1,
                    }
                }
                _ => {}
            }
        }
        if next >= flips.len() {
            break;
        }
        // The worker stopped early: the flip it had started killed it (or hung).
        let i = started.unwrap_or(next);
        let (pos, mask) = flips[i];
        let why = match status {
            None => "hung: killed after 120 s".to_string(),
            Some(st) => {
                let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).take(3).collect();
                format!("{st}: {}", lines.join(" | "))
            }
        };
        tally.crashed.push((pos, mask, why));
        next = i + 1;
    }
    tally
}

/// Not a test on its own: the child process of [`raw_flips`]. Without its environment variable it
/// does nothing.
#[test]
#[ignore = "helper process for the raw-flip tests; does nothing when run by hand"]
fn raw_flip_worker() {
    use std::io::Write;
    let Some(dir) = std::env::var_os(FLIP_DIR_ENV).map(std::path::PathBuf::from) else { return };
    let start: usize = std::env::var(FLIP_START_ENV).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let params = std::fs::read_to_string(dir.join("params.txt")).expect("params");
    let mut lines = params.lines();
    let tenant: TenantId = lines.next().expect("tenant").parse().expect("tenant id");
    let key = |l: Option<&str>| {
        let mut b = hex::decode(l.expect("key line")).expect("hex");
        SecretKey::take_from(&mut b).expect("32 bytes")
    };
    let kek = key(lines.next());
    let seed = key(lines.next());
    let want: BTreeMap<String, Vec<u8>> = lines
        .map(|l| {
            let (k, v) = l.split_once('\t').expect("want line");
            (k.to_string(), hex::decode(v).expect("hex"))
        })
        .collect();
    let flips: Vec<(usize, u8)> = std::fs::read_to_string(dir.join("flips.txt"))
        .expect("flips")
        .lines()
        .map(|l| {
            let (p, m) = l.split_once(' ').expect("flip line");
            (p.parse().expect("pos"), m.parse().expect("mask"))
        })
        .collect();
    let pristine = std::fs::read(dir.join("pristine.redb")).expect("pristine");
    let path = dir.join("vault.redb");
    std::fs::write(&path, &pristine).expect("write the pristine vault");
    let tokens = Tokens::mint(&path, tenant, &kek, &want);
    let mut out = std::io::stdout().lock();
    for (i, (pos, mask)) in flips.iter().enumerate().skip(start) {
        writeln!(out, "START {i}").and_then(|()| out.flush()).expect("stdout");
        let mut bytes = pristine.clone();
        bytes[*pos] ^= *mask;
        std::fs::write(&path, &bytes).expect("write flipped file");
        let (kind, msg) = match examine_catching(&path, tenant, &kek, &want, &seed, &tokens) {
            Seen::Intact => ("intact", String::new()),
            Seen::Refused(m) => ("refused", m),
            Seen::Wrong(m) => ("wrong", m),
        };
        let msg = msg.replace('\n', " ");
        writeln!(out, "DONE {i} {kind} {msg}").and_then(|()| out.flush()).expect("stdout");
    }
}

fn print_tally(what: &str, t: &FlipTally) {
    bulwark_tests::log_line(&format!(
        "{what}: {} flips: {} detected (errors by step {:?}; store panicked {}; process crashed {}), {} with no \
         effect on any record, {} wrong",
        t.total(),
        t.detected(),
        t.refused,
        t.panicked.len(),
        t.crashed.len(),
        t.no_effect,
        t.wrong.len()
    ));
    for (pos, mask, why) in t.panicked.iter().chain(&t.crashed).take(5) {
        bulwark_tests::log_line(&format!("  e.g. byte {pos} ^ {mask:#04x}: {why}"));
    }
}

/// The header page and every 4 KiB page of the file where a stored value (16 bytes or more) sits.
fn live_pages(sv: &SmallVault, pristine: &[u8]) -> Vec<usize> {
    const PAGE: usize = 4096;
    let entries = {
        let db = Database::open(&sv.path).expect("open with redb");
        all_entries(&db)
    };
    std::fs::write(&sv.path, pristine).expect("restore after the redb read");
    let mut pages = vec![0usize];
    for (_, _, value) in entries.iter().filter(|(_, _, v)| v.len() >= 16) {
        for (at, _) in pristine.windows(value.len()).enumerate().filter(|(_, w)| *w == value.as_slice()) {
            pages.push(at / PAGE);
        }
    }
    pages.sort_unstable();
    pages.dedup();
    pages
}

#[test]
fn sampled_raw_flips_in_a_vault_file_never_yield_wrong_data() {
    const UNIFORM: usize = 2_000;
    const LIVE: usize = 1_000;
    let sv = small_vault();
    let pristine = std::fs::read(&sv.path).expect("vault file");
    let len = pristine.len() as u64;
    let mut rng = SplitMix64::new(0x0062_756c_7761_726b);
    let to_usize = |n: u64| usize::try_from(n).expect("fits");

    // 1. Positions drawn uniformly from the whole file (mostly free space and allocator state).
    let uniform: Vec<(usize, u8)> = (0..UNIFORM).map(|_| (to_usize(rng.below(len)), rng.nonzero_byte())).collect();
    let t1 = raw_flips(&sv, &uniform);
    print_tally(&format!("vault file of {len} bytes, uniformly sampled single-byte flips"), &t1);

    // 2. Positions drawn from the pages that hold live data (and the header page).
    let pages = live_pages(&sv, &pristine);
    assert!(pages.len() >= 2, "found no page holding the stored values");
    let live: Vec<(usize, u8)> = (0..LIVE)
        .map(|_| {
            let page = pages[to_usize(rng.below(pages.len() as u64))];
            ((page * 4096 + to_usize(rng.below(4096))).min(pristine.len() - 1), rng.nonzero_byte())
        })
        .collect();
    let t2 = raw_flips(&sv, &live);
    print_tally(&format!("single-byte flips sampled from the live pages {pages:?}"), &t2);

    assert_eq!(t1.total(), UNIFORM);
    assert_eq!(t2.total(), LIVE);
    assert!(
        t1.wrong.is_empty() && t2.wrong.is_empty(),
        "different data without an error: {:?} {:?}",
        t1.wrong,
        t2.wrong
    );
    assert!(t2.detected() > 0, "flips in live pages were never detected: the sampling missed the data");
    assert_eq!(sv.examine(), Seen::Intact);
}

#[test]
fn corrupt_vault_header_gives_an_error_not_a_crash() {
    let sv = small_vault();
    let flips: Vec<(usize, u8)> = (0..512).flat_map(|p| [(p, 0x01u8), (p, 0x80), (p, 0xff)]).collect();
    let t = raw_flips(&sv, &flips);
    print_tally("every flip of the first 512 bytes (the redb header)", &t);
    assert!(t.wrong.is_empty(), "different data without an error: {:?}", t.wrong);
    assert!(t.panicked.is_empty() && t.crashed.is_empty(), "panics {:?}\ncrashes {:?}", t.panicked, t.crashed);
}

#[test]
fn deleted_tenant_restored_from_a_full_backup_stays_sealed() {
    let mut env = Env::new();
    env.init();
    let a = env.create_tenant("alpha");
    let b = env.create_tenant("bravo");
    env.put(&a.id, "k", b"alpha's secret");
    env.put(&b.id, "k", b"bravo's secret");
    let d = env.data_dir();
    assert!(!d.join("swtpm").exists(), "the TPM's state must not be inside the data dir backed up here");
    let backup = env.scratch().join("backup");
    copy_tree(&d, &backup);

    env.run(&["tenant", "delete", "--tenant", &a.id, "--name", &a.name]).ok();
    env.get(&a.id, "k").fails_with(&["no tenant"]);

    // Whoever can talk to the TPM cannot undo the deletion by undefining the liveness index (to define it
    // again with the same attributes, hence the same name, every bit clear): init took ownership, so the
    // empty owner authorization no longer works.
    let slot = u32::try_from(a.slot).expect("slot");
    let index = bulwark_tpm::LivenessSlot::from_counter(slot).expect("liveness slot").nv_handle();
    let undefine =
        env.tpm.tpm2("tpm2_nvundefine").args(["-C", "o", &format!("{index:#x}")]).output().expect("tpm2_nvundefine");
    assert!(
        !undefine.status.success(),
        "the liveness index {index:#x} was undefined with the empty owner authorization"
    );
    let stderr = String::from_utf8_lossy(&undefine.stderr);
    assert!(stderr.contains("auth") || stderr.contains("AUTH"), "{stderr}");
    // Nor clear the TPM, which would destroy every tenant at once: init took the lockout hierarchy too.
    let clear = env.tpm.tpm2("tpm2_clear").args(["-c", "l"]).output().expect("tpm2_clear");
    assert!(!clear.status.success(), "the TPM was cleared with the empty lockout authorization");

    std::fs::remove_dir_all(&d).expect("remove data dir");
    copy_tree(&backup, &d);
    assert!(d.join("tenants").join(&a.id).join("kek.sealed").is_file());
    env.get(&a.id, "k").fails_with(&["deleted", "shredded"]);
    // Not through the recovery branch either: liveness is checked on both.
    let secret_file = env.scratch().join("recovery.txt");
    std::fs::write(&secret_file, &a.recovery).expect("write recovery secret");
    env.run(&["tenant", "reseal", "--tenant", &a.id, "--recovery-secret-file", secret_file.to_str().expect("utf-8")])
        .fails_with(&["deleted"]);
    env.assert_get(&b.id, "k", b"bravo's secret");

    // Still dead after a power cycle; the other tenant still lives.
    env.tpm.restart();
    env.get(&a.id, "k").fails_with(&["deleted", "shredded"]);
    env.assert_get(&b.id, "k", b"bravo's secret");

    // The platform hierarchy, open on a swtpm (firmware closes it before the OS runs on real hardware),
    // can undefine the liveness index but not bring the deleted tenant back: an index it defines must
    // carry TPMA_NV_PLATFORMCREATE, so its name differs from the one every sealed policy binds. Undefining
    // the index takes down every tenant with a bit in it: denial, never revival.
    let handle = format!("{index:#x}");
    let tool = |tool: &str, args: &[&str]| {
        let out = env.tpm.tpm2(tool).args(args).output().expect(tool);
        assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    tool("tpm2_nvundefine", &["-C", "p", &handle]);
    tool("tpm2_nvdefine", &["-C", "p", "-a", "ppwrite|authread|no_da|nt=bits|platformcreate", &handle]);
    tool("tpm2_nvsetbits", &["-C", "p", "-i", "0", &handle]);
    let b_slot = u32::try_from(b.slot).expect("slot");
    let shares_index = bulwark_tpm::LivenessSlot::from_counter(b_slot).expect("liveness slot").nv_handle() == index;
    let r = env.get(&a.id, "k").fails_with(&["liveness"]);
    assert!(r.stderr.contains("defined again"), "alpha: {}", r.stderr);
    assert!(!r.stderr.contains("secret"), "alpha: {}", r.stderr);
    if shares_index {
        let r = env.get(&b.id, "k").fails_with(&["liveness"]);
        assert!(r.stderr.contains("defined again"), "bravo: {}", r.stderr);
        assert!(!r.stderr.contains("secret"), "bravo: {}", r.stderr);
    } else {
        env.assert_get(&b.id, "k", b"bravo's secret");
    }
}

/// With redb 4 a small vault file is tens of KiB, so every position can be flipped. A flip must either be
/// reported as an error (never a crash) or leave every record and secret byte-identical; flips that land
/// in free space or unused allocator state change nothing any reader sees and cannot be detected by a
/// page store — the count of those is printed, not hidden.
#[test]
fn every_byte_flip_of_a_small_vault_file_errors_or_changes_nothing() {
    let sv = small_vault();
    let len = std::fs::read(&sv.path).expect("vault file").len();
    let flips: Vec<(usize, u8)> = (0..len).map(|p| (p, 0xff)).collect();
    let t = raw_flips(&sv, &flips);
    print_tally(&format!("every byte (xor 0xff) of a {len}-byte vault file"), &t);
    assert_eq!(t.total(), len);
    assert!(t.wrong.is_empty(), "different data without an error: {:?}", t.wrong);
    assert!(t.panicked.is_empty() && t.crashed.is_empty(), "panics {:?}\ncrashes {:?}", t.panicked, t.crashed);
    assert_eq!(sv.examine(), Seen::Intact);
}
