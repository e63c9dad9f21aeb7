//! The plain-ESAPI anchor that every unseal and unlock benchmark measures itself against: tss-esapi
//! calls on one open connection (TPM2_Load, an unsalted policy session, TPM2_PolicyPCR, TPM2_Unseal,
//! then flushing the object and the session) on a PCR-only sealed object. Shared by
//! `tpm/benches/unseal.rs` and `appliance/runtime/benches/*` (included with `#[path]`), so both
//! measure the same sequence.

#![allow(dead_code)] // each bench binary uses part of it

use std::str::FromStr;
use std::time::{Duration, Instant};

use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, SessionHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Digest, KeyedHashScheme, PcrSelectionList, PcrSelectionListBuilder, PcrSlot, Private, Public, PublicBuilder,
    PublicKeyedHashParameters, SensitiveData, SymmetricDefinition,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::{Context, TctiNameConf};

type BoxErr = Box<dyn std::error::Error>;

/// A PCR-only sealed object for the anchor: a keyed-hash object under the SRK with the same
/// attributes as Bulwark's sealed KEKs (fixedTPM | fixedParent | noDA, no userWithAuth) whose
/// authPolicy is a bare PolicyPCR over `selection`.
pub struct AnchorObject {
    public: Public,
    private: Private,
    selection: PcrSelectionList,
    secret: Vec<u8>,
}

fn pcr_slot(pcr: u32) -> Result<PcrSlot, BoxErr> {
    let bit = 1u32.checked_shl(pcr).ok_or("PCR index out of range")?;
    Ok(PcrSlot::try_from(bit)?)
}

fn connect(tcti: &str) -> Result<(Context, KeyHandle), BoxErr> {
    let mut ctx = Context::new(TctiNameConf::from_str(tcti)?)?;
    let srk = ctx.tr_from_tpm_public(TpmHandle::Persistent(PersistentTpmHandle::new(bulwark_tpm::SRK_HANDLE)?))?;
    Ok((ctx, KeyHandle::from(srk)))
}

impl AnchorObject {
    /// Seals `secret` under the persistent SRK to PolicyPCR over `pcrs` of the SHA-256 bank, whose
    /// current policy digest is `pcr_policy` (computed offline by the caller). Opens and closes its
    /// own connection, so it must not overlap a `bulwark_tpm::Tpm` operation on a one-client swtpm.
    pub fn create(tcti: &str, pcrs: &[u32], pcr_policy: [u8; 32], secret: &[u8]) -> Result<Self, BoxErr> {
        let (mut ctx, srk) = connect(tcti)?;
        let public = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::KeyedHash)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(
                ObjectAttributesBuilder::new().with_fixed_tpm(true).with_fixed_parent(true).with_no_da(true).build()?,
            )
            .with_auth_policy(Digest::try_from(pcr_policy.to_vec())?)
            .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
            .with_keyed_hash_unique_identifier(Digest::default())
            .build()?;
        let sensitive = SensitiveData::try_from(secret.to_vec())?;
        let created =
            ctx.execute_with_nullauth_session(|c| c.create(srk, public, None, Some(sensitive), None, None))?;
        let slots = pcrs.iter().map(|p| pcr_slot(*p)).collect::<Result<Vec<_>, _>>()?;
        let selection = PcrSelectionListBuilder::new().with_selection(HashingAlgorithm::Sha256, &slots).build()?;
        Ok(AnchorObject {
            public: created.out_public,
            private: created.out_private,
            selection,
            secret: secret.to_vec(),
        })
    }

    /// Writes the object (public area, private blob, PCR indices, secret) to `path`, for a bench that runs
    /// the anchor in another process ([`AnchorObject::load`]). Bench data only: the secret is random.
    pub fn save(&self, path: &std::path::Path, pcrs: &[u32]) -> Result<(), BoxErr> {
        let mut out = Vec::new();
        for part in [self.public.marshall()?, self.private.value().to_vec(), self.secret.clone()] {
            out.extend_from_slice(&u32::try_from(part.len())?.to_le_bytes());
            out.extend_from_slice(&part);
        }
        for p in pcrs {
            out.extend_from_slice(&p.to_le_bytes());
        }
        Ok(std::fs::write(path, out)?)
    }

    /// Reads an object written by [`AnchorObject::save`].
    pub fn load(path: &std::path::Path) -> Result<Self, BoxErr> {
        let bytes = std::fs::read(path)?;
        let mut rest = bytes.as_slice();
        let mut take = |n: usize| -> Result<&[u8], BoxErr> {
            if rest.len() < n {
                return Err("anchor file is truncated".into());
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let mut parts = Vec::new();
        for _ in 0..3 {
            let len = u32::from_le_bytes(take(4)?.try_into()?);
            parts.push(take(usize::try_from(len)?)?.to_vec());
        }
        let mut pcrs = Vec::new();
        while let Ok(b) = take(4) {
            pcrs.push(u32::from_le_bytes(b.try_into()?));
        }
        let slots = pcrs.iter().map(|p| pcr_slot(*p)).collect::<Result<Vec<_>, _>>()?;
        let selection = PcrSelectionListBuilder::new().with_selection(HashingAlgorithm::Sha256, &slots).build()?;
        let [public, private, secret] =
            <[Vec<u8>; 3]>::try_from(parts).map_err(|_| "anchor file has no three parts")?;
        Ok(AnchorObject {
            public: Public::unmarshall(&public)?,
            private: Private::try_from(private)?,
            selection,
            secret,
        })
    }

    /// Runs `n` plain unseals on one connection and returns each one's time: TPM2_Load, an unsalted
    /// policy session, TPM2_PolicyPCR, TPM2_Unseal, TPM2_FlushContext of object and session. The
    /// connection is opened before and closed after the timed loop (it is not counted).
    pub fn unseal_times(&self, tcti: &str, n: usize) -> Result<Vec<Duration>, BoxErr> {
        let mut conn = AnchorConnection::open(tcti)?;
        self.unseal_times_on(&mut conn, n)
    }

    /// [`AnchorObject::unseal_times`] on a connection the caller holds open across calls.
    pub fn unseal_times_on(&self, conn: &mut AnchorConnection, n: usize) -> Result<Vec<Duration>, BoxErr> {
        let AnchorConnection { ctx, srk } = conn;
        let srk = *srk;
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            ctx.set_sessions((Some(AuthSession::Password), None, None));
            let key = ctx.load(srk, self.private.clone(), self.public.clone())?;
            ctx.clear_sessions();
            let sess = ctx
                .start_auth_session(
                    None,
                    None,
                    None,
                    SessionType::Policy,
                    SymmetricDefinition::Null,
                    HashingAlgorithm::Sha256,
                )?
                .ok_or("the TPM returned no session")?;
            ctx.policy_pcr(PolicySession::try_from(sess)?, Digest::default(), self.selection.clone())?;
            ctx.set_sessions((Some(sess), None, None));
            let data = ctx.unseal(ObjectHandle::from(key))?;
            ctx.clear_sessions();
            ctx.flush_context(ObjectHandle::from(key))?;
            ctx.flush_context(ObjectHandle::from(SessionHandle::from(sess)))?;
            times.push(t.elapsed());
            if data.value() != self.secret.as_slice() {
                return Err("the anchor unsealed the wrong bytes".into());
            }
        }
        Ok(times)
    }
}

/// An open tss-esapi connection with the persistent SRK's handle, for anchors that keep one connection
/// for a whole run. On a one-client swtpm nothing else can reach that swtpm while it is open.
pub struct AnchorConnection {
    ctx: Context,
    srk: KeyHandle,
}

impl AnchorConnection {
    /// Connects to `tcti` and opens the persistent SRK (which must exist).
    pub fn open(tcti: &str) -> Result<Self, BoxErr> {
        let (ctx, srk) = connect(tcti)?;
        Ok(Self { ctx, srk })
    }
}

/// Times `n` plain ESAPI connects (TCTI loader + Esys_Initialize) and disconnects, nothing else.
pub fn connect_times(tcti: &str, n: usize) -> Result<Vec<Duration>, BoxErr> {
    let conf = TctiNameConf::from_str(tcti)?;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let ctx = Context::new(conf.clone())?;
        drop(ctx);
        times.push(t.elapsed());
    }
    Ok(times)
}
