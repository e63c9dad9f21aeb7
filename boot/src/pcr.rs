//! PCR indices, extend arithmetic and a modelled PCR bank.
//!
//! Extend is defined by TPM 2.0 Library Part 1, section 17.2 ("PCR Extend"):
//! `PCR.new = H(PCR.old || digest)`, where `H` is the bank's hash and `digest` is exactly one digest of
//! that bank's size.
//!
//! # What [`PcrBank`] models
//!
//! A bank right after `TPM2_Startup(CLEAR)` on a PC Client platform (TCG PC Client Platform TPM Profile
//! specification, PCR attributes table), which is also what swtpm reports:
//!
//! - PCRs 0-16 and 23 start at all zeros;
//! - PCRs 17-22 (the dynamic-root-of-trust PCRs) start at all `0xFF`. A D-RTM launch resets them to
//!   zero from locality 4; that is not modelled, and no firmware event log extends them;
//! - PCR 0 starts at zero except that its last byte is the locality `TPM2_Startup` was sent from, when
//!   the firmware records it with a StartupLocality event (TCG PC Client Platform Firmware Profile,
//!   section "Startup Locality Event"): typically 3, or 4 for an H-CRTM platform. Without that event
//!   the model assumes locality 0. [`PcrBank::with_startup_locality`] sets it.

use std::fmt;

use crate::alg::HashAlg;

const PCR_COUNT_U8: u8 = 24;

/// The number of PCRs in a PC Client TPM bank.
pub const PCR_COUNT: usize = PCR_COUNT_U8 as usize;

/// The highest locality a TPM knows (PC Client TPM Profile: localities 0-4).
pub const MAX_LOCALITY: u8 = 4;

/// What can go wrong with PCR arithmetic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PcrError {
    /// A PCR index is 24 or more.
    #[error("PCR index {0} is out of range (a PC Client TPM has PCRs 0-23)")]
    IndexOutOfRange(u32),
    /// A PCR value or digest has the wrong length for its bank.
    #[error("{what} for bank {alg} is {got} bytes, expected {expected}")]
    WrongSize {
        /// Which input: "PCR value" or "digest".
        what: &'static str,
        /// The bank.
        alg: HashAlg,
        /// The bank's digest size.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// A startup locality above 4.
    #[error("startup locality {0} does not exist (localities are 0-4)")]
    Locality(u8),
}

/// A PCR index, 0-23.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct PcrIndex(u8);

impl PcrIndex {
    /// The index `n`, or an error when `n >= 24`.
    pub fn new(n: u32) -> Result<Self, PcrError> {
        Self::checked(n).ok_or(PcrError::IndexOutOfRange(n))
    }

    /// The index `n`, or `None` when `n >= 24`; usable in constants.
    pub const fn checked(n: u32) -> Option<Self> {
        if n < PCR_COUNT_U8 as u32 {
            // In range: n < 24 fits a u8.
            #[allow(clippy::cast_possible_truncation)]
            Some(PcrIndex(n as u8))
        } else {
            None
        }
    }

    /// The index as a number.
    pub const fn get(self) -> u32 {
        self.0 as u32
    }

    /// The index as an array position.
    pub const fn as_usize(self) -> usize {
        self.0 as usize
    }

    /// Every index, 0 to 23.
    pub fn all() -> impl Iterator<Item = PcrIndex> {
        (0..PCR_COUNT_U8).map(PcrIndex)
    }
}

impl TryFrom<u32> for PcrIndex {
    type Error = PcrError;
    fn try_from(n: u32) -> Result<Self, PcrError> {
        PcrIndex::new(n)
    }
}

impl From<PcrIndex> for u32 {
    fn from(p: PcrIndex) -> u32 {
        p.get()
    }
}

impl fmt::Display for PcrIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The extend operation: `H(old || digest)` in bank `alg`. Both inputs must be `alg`'s digest size.
pub fn extend(alg: HashAlg, old: &[u8], digest: &[u8]) -> Result<Vec<u8>, PcrError> {
    check_size(alg, "PCR value", old)?;
    check_size(alg, "digest", digest)?;
    let mut h = crate::alg::Hasher::new(alg);
    h.update(old);
    h.update(digest);
    Ok(h.finalize())
}

fn check_size(alg: HashAlg, what: &'static str, bytes: &[u8]) -> Result<(), PcrError> {
    if bytes.len() == alg.digest_size() {
        Ok(())
    } else {
        Err(PcrError::WrongSize { what, alg, expected: alg.digest_size(), got: bytes.len() })
    }
}

/// The value PCR `pcr` of bank `alg` holds right after `TPM2_Startup(CLEAR)`, given the startup
/// locality (only PCR 0 depends on it). See the module docs for the model.
pub fn initial_value(alg: HashAlg, pcr: PcrIndex, startup_locality: u8) -> Result<Vec<u8>, PcrError> {
    if startup_locality > MAX_LOCALITY {
        return Err(PcrError::Locality(startup_locality));
    }
    let mut v = match pcr.get() {
        17..=22 => vec![0xFF; alg.digest_size()],
        _ => alg.zero_digest(),
    };
    if pcr.get() == 0
        && let Some(last) = v.last_mut()
    {
        *last = startup_locality;
    }
    Ok(v)
}

/// The 24 PCRs of one bank, starting from their reset values, extended in software.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrBank {
    alg: HashAlg,
    values: Vec<Vec<u8>>,
    /// Bit `i` set: PCR `i` was extended (or, for PCR 0, given a startup locality).
    touched: u32,
}

impl PcrBank {
    /// A bank of `alg` in its reset state, startup locality 0.
    pub fn new(alg: HashAlg) -> Self {
        let values = PcrIndex::all()
            .map(|p| match p.get() {
                17..=22 => vec![0xFF; alg.digest_size()],
                _ => alg.zero_digest(),
            })
            .collect();
        PcrBank { alg, values, touched: 0 }
    }

    /// A bank of `alg` in its reset state after a `TPM2_Startup` from `locality`: PCR 0's last byte is the
    /// locality. PCR 0 counts as touched, since its value is now determined by the log.
    pub fn with_startup_locality(alg: HashAlg, locality: u8) -> Result<Self, PcrError> {
        let mut bank = Self::new(alg);
        bank.values[0] = initial_value(alg, PcrIndex(0), locality)?;
        bank.touched |= 1;
        Ok(bank)
    }

    /// The bank's algorithm.
    pub fn alg(&self) -> HashAlg {
        self.alg
    }

    /// The current value of `pcr`.
    pub fn get(&self, pcr: PcrIndex) -> &[u8] {
        // `values` always has PCR_COUNT entries and `pcr` is < PCR_COUNT.
        self.values.get(pcr.as_usize()).map_or(&[], Vec::as_slice)
    }

    /// Extends `pcr` with `digest`, which must be this bank's digest size.
    pub fn extend(&mut self, pcr: PcrIndex, digest: &[u8]) -> Result<(), PcrError> {
        let new = extend(self.alg, self.get(pcr), digest)?;
        if let Some(slot) = self.values.get_mut(pcr.as_usize()) {
            *slot = new;
        }
        self.touched |= 1 << pcr.get();
        Ok(())
    }

    /// Extends `pcr` with the digest of `data` (what "measuring data into a PCR" means).
    pub fn measure(&mut self, pcr: PcrIndex, data: &[u8]) {
        let d = self.alg.digest(data);
        // The digest has this bank's size by construction, so extend cannot fail; keep the Result path
        // anyway rather than assert.
        let _ = self.extend(pcr, &d);
    }

    /// Extends with each `(pcr, digest)` in order; stops at the first wrongly sized digest.
    pub fn replay<'a>(&mut self, events: impl IntoIterator<Item = (PcrIndex, &'a [u8])>) -> Result<(), PcrError> {
        for (pcr, digest) in events {
            self.extend(pcr, digest)?;
        }
        Ok(())
    }

    /// Whether `pcr` was extended (or, for PCR 0, had its startup locality set).
    pub fn is_touched(&self, pcr: PcrIndex) -> bool {
        self.touched & (1 << pcr.get()) != 0
    }

    /// The touched PCRs, in order.
    pub fn touched(&self) -> impl Iterator<Item = PcrIndex> + '_ {
        PcrIndex::all().filter(|p| self.is_touched(*p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// Known answers produced by swtpm 0.7.1 (libtpms), not by this code: starting from a zero PCR,
    /// `tpm2_pcrextend 14:sha1=H("abc"),sha256=H("abc"),sha384=H("abc")` twice, `tpm2_pcrread` after each.
    #[test]
    fn extend_known_answers_from_swtpm() {
        let cases = [
            (HashAlg::Sha1, "ccd5bd41458de644ac34a2478b58ff819bef5acf", "e47a246032f51d2829d1e29380f6281d0a050423"),
            (
                HashAlg::Sha256,
                "589f9ffed4c477966bfb8d41f37895b08c69047df8f911d6f3b57fbe08faee8d",
                "bdeb6c6dc63852834c89f67066194207ce7d3806ea40ca58dc079246ef58a926",
            ),
            (
                HashAlg::Sha384,
                "93732e3733514a841c982cfa75ea76ab55fe011acb9cd980ef4523913c65be1b0998e04d77f8c174f81a82151619ca40",
                "0b815adb5c2824360b25f9c2ca667eee481dc15676327e8c56be97a3275d8f114d89b198e39f5f49e89657ea2a8adb6a",
            ),
        ];
        for (alg, once, twice) in cases {
            let d = alg.digest(b"abc");
            let v1 = extend(alg, &alg.zero_digest(), &d).unwrap();
            assert_eq!(v1, h(once), "{alg} first extend");
            let v2 = extend(alg, &v1, &d).unwrap();
            assert_eq!(v2, h(twice), "{alg} second extend");

            let mut bank = PcrBank::new(alg);
            let p14 = PcrIndex::new(14).unwrap();
            bank.measure(p14, b"abc");
            bank.extend(p14, &d).unwrap();
            assert_eq!(bank.get(p14), h(twice).as_slice());
            assert_eq!(bank.touched().collect::<Vec<_>>(), vec![p14]);
        }
    }

    /// Another swtpm-produced answer: `tpm2_pcrextend 15:sha256=00..01` on a zero PCR.
    #[test]
    fn extend_known_answer_sha256_one() {
        let mut d = vec![0u8; 32];
        d[31] = 1;
        let v = extend(HashAlg::Sha256, &[0; 32], &d).unwrap();
        assert_eq!(v, h("90f4b39548df55ad6187a1d20d731ecee78c545b94afd16f42ef7592d99cd365"));
    }

    #[test]
    fn extend_checks_sizes() {
        assert_eq!(
            extend(HashAlg::Sha256, &[0; 32], &[0; 20]),
            Err(PcrError::WrongSize { what: "digest", alg: HashAlg::Sha256, expected: 32, got: 20 })
        );
        assert!(matches!(
            extend(HashAlg::Sha1, &[0; 32], &[0; 20]),
            Err(PcrError::WrongSize { what: "PCR value", .. })
        ));
        let mut bank = PcrBank::new(HashAlg::Sha384);
        assert!(bank.extend(PcrIndex::new(3).unwrap(), &[0; 32]).is_err());
        assert!(!bank.is_touched(PcrIndex::new(3).unwrap()));
    }

    #[test]
    fn reset_values_and_locality() {
        for alg in HashAlg::ALL {
            let bank = PcrBank::new(alg);
            for p in PcrIndex::all() {
                let expect = if (17..=22).contains(&p.get()) { 0xFF } else { 0 };
                assert!(bank.get(p).iter().all(|b| *b == expect), "{alg} PCR {p}");
                assert_eq!(bank.get(p).len(), alg.digest_size());
            }
            assert_eq!(bank.touched().count(), 0);
            let b3 = PcrBank::with_startup_locality(alg, 3).unwrap();
            let p0 = b3.get(PcrIndex::new(0).unwrap());
            assert_eq!(p0.last(), Some(&3));
            assert!(p0[..p0.len() - 1].iter().all(|b| *b == 0));
            assert!(b3.is_touched(PcrIndex::new(0).unwrap()));
            assert_eq!(PcrBank::with_startup_locality(alg, 5), Err(PcrError::Locality(5)));
        }
    }

    #[test]
    fn index_bounds() {
        assert!(PcrIndex::new(23).is_ok());
        assert_eq!(PcrIndex::new(24), Err(PcrError::IndexOutOfRange(24)));
        assert_eq!(PcrIndex::new(u32::MAX), Err(PcrError::IndexOutOfRange(u32::MAX)));
        assert_eq!(PcrIndex::all().count(), PCR_COUNT);
        assert_eq!(PcrIndex::checked(15).map(PcrIndex::get), Some(15));
    }
}
