//! The gate: nothing runs unless its OAR is signed and durable first.
//!
//! A [`Gate`] owns one ledger and its signer on a committer thread. [`Gate::attest`] hands an
//! [`OarDraft`] to the committer and blocks; the committer gathers every request that arrived meanwhile
//! (group commit, up to [`MAX_BATCH`]), appends them, signs ONE checkpoint over the new tree head
//! (ML-DSA-65), writes the batch and that checkpoint as one journal record and `fdatasync`s it, and only
//! then answers each caller with an [`Attested`] token carrying its c2sp.org/tlog-proof [`Receipt`]. If
//! anything in that chain fails, every caller in the batch gets an error, the ledger is re-read from
//! disk and no token is minted, so the operation cannot start.
//!
//! A second thread, the tiler, writes journaled batches into the tlog tiles, `checkpoint` and the
//! history in the background ([`crate::ledger::Materialization`]): after 1,024 journaled entries, after
//! 100 ms without requests (see [`GateOptions`]), and when the gate closes. Tile writes never delay a batch.
//!
//! [`Attested`] has private fields and no constructor outside this module: an operation that requires
//! `&Attested` cannot be called without a durable OAR. After the operation, [`Gate::complete`] appends
//! the outcome. A token dropped without completion records an `Abandoned` outcome; a process that dies
//! in between leaves the OAR pending, and the next open records it as `Interrupted`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::ledger::{Ledger, LedgerError, Materialization, PendingOar, Recovered};
use crate::oar::{
    Digest, Entry, EntryError, LedgerScope, MAX_APPROVALS, Oar, OarDraft, OpKind, Outcome, OutcomeRecord, RuntimeState,
    Status, Target, TreeHead,
};
use crate::receipt::Receipt;
use crate::signer::{LedgerPublicKey, LedgerSigner};

/// Most requests one durable batch (one signature) covers.
pub const MAX_BATCH: usize = 4096;

/// When the tiler writes journaled batches into the tiles. The defaults suit production; tests lower
/// them to exercise crashes during tile writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateOptions {
    /// Journaled entries after which the tiler is started on them (default 1,024).
    pub materialize_entries: u64,
    /// Journaled bytes after which the tiler is started on them (default 8 MiB).
    pub materialize_bytes: u64,
    /// How long the gate waits without requests before writing journaled batches (default 100 ms).
    pub idle: std::time::Duration,
}

impl Default for GateOptions {
    fn default() -> Self {
        Self { materialize_entries: 1024, materialize_bytes: 8 << 20, idle: std::time::Duration::from_millis(100) }
    }
}

/// Proof that an operation's OAR is durably in the ledger under a signed checkpoint. Only the gate can
/// make one. Vault (and every other) operation takes `&Attested` and checks [`Attested::require`].
pub struct Attested {
    shared: Arc<Shared>,
    scope: LedgerScope,
    counter: u64,
    index: u64,
    op: OpKind,
    target: Target,
    receipt: Receipt,
    completed: bool,
}

impl std::fmt::Debug for Attested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Attested({} #{} at index {}: {} {:?})", self.scope, self.counter, self.index, self.op, self.target)
    }
}

impl Attested {
    /// The attested operation kind.
    pub fn op(&self) -> OpKind {
        self.op
    }
    /// The attested target.
    pub fn target(&self) -> &Target {
        &self.target
    }
    /// The ledger (tenant or appliance) it was attested in.
    pub fn scope(&self) -> LedgerScope {
        self.scope
    }
    /// The tenant, for a tenant ledger.
    pub fn tenant(&self) -> Option<crate::ids::TenantId> {
        self.scope.tenant()
    }
    /// The OAR's per-ledger counter.
    pub fn counter(&self) -> u64 {
        self.counter
    }
    /// The OAR's entry index.
    pub fn index(&self) -> u64 {
        self.index
    }
    /// The OAR's receipt (c2sp.org/tlog-proof): the signed checkpoint and the inclusion proof.
    pub fn receipt(&self) -> &Receipt {
        &self.receipt
    }
    /// Check that this token attests `op` on `target` in `scope`; an executor calls this before acting.
    pub fn require(&self, scope: LedgerScope, op: OpKind, target: &Target) -> Result<(), LedgerError> {
        if self.scope != scope || self.op != op || &self.target != target {
            return Err(LedgerError::Mismatch(format!(
                "token attests {} {:?} in {}, the operation is {} {:?} in {}",
                self.op, self.target, self.scope, op, target, scope
            )));
        }
        Ok(())
    }
}

impl Drop for Attested {
    fn drop(&mut self) {
        if !self.completed {
            // Best effort: the gate may already be closed, in which case recovery records Interrupted.
            let _ = self.shared.submit(Request::Complete {
                counter: self.counter,
                status: Status::Abandoned,
                result: Digest::None,
                reply: None,
            });
        }
    }
}

enum Request {
    Attest { draft: OarDraft, reply: SyncSender<Result<Minted, LedgerError>> },
    SyncTiles { reply: SyncSender<Result<TreeHead, LedgerError>> },
    Complete { counter: u64, status: Status, result: Digest, reply: Option<SyncSender<Result<Receipt, LedgerError>>> },
}

struct Minted {
    counter: u64,
    index: u64,
    receipt: Receipt,
}

#[derive(Default)]
struct Queue {
    items: Vec<Request>,
    closed: bool,
}

struct Published {
    head: TreeHead,
    checkpoint: String,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    published: Mutex<Published>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind (a queue, a head); keep going.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Make `cp` the head that [`Gate::head`] and [`Gate::checkpoint`] report.
    fn publish(&self, cp: &crate::note::SignedCheckpoint) {
        let mut p = lock(&self.published);
        p.head = cp.head();
        p.checkpoint = cp.text().to_string();
    }

    fn submit(&self, req: Request) -> Result<(), LedgerError> {
        let mut q = lock(&self.queue);
        if q.closed {
            return Err(LedgerError::Closed);
        }
        q.items.push(req);
        drop(q);
        self.wake.notify_one();
        Ok(())
    }
}

/// A tenant's (or the appliance's) gate: the only way to obtain an [`Attested`] token.
pub struct Gate {
    shared: Arc<Shared>,
    committer: Option<JoinHandle<()>>,
    scope: LedgerScope,
    public: LedgerPublicKey,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gate({})", self.scope)
    }
}

impl Gate {
    /// Create a new ledger at `dir` (which must not exist) and open its gate.
    pub fn create(dir: &Path, signer: LedgerSigner, runtime: RuntimeState) -> Result<Gate, LedgerError> {
        let (ledger, rec) = Ledger::create(dir, &signer)?;
        Self::start(ledger, rec, signer, runtime, GateOptions::default())
    }

    /// Open the existing ledger at `dir` with its signer. Recovery runs first (see [`Ledger::open`]); OARs
    /// left without an outcome by a crash get an `Interrupted` outcome before any new operation.
    pub fn open(dir: &Path, signer: LedgerSigner, runtime: RuntimeState) -> Result<Gate, LedgerError> {
        Self::open_with(dir, signer, runtime, GateOptions::default())
    }

    /// [`Gate::open`] with explicit [`GateOptions`].
    pub fn open_with(
        dir: &Path,
        signer: LedgerSigner,
        runtime: RuntimeState,
        options: GateOptions,
    ) -> Result<Gate, LedgerError> {
        let (ledger, rec) = Ledger::open(dir, signer.scope(), signer.public_key())?;
        Self::start(ledger, rec, signer, runtime, options)
    }

    fn start(
        ledger: Ledger,
        rec: Recovered,
        signer: LedgerSigner,
        runtime: RuntimeState,
        options: GateOptions,
    ) -> Result<Gate, LedgerError> {
        let scope = signer.scope();
        let public = signer.public_key().clone();
        let cp = ledger.checkpoint().clone();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            published: Mutex::new(Published { head: cp.head(), checkpoint: cp.text().to_string() }),
        });
        let mut committer = Committer {
            options,
            ledger,
            signer,
            runtime,
            next_counter: 0,
            pending: BTreeMap::new(),
            last_time_ms: 0,
            shared: Arc::clone(&shared),
            poisoned: None,
        };
        committer.adopt(rec);
        committer.resolve_interrupted()?;
        let handle = std::thread::Builder::new()
            .name(format!("ledger-{}", scope.origin().rsplit('/').next().unwrap_or("gate")))
            .spawn(move || committer.run())
            .map_err(|source| LedgerError::Io { path: "committer thread".into(), source })?;
        Ok(Gate { shared, committer: Some(handle), scope, public })
    }

    /// Describe an operation, sign and durably append its OAR, and return the token that lets it run.
    /// Blocks until the OAR's checkpoint is durable (typically one group commit: fsyncs plus one
    /// ML-DSA-65 signature shared by every concurrent caller). On error the operation must not run.
    pub fn attest(&self, draft: OarDraft) -> Result<Attested, LedgerError> {
        if draft.approvals.len() > MAX_APPROVALS {
            return Err(LedgerError::Draft(EntryError::Bounds("more than 16 approvals")));
        }
        let op = draft.op;
        let target = draft.target;
        let (tx, rx) = sync_channel(1);
        self.shared.submit(Request::Attest { draft, reply: tx })?;
        let minted = rx.recv().map_err(|_| LedgerError::Closed)??;
        Ok(Attested {
            shared: Arc::clone(&self.shared),
            scope: self.scope,
            counter: minted.counter,
            index: minted.index,
            op,
            target,
            receipt: minted.receipt,
            completed: false,
        })
    }

    /// Append the outcome of an attested operation and wait until it is durable; returns its receipt.
    pub fn complete(&self, mut attested: Attested, outcome: Outcome) -> Result<Receipt, LedgerError> {
        if !Arc::ptr_eq(&attested.shared, &self.shared) {
            return Err(LedgerError::WrongToken);
        }
        attested.completed = true;
        let (tx, rx) = sync_channel(1);
        let status = if outcome.ok { Status::Succeeded } else { Status::Failed };
        self.shared.submit(Request::Complete {
            counter: attested.counter,
            status,
            result: outcome.result,
            reply: Some(tx),
        })?;
        rx.recv().map_err(|_| LedgerError::Closed)?
    }

    /// Queue the outcome without waiting: it becomes durable with the next batch (if the process dies
    /// first, recovery records the operation as `Interrupted`). For callers that answer their client
    /// as soon as the operation is done.
    pub fn complete_later(&self, mut attested: Attested, outcome: Outcome) -> Result<(), LedgerError> {
        if !Arc::ptr_eq(&attested.shared, &self.shared) {
            return Err(LedgerError::WrongToken);
        }
        attested.completed = true;
        let status = if outcome.ok { Status::Succeeded } else { Status::Failed };
        self.shared.submit(Request::Complete { counter: attested.counter, status, result: outcome.result, reply: None })
    }

    /// Write every batch journaled so far into the tlog tiles, `checkpoint` and the history, and wait
    /// for it; returns the tree head the tiles now hold. Call it before reading the ledger directory
    /// from outside the gate (an export): until then the newest batches may be in the journal only.
    pub fn sync_tiles(&self) -> Result<TreeHead, LedgerError> {
        let (tx, rx) = sync_channel(1);
        self.shared.submit(Request::SyncTiles { reply: tx })?;
        rx.recv().map_err(|_| LedgerError::Closed)?
    }

    /// The ledger this gate writes.
    pub fn scope(&self) -> LedgerScope {
        self.scope
    }

    /// The ledger's public key.
    pub fn public_key(&self) -> &LedgerPublicKey {
        &self.public
    }

    /// The latest durable signed tree head.
    pub fn head(&self) -> TreeHead {
        lock(&self.shared.published).head
    }

    /// The latest durable signed checkpoint note.
    pub fn checkpoint(&self) -> String {
        lock(&self.shared.published).checkpoint.clone()
    }

    /// Stop accepting operations, finish the queued ones and stop the committer.
    pub fn close(mut self) -> Result<(), LedgerError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), LedgerError> {
        lock(&self.shared.queue).closed = true;
        self.shared.wake.notify_all();
        if let Some(h) = self.committer.take() {
            h.join().map_err(|_| LedgerError::Unavailable("the committer thread panicked".into()))?;
        }
        Ok(())
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

struct Committer {
    options: GateOptions,
    ledger: Ledger,
    signer: LedgerSigner,
    runtime: RuntimeState,
    next_counter: u64,
    pending: BTreeMap<u64, PendingOar>,
    last_time_ms: u64,
    shared: Arc<Shared>,
    poisoned: Option<String>,
}

enum Done {
    Attest { reply: SyncSender<Result<Minted, LedgerError>>, counter: u64, index: u64, bytes: Vec<u8> },
    Complete { reply: Option<SyncSender<Result<Receipt, LedgerError>>>, index: u64, bytes: Vec<u8> },
}

impl Done {
    fn fail(self, why: &str) {
        match self {
            Done::Attest { reply, .. } => {
                let _ = reply.send(Err(LedgerError::Unavailable(why.to_string())));
            }
            Done::Complete { reply: Some(reply), .. } => {
                let _ = reply.send(Err(LedgerError::Unavailable(why.to_string())));
            }
            Done::Complete { reply: None, .. } => {}
        }
    }
}

/// The tiler's state, shared with the committer.
#[derive(Default)]
struct TilerState {
    busy: bool,
    failed: Option<String>,
    /// Size of the newest materialization written.
    done: u64,
}

/// The background writer of journaled batches into the tiles.
#[derive(Default)]
struct Tiler {
    state: Mutex<TilerState>,
    idle: Condvar,
}

impl Tiler {
    /// If the last materialization failed: wait for the tiler to be idle and return why.
    fn wait_idle_if_failed(&self) -> Option<String> {
        lock(&self.state).failed.as_ref()?;
        self.wait_idle().failed.clone()
    }

    /// Wait until no materialization is in flight; returns its outcome.
    fn wait_idle(&self) -> MutexGuard<'_, TilerState> {
        let mut st = lock(&self.state);
        while st.busy {
            st = self.idle.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        st
    }
}

/// The running tile writer thread and its work queue.
struct TilerWorker {
    work: SyncSender<Materialization>,
    handle: JoinHandle<()>,
}

fn tiler_loop(work: Receiver<Materialization>, tiler: Arc<Tiler>) {
    for m in work {
        let result = m.write();
        let mut st = lock(&tiler.state);
        match result {
            Ok(size) => st.done = st.done.max(size),
            Err(e) => {
                let why = error_chain(&e);
                tracing::error!(error = %why, "writing journaled batches into the tiles failed; the journal keeps them");
                st.failed = Some(why);
            }
        }
        st.busy = false;
        drop(st);
        tiler.idle.notify_all();
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn error_chain(e: &LedgerError) -> String {
    let mut s = e.to_string();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl Committer {
    fn adopt(&mut self, rec: Recovered) {
        self.next_counter = rec.next_counter;
        self.pending = rec.pending;
        self.last_time_ms = rec.last_time_ms;
    }

    /// Record `Interrupted` for every OAR a previous process left without an outcome.
    fn resolve_interrupted(&mut self) -> Result<(), LedgerError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let counters: Vec<u64> = self.pending.keys().copied().collect();
        tracing::warn!(ledger = %self.ledger.scope(), count = counters.len(), "recording interrupted operations");
        for c in counters {
            self.append_outcome(c, Status::Interrupted, Digest::None)?;
        }
        let cp = self.ledger.commit(&self.signer)?;
        self.shared.publish(&cp);
        Ok(())
    }

    fn run(mut self) {
        let tiler = Arc::new(Tiler::default());
        // The tile writer thread starts with the first materialization (a short-lived gate, such as one
        // CLI command's, never needs it: its close writes the tiles on this thread).
        let mut worker: Option<TilerWorker> = None;
        loop {
            let batch: Vec<Request> = {
                let mut q = lock(&self.shared.queue);
                while q.items.is_empty() && !q.closed {
                    if self.ledger.has_unmaterialized() {
                        let (g, timeout) =
                            self.shared.wake.wait_timeout(q, self.options.idle).unwrap_or_else(PoisonError::into_inner);
                        q = g;
                        if timeout.timed_out() && q.items.is_empty() {
                            drop(q);
                            self.materialize(&tiler, &mut worker, true);
                            q = lock(&self.shared.queue);
                        }
                    } else {
                        q = self.shared.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
                    }
                }
                if q.items.is_empty() {
                    break;
                }
                let n = q.items.len().min(MAX_BATCH);
                q.items.drain(..n).collect()
            };
            self.process(batch, &tiler);
            self.materialize(&tiler, &mut worker, false);
        }
        if let Some(w) = worker {
            drop(w.work);
            let _ = w.handle.join();
        }
        // Leave the tiles complete, so that an export after this process ends sees every entry.
        if self.poisoned.is_none() {
            let failed = lock(&tiler.state).failed.take();
            let result = match failed {
                Some(_) => self.ledger.recover().map(|_| ()),
                None => match self.ledger.begin_materialize() {
                    Some(m) => m.write().map(|size| self.ledger.materialized(size)),
                    None => Ok(()),
                },
            }
            .and_then(|()| self.ledger.reset_journal());
            if let Err(e) = result {
                tracing::error!(ledger = %self.ledger.scope(), error = %error_chain(&e), "could not write the journal into the tiles at close; the next open will");
            }
        }
    }

    /// Hand journaled batches to the tiler when it is idle and enough have gathered (or `idle`).
    fn materialize(&mut self, tiler: &Arc<Tiler>, worker: &mut Option<TilerWorker>, idle: bool) {
        if self.poisoned.is_some() || !self.ledger.has_unmaterialized() {
            return;
        }
        let (entries, bytes) = self.ledger.journal_backlog();
        if !idle && entries < self.options.materialize_entries && bytes < self.options.materialize_bytes {
            return;
        }
        {
            let st = lock(&tiler.state);
            if st.busy || st.failed.is_some() {
                return;
            }
            self.ledger.materialized(st.done);
        }
        if worker.is_none() {
            let (work, rx) = sync_channel::<Materialization>(1);
            let t = Arc::clone(tiler);
            match std::thread::Builder::new().name("ledger-tiles".into()).spawn(move || tiler_loop(rx, t)) {
                Ok(handle) => *worker = Some(TilerWorker { work, handle }),
                Err(e) => {
                    // The journal keeps everything; the tiles get written at close or the next open.
                    tracing::warn!(error = %e, "cannot start the tile writer thread");
                    return;
                }
            }
        }
        let Some(w) = worker.as_ref() else { return };
        let Some(m) = self.ledger.begin_materialize() else { return };
        lock(&tiler.state).busy = true;
        if let Err(std::sync::mpsc::SendError(_)) = w.work.send(m) {
            let mut st = lock(&tiler.state);
            st.busy = false;
            st.failed = Some("the tile writer thread stopped".into());
        }
    }

    fn process(&mut self, batch: Vec<Request>, tiler: &Tiler) {
        let mut syncs = Vec::new();
        let batch: Vec<Request> = batch
            .into_iter()
            .filter_map(|r| match r {
                Request::SyncTiles { reply } => {
                    syncs.push(reply);
                    None
                }
                other => Some(other),
            })
            .collect();
        if !batch.is_empty() {
            self.process_ops(batch, tiler);
        }
        if !syncs.is_empty() {
            let result = self.sync_tiles(tiler).map_err(|e| error_chain(&e));
            for tx in syncs {
                let _ = tx.send(result.clone().map_err(LedgerError::Unavailable));
            }
        }
    }

    /// Write everything journaled into the tiles on this thread, once the tiler is idle.
    fn sync_tiles(&mut self, tiler: &Tiler) -> Result<TreeHead, LedgerError> {
        if let Some(why) = tiler.wait_idle_if_failed() {
            self.recover(tiler, &why);
        }
        if let Some(reason) = &self.poisoned {
            return Err(LedgerError::Unavailable(reason.clone()));
        }
        let mut st = tiler.wait_idle();
        self.ledger.materialized(st.done);
        if let Some(m) = self.ledger.begin_materialize() {
            match m.write() {
                Ok(size) => {
                    st.done = st.done.max(size);
                    self.ledger.materialized(size);
                }
                Err(e) => {
                    st.failed = Some(error_chain(&e));
                    return Err(e);
                }
            }
        }
        Ok(self.ledger.checkpoint().head())
    }

    fn process_ops(&mut self, batch: Vec<Request>, tiler: &Tiler) {
        // A failed materialization leaves the journal ahead of the tiles: re-read (which replays and
        // writes the journal) before anything new goes in.
        if self.poisoned.is_none() {
            let failed = tiler.wait_idle_if_failed();
            if let Some(why) = failed {
                self.recover(tiler, &why);
            }
        }
        if let Some(reason) = &self.poisoned {
            for req in batch {
                match req {
                    Request::Attest { reply, .. } => {
                        let _ = reply.send(Err(LedgerError::Unavailable(reason.clone())));
                    }
                    Request::Complete { reply: Some(reply), .. } => {
                        let _ = reply.send(Err(LedgerError::Unavailable(reason.clone())));
                    }
                    Request::Complete { reply: None, .. } | Request::SyncTiles { .. } => {}
                }
            }
            return;
        }
        let mut done = Vec::with_capacity(batch.len());
        for req in batch {
            match req {
                Request::Attest { draft, reply } => match self.append_oar(draft) {
                    Ok((counter, index, bytes)) => done.push(Done::Attest { reply, counter, index, bytes }),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Request::Complete { counter, status, result, reply } => {
                    match self.append_outcome(counter, status, result) {
                        Ok((index, bytes)) => done.push(Done::Complete { reply, index, bytes }),
                        Err(e) => {
                            if let Some(r) = reply {
                                let _ = r.send(Err(e));
                            }
                        }
                    }
                }
                Request::SyncTiles { .. } => {}
            }
        }
        if done.is_empty() {
            return;
        }
        let cp = match self.ledger.journal_commit(&self.signer) {
            Ok(cp) => cp,
            Err(e) => {
                let why = error_chain(&e);
                tracing::error!(ledger = %self.ledger.scope(), error = %why, "ledger write failed; no operation in the batch runs");
                for d in done {
                    d.fail(&why);
                }
                self.recover(tiler, &why);
                return;
            }
        };
        self.shared.publish(&cp);
        let size = cp.head().size;
        let checkpoint: Arc<str> = Arc::from(cp.text());
        for d in done {
            let (index, bytes) = match &d {
                Done::Attest { index, bytes, .. } | Done::Complete { index, bytes, .. } => (*index, bytes.clone()),
            };
            let receipt = self
                .ledger
                .inclusion_proof(index, size)
                .map(|proof| Receipt::new(index, bytes, proof, Arc::clone(&checkpoint)));
            match d {
                Done::Attest { reply, counter, index, .. } => {
                    let _ = reply.send(receipt.map(|receipt| Minted { counter, index, receipt }));
                }
                Done::Complete { reply: Some(reply), .. } => {
                    let _ = reply.send(receipt);
                }
                Done::Complete { reply: None, .. } => {}
            }
        }
    }

    /// After a failed write: wait until the tiler is idle, then re-read the ledger from disk (tiles,
    /// then the journal replayed into them).
    fn recover(&mut self, tiler: &Tiler, why: &str) {
        let mut st = tiler.wait_idle();
        match self.ledger.recover() {
            Ok(rec) => {
                self.adopt(rec);
                st.failed = None;
                st.done = self.ledger.checkpoint().head().size;
                self.shared.publish(self.ledger.checkpoint());
            }
            Err(e2) => {
                let why2 = error_chain(&e2);
                tracing::error!(ledger = %self.ledger.scope(), error = %why2, "ledger recovery failed; the gate refuses all operations");
                self.poisoned = Some(format!("{why}; recovery failed: {why2}"));
            }
        }
    }

    fn next_time(&mut self) -> u64 {
        let t = now_ms().max(self.last_time_ms);
        self.last_time_ms = t;
        t
    }

    fn append_oar(&mut self, draft: OarDraft) -> Result<(u64, u64, Vec<u8>), LedgerError> {
        let counter = self.next_counter;
        let index = self.ledger.size();
        let prev_head = TreeHead { size: index, root: self.ledger.current_root()? };
        let low_water = self.pending.keys().next().copied().unwrap_or(counter).min(counter);
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|e| LedgerError::Draft(EntryError::Random(e)))?;
        let oar = Oar {
            scope: self.ledger.scope(),
            counter,
            prev_head,
            low_water,
            time_ms: self.next_time(),
            nonce,
            runtime: self.runtime.clone(),
            actor: draft.actor,
            op: draft.op,
            target: draft.target,
            params: draft.params,
            policy: draft.policy,
            approvals: draft.approvals,
        };
        let bytes = Entry::Oar(oar).encode().map_err(LedgerError::Draft)?;
        let leaf = self.ledger.append(&bytes);
        self.next_counter += 1;
        self.pending.insert(counter, PendingOar { index, leaf });
        Ok((counter, index, bytes))
    }

    fn append_outcome(&mut self, counter: u64, status: Status, result: Digest) -> Result<(u64, Vec<u8>), LedgerError> {
        let pending = *self.pending.get(&counter).ok_or(LedgerError::WrongToken)?;
        let index = self.ledger.size();
        let record = OutcomeRecord {
            scope: self.ledger.scope(),
            counter,
            oar_index: pending.index,
            oar_leaf: pending.leaf,
            prev_head: TreeHead { size: index, root: self.ledger.current_root()? },
            time_ms: self.next_time(),
            status,
            result,
        };
        let bytes = Entry::Outcome(record).encode().map_err(LedgerError::Draft)?;
        self.ledger.append(&bytes);
        self.pending.remove(&counter);
        Ok((index, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::TenantId;
    use crate::ledger::Ledger;
    use crate::oar::{Entry, OpKind};
    use crate::signer::SignerSeed;
    use crate::testutil::{put, runtime, world};

    fn tenant_gate(dir: &Path) -> (Gate, LedgerScope, SignerSeed) {
        let seed = SignerSeed::generate().unwrap();
        let scope = LedgerScope::Tenant(TenantId::random().unwrap());
        let gate = Gate::create(dir, LedgerSigner::new(scope, &seed).unwrap(), runtime()).unwrap();
        (gate, scope, seed)
    }

    #[test]
    fn attest_run_complete_with_receipts() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("t");
        let (gate, scope, _) = tenant_gate(&dir);
        let key = gate.public_key().clone();
        let att = gate.attest(put("k1")).unwrap();
        assert_eq!(att.counter(), 0);
        assert_eq!(att.index(), 0);
        let target = *att.target();
        att.require(scope, OpKind::VaultPut, &target).unwrap();
        assert!(matches!(att.require(scope, OpKind::VaultGet, &target), Err(LedgerError::Mismatch(_))));
        let other = LedgerScope::Tenant(TenantId::random().unwrap());
        assert!(att.require(other, OpKind::VaultPut, &target).is_err());
        let r = att.receipt().clone();
        let v = r.verify(&scope, &key).unwrap();
        assert!(matches!(v.entry, Entry::Oar(ref o) if o.counter == 0 && o.prev_head.size == 0));
        // The receipt survives a text round trip.
        assert_eq!(crate::receipt::Receipt::parse(&r.to_text()).unwrap(), r);
        let done = gate.complete(att, Outcome::success(Digest::None)).unwrap();
        let v2 = done.verify(&scope, &key).unwrap();
        assert!(
            matches!(v2.entry, Entry::Outcome(ref o) if o.counter == 0 && o.oar_index == 0 && o.status == Status::Succeeded)
        );
        assert_eq!(gate.head().size, 2);
        let att = gate.attest(put("k2")).unwrap();
        assert_eq!((att.counter(), att.index()), (1, 2));
        gate.complete(att, Outcome::failure(Digest::None)).unwrap();
        gate.close().unwrap();
    }

    #[test]
    fn concurrent_attests_share_batches_and_all_verify() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("t");
        let (gate, scope, seed) = tenant_gate(&dir);
        let key = gate.public_key().clone();
        let gate = Arc::new(gate);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let gate = Arc::clone(&gate);
                let key = key.clone();
                std::thread::spawn(move || {
                    let mut counters = vec![];
                    for i in 0..6 {
                        let att = gate.attest(put(&format!("{t}-{i}"))).unwrap();
                        att.receipt().verify(&scope, &key).unwrap();
                        counters.push(att.counter());
                        gate.complete(att, Outcome::success(Digest::None)).unwrap();
                    }
                    counters
                })
            })
            .collect();
        let mut all: Vec<u64> = threads.into_iter().flat_map(|h| h.join().unwrap()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..48).collect::<Vec<_>>());
        let head = gate.head();
        assert_eq!(head.size, 96);
        drop(gate);
        // Fewer checkpoints than entries: concurrent requests were committed together.
        let n = crate::history::read_all(&dir).unwrap().len();
        assert!(n < 97, "{n} checkpoints for 96 entries");
        let signer = LedgerSigner::new(scope, &seed).unwrap();
        let (ledger, rec) = Ledger::open(&dir, scope, signer.public_key()).unwrap();
        assert_eq!(ledger.checkpoint().head(), head);
        assert_eq!(rec.next_counter, 48);
        assert!(rec.pending.is_empty());
    }

    #[test]
    fn dropped_token_is_abandoned_and_forgotten_one_is_interrupted() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("t");
        let (gate, scope, seed) = tenant_gate(&dir);
        let att = gate.attest(put("a")).unwrap();
        drop(att);
        let att = gate.attest(put("b")).unwrap();
        std::mem::forget(att); // as if the process died while the operation ran
        gate.close().unwrap();
        let signer = LedgerSigner::new(scope, &seed).unwrap();
        let gate = Gate::open(&dir, signer, runtime()).unwrap();
        let key = gate.public_key().clone();
        gate.close().unwrap();
        let (ledger, rec) = Ledger::open(&dir, scope, &key).unwrap();
        assert!(rec.pending.is_empty());
        let statuses: Vec<(u64, Status)> = (0..ledger.checkpoint().head().size)
            .filter_map(|i| match Entry::decode(&ledger.entry(i).unwrap()).unwrap() {
                Entry::Outcome(o) => Some((o.counter, o.status)),
                Entry::Oar(_) => None,
            })
            .collect();
        assert_eq!(statuses, vec![(0, Status::Abandoned), (1, Status::Interrupted)]);
    }

    #[test]
    fn unwritable_tiles_stop_the_gate_and_lose_nothing() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("t");
        let (gate, scope, seed) = tenant_gate(&dir);
        let att = gate.attest(put("ok")).unwrap();
        gate.complete(att, Outcome::success(Digest::None)).unwrap();
        assert_eq!(gate.sync_tiles().unwrap().size, 2);
        // A regular file where the tile directory must be: writing tiles fails, and so does recovery.
        std::fs::rename(dir.join("tile"), d.path().join("tile.saved")).unwrap();
        std::fs::write(dir.join("tile"), b"not a directory").unwrap();
        // The journal still takes batches: this operation is acknowledged.
        let att = gate.attest(put("journaled")).unwrap();
        gate.complete(att, Outcome::success(Digest::None)).unwrap();
        assert!(gate.sync_tiles().is_err());
        let err = gate.attest(put("no")).unwrap_err();
        assert!(matches!(err, LedgerError::Unavailable(_)), "{err:?}");
        let err = gate.attest(put("still no")).unwrap_err();
        assert!(matches!(err, LedgerError::Unavailable(_)), "{err:?}");
        drop(gate);
        // Repaired, the ledger comes back with every acknowledged entry.
        std::fs::remove_file(dir.join("tile")).unwrap();
        std::fs::rename(d.path().join("tile.saved"), dir.join("tile")).unwrap();
        let gate = Gate::open(&dir, LedgerSigner::new(scope, &seed).unwrap(), runtime()).unwrap();
        assert_eq!(gate.head().size, 4);
        gate.close().unwrap();
        let (l, rec) =
            Ledger::open(&dir, scope, &LedgerSigner::new(scope, &seed).unwrap().public_key().clone()).unwrap();
        assert_eq!(l.checkpoint().head().size, 4);
        assert!(rec.pending.is_empty());
    }

    #[test]
    fn unwritable_checkpoint_stops_the_gate() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("t");
        let (gate, _, _) = tenant_gate(&dir);
        let att = gate.attest(put("ok")).unwrap();
        gate.complete(att, Outcome::success(Digest::None)).unwrap();
        // Tiles can be written but the checkpoint cannot: materializing fails, then recovery does.
        std::fs::create_dir(dir.join("checkpoint.bulwark-tmp")).unwrap();
        assert!(gate.sync_tiles().is_err());
        let err = gate.attest(put("no")).unwrap_err();
        assert!(matches!(err, LedgerError::Unavailable(_)), "{err:?}");
        assert!(gate.attest(put("still no")).is_err());
        assert_eq!(gate.head().size, 2, "the published head did not move");
    }

    #[test]
    fn tokens_are_bound_to_their_gate_and_ledgers_to_one_writer() {
        let d = tempfile::tempdir().unwrap();
        let (g1, scope1, seed1) = tenant_gate(&d.path().join("a"));
        let (g2, _, _) = tenant_gate(&d.path().join("b"));
        let att = g1.attest(put("x")).unwrap();
        assert!(matches!(g2.complete(att, Outcome::success(Digest::None)), Err(LedgerError::WrongToken)));
        let again = Gate::open(&d.path().join("a"), LedgerSigner::new(scope1, &seed1).unwrap(), runtime());
        assert!(matches!(again, Err(LedgerError::Busy(_))));
        let wrong = LedgerSigner::new(scope1, &SignerSeed::generate().unwrap()).unwrap();
        g1.close().unwrap();
        assert!(matches!(Gate::open(&d.path().join("a"), wrong, runtime()), Err(LedgerError::WrongKey)));
        let other_scope = LedgerSigner::new(LedgerScope::Tenant(TenantId::random().unwrap()), &seed1).unwrap();
        assert!(matches!(Gate::open(&d.path().join("a"), other_scope, runtime()), Err(LedgerError::WrongScope { .. })));
    }

    #[test]
    fn world_fixture_builds() {
        let w = world(2);
        let (l, _) = Ledger::open(&w.tenant_dir, LedgerScope::Tenant(w.tenant), &w.tenant_key).unwrap();
        assert_eq!(l.checkpoint().head().size, 4);
        let _ = (&w.appliance_dir, &w.appliance_key, &w.tenant_seed);
    }
}
