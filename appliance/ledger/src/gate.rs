//! The gate: nothing runs unless its OAR is signed and durable first.
//!
//! A [`Gate`] owns one ledger and its signer on a committer thread. [`Gate::attest`] hands an
//! [`OarDraft`] to the committer and blocks; the committer gathers every request that arrived meanwhile
//! (group commit, up to [`MAX_BATCH`]), appends them, fsyncs tiles and bundles, signs ONE checkpoint
//! over the new tree head (ML-DSA-65, in parallel with the writes), writes the checkpoint durably and
//! only then answers each caller with an [`Attested`] token carrying its c2sp.org/tlog-proof
//! [`Receipt`]. If anything in that chain fails, every caller in the batch gets an error, the ledger is
//! re-read from disk and no token is minted, so the operation cannot start.
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

use crate::ledger::{Ledger, LedgerError, PendingOar, Prepared, Recovered};
use crate::oar::{
    Digest, Entry, EntryError, LedgerScope, MAX_APPROVALS, Oar, OarDraft, OpKind, Outcome, OutcomeRecord, RuntimeState,
    Status, Target, TreeHead,
};
use crate::receipt::Receipt;
use crate::signer::{LedgerPublicKey, LedgerSigner};

/// Most requests one durable batch (one signature) covers.
pub const MAX_BATCH: usize = 4096;

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
        Self::start(ledger, rec, signer, runtime)
    }

    /// Open the existing ledger at `dir` with its signer. Recovery runs first (see [`Ledger::open`]); OARs
    /// left without an outcome by a crash get an `Interrupted` outcome before any new operation.
    pub fn open(dir: &Path, signer: LedgerSigner, runtime: RuntimeState) -> Result<Gate, LedgerError> {
        let (ledger, rec) = Ledger::open(dir, signer.scope(), signer.public_key())?;
        Self::start(ledger, rec, signer, runtime)
    }

    fn start(ledger: Ledger, rec: Recovered, signer: LedgerSigner, runtime: RuntimeState) -> Result<Gate, LedgerError> {
        let scope = signer.scope();
        let public = signer.public_key().clone();
        let cp = ledger.checkpoint().clone();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            published: Mutex::new(Published { head: cp.head(), checkpoint: cp.text().to_string() }),
        });
        let mut committer = Committer {
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

/// A reply that may only be sent once its batch's checkpoint is durable.
enum Reply {
    Attest(SyncSender<Result<Minted, LedgerError>>, Result<Minted, LedgerError>),
    Complete(Option<SyncSender<Result<Receipt, LedgerError>>>, Result<Receipt, LedgerError>),
}

impl Reply {
    fn send(self) {
        match self {
            Reply::Attest(tx, r) => {
                let _ = tx.send(r);
            }
            Reply::Complete(Some(tx), r) => {
                let _ = tx.send(r);
            }
            Reply::Complete(None, _) => {}
        }
    }

    fn fail(self, why: &str) {
        let err = || LedgerError::Unavailable(why.to_string());
        match self {
            Reply::Attest(tx, _) => {
                let _ = tx.send(Err(err()));
            }
            Reply::Complete(Some(tx), _) => {
                let _ = tx.send(Err(err()));
            }
            Reply::Complete(None, _) => {}
        }
    }
}

/// A prepared batch on its way to the publisher thread.
struct Job {
    prepared: Prepared,
    replies: Vec<Reply>,
}

#[derive(Default)]
struct PubState {
    outstanding: usize,
    failed: Option<String>,
}

/// The publisher writes checkpoints in order while the committer prepares the next batch (a two-stage
/// pipeline: batch k+1's tiles and signature overlap batch k's checkpoint fsyncs).
#[derive(Default)]
struct Publisher {
    state: Mutex<PubState>,
    idle: Condvar,
}

fn publisher_loop(jobs: Receiver<Job>, pubs: Arc<Publisher>, shared: Arc<Shared>) {
    for job in jobs {
        let failed = lock(&pubs.state).failed.clone();
        let result = match failed {
            Some(why) => Err(why),
            None => job.prepared.publish().map_err(|e| error_chain(&e)),
        };
        match result {
            Ok(cp) => {
                {
                    let mut p = lock(&shared.published);
                    p.head = cp.head();
                    p.checkpoint = cp.text().to_string();
                }
                for r in job.replies {
                    r.send();
                }
            }
            Err(why) => {
                tracing::error!(error = %why, "ledger checkpoint write failed; no operation in the batch runs");
                lock(&pubs.state).failed.get_or_insert_with(|| why.clone());
                for r in job.replies {
                    r.fail(&why);
                }
            }
        }
        let mut st = lock(&pubs.state);
        st.outstanding -= 1;
        drop(st);
        pubs.idle.notify_all();
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
        let mut p = lock(&self.shared.published);
        p.head = cp.head();
        p.checkpoint = cp.text().to_string();
        Ok(())
    }

    fn run(mut self) {
        let pubs = Arc::new(Publisher::default());
        let (jobs, rx) = sync_channel::<Job>(1);
        let publisher = {
            let (pubs, shared) = (Arc::clone(&pubs), Arc::clone(&self.shared));
            std::thread::Builder::new().name("ledger-publish".into()).spawn(move || publisher_loop(rx, pubs, shared))
        };
        let publisher = match publisher {
            Ok(h) => Some(h),
            Err(e) => {
                self.poisoned = Some(format!("cannot start the publisher thread: {e}"));
                None
            }
        };
        loop {
            let batch: Vec<Request> = {
                let mut q = lock(&self.shared.queue);
                while q.items.is_empty() && !q.closed {
                    q = self.shared.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
                }
                if q.items.is_empty() {
                    break;
                }
                let n = q.items.len().min(MAX_BATCH);
                q.items.drain(..n).collect()
            };
            self.process(batch, &jobs, &pubs);
        }
        drop(jobs);
        if let Some(h) = publisher {
            let _ = h.join();
        }
    }

    fn process(&mut self, batch: Vec<Request>, jobs: &SyncSender<Job>, pubs: &Publisher) {
        if let Some(reason) = &self.poisoned {
            for req in batch {
                match req {
                    Request::Attest { reply, .. } => {
                        let _ = reply.send(Err(LedgerError::Unavailable(reason.clone())));
                    }
                    Request::Complete { reply: Some(reply), .. } => {
                        let _ = reply.send(Err(LedgerError::Unavailable(reason.clone())));
                    }
                    Request::Complete { reply: None, .. } => {}
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
            }
        }
        if done.is_empty() {
            return;
        }
        // A failed earlier publication invalidates what was prepared on top of it.
        let earlier = lock(&pubs.state).failed.clone();
        let prepared: Result<Prepared, String> = match earlier {
            Some(why) => Err(why),
            None => self.ledger.prepare(&self.signer).map_err(|e| error_chain(&e)),
        };
        let prepared = match prepared {
            Ok(p) => p,
            Err(why) => {
                tracing::error!(ledger = %self.ledger.scope(), error = %why, "ledger write failed; no operation in the batch runs");
                for d in done {
                    d.fail(&why);
                }
                self.recover(pubs, &why);
                return;
            }
        };
        let size = prepared.checkpoint().head().size;
        let checkpoint: Arc<str> = Arc::from(prepared.checkpoint().text());
        let replies = done
            .into_iter()
            .map(|d| {
                let (index, bytes) = match &d {
                    Done::Attest { index, bytes, .. } | Done::Complete { index, bytes, .. } => (*index, bytes.clone()),
                };
                let receipt = self
                    .ledger
                    .inclusion_proof(index, size)
                    .map(|proof| Receipt::new(index, bytes, proof, Arc::clone(&checkpoint)));
                match d {
                    Done::Attest { reply, counter, index, .. } => {
                        Reply::Attest(reply, receipt.map(|receipt| Minted { counter, index, receipt }))
                    }
                    Done::Complete { reply, .. } => Reply::Complete(reply, receipt),
                }
            })
            .collect();
        lock(&pubs.state).outstanding += 1;
        if let Err(std::sync::mpsc::SendError(job)) = jobs.send(Job { prepared, replies }) {
            lock(&pubs.state).outstanding -= 1;
            let why = "the publisher thread stopped".to_string();
            for r in job.replies {
                r.fail(&why);
            }
            self.poisoned = Some(why);
        }
    }

    /// After a failed write: wait until no publication is in flight, then re-read the ledger from disk.
    fn recover(&mut self, pubs: &Publisher, why: &str) {
        let mut st = lock(&pubs.state);
        while st.outstanding > 0 {
            st = pubs.idle.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        drop(st);
        match self.ledger.recover() {
            Ok(rec) => {
                self.adopt(rec);
                lock(&pubs.state).failed = None;
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
    fn unwritable_ledger_mints_no_token() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("t");
        let (gate, _, _) = tenant_gate(&dir);
        let att = gate.attest(put("ok")).unwrap();
        gate.complete(att, Outcome::success(Digest::None)).unwrap();
        // A regular file where the tile directory must be: every write fails, and so does recovery.
        std::fs::remove_dir_all(dir.join("tile")).unwrap();
        std::fs::write(dir.join("tile"), b"not a directory").unwrap();
        let err = gate.attest(put("no")).unwrap_err();
        assert!(matches!(err, LedgerError::Unavailable(_)), "{err:?}");
        let err = gate.attest(put("still no")).unwrap_err();
        assert!(matches!(err, LedgerError::Unavailable(_)), "{err:?}");
    }

    #[test]
    fn unwritable_checkpoint_mints_no_token() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("t");
        let (gate, _, _) = tenant_gate(&dir);
        let att = gate.attest(put("ok")).unwrap();
        gate.complete(att, Outcome::success(Digest::None)).unwrap();
        // Tiles can be written but the checkpoint cannot: the publication step fails.
        std::fs::create_dir(dir.join("checkpoint.bulwark-tmp")).unwrap();
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
