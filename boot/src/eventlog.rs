//! TCG PC Client binary event logs: parse, replay, write, and print replayed PCRs as JSON.
//!
//! The formats are those of the TCG PC Client Platform Firmware Profile specification (PFP), section
//! "Event Logging". All integers in a log are little-endian (unlike TPM command marshalling).
//!
//! **Legacy (SHA-1 only)** — a sequence of `TCG_PCR_EVENT` records:
//!
//! ```text
//! u32 pcrIndex | u32 eventType | u8 digest[20] (SHA-1) | u32 eventSize | u8 event[eventSize]
//! ```
//!
//! **Crypto-agile** — the first record is a `TCG_PCR_EVENT` as above with pcrIndex 0, eventType
//! `EV_NO_ACTION`, a zero digest, and as its event a `TCG_EfiSpecIdEvent`:
//!
//! ```text
//! u8 signature[16] = "Spec ID Event03\0" | u32 platformClass | u8 specVersionMinor | u8 specVersionMajor (2)
//! | u8 specErrata | u8 uintnSize (1: 32-bit, 2: 64-bit) | u32 numberOfAlgorithms
//! | numberOfAlgorithms x { u16 algorithmId | u16 digestSize } | u8 vendorInfoSize | u8 vendorInfo[..]
//! ```
//!
//! then `TCG_PCR_EVENT2` records:
//!
//! ```text
//! u32 pcrIndex | u32 eventType | u32 count | count x { u16 hashAlg | u8 digest[size from Spec ID] }
//! | u32 eventSize | u8 event[eventSize]
//! ```
//!
//! # How this parser treats input
//!
//! The log is untrusted. Every length is checked against its cap ([`MAX_LOG_SIZE`],
//! [`MAX_EVENT_DATA_SIZE`], [`MAX_ALGORITHMS`], [`MAX_EVENTS`], [`MAX_UNKNOWN_DIGEST_SIZE`]) before it is
//! checked against the bytes that remain, so an absurd value is reported as such rather than as a
//! truncation; every allocation is bounded by the input length. The log must end exactly at the end of
//! an event: a partial event or trailing bytes is an error naming the offset. Each crypto-agile event
//! must carry exactly one digest for every algorithm the Spec ID event declares (PFP: "a digest for each
//! active PCR bank"); an algorithm this crate cannot compute (SHA-512, SM3, ...) is parsed using the
//! Spec ID event's digest size and left out of replay; an algorithm missing from the Spec ID event is an
//! error, since its digest size would be a guess.
//!
//! # Replay
//!
//! Events of type `EV_NO_ACTION` are not extended (PFP: they are informational and "not extended into
//! any PCR"). A `StartupLocality` `EV_NO_ACTION` event in PCR 0 (signature `"StartupLocality\0"` then
//! one byte, the locality) sets PCR 0's initial value to the locality in its last byte; it must come
//! before any event that extends PCR 0. Other PCRs start from their reset values, as
//! [`crate::pcr`] documents.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::alg::HashAlg;
use crate::pcr::{MAX_LOCALITY, PcrBank, PcrError, PcrIndex};

/// The largest log accepted, in bytes. Firmware logs are tens of kilobytes; runtime logs are smaller.
pub const MAX_LOG_SIZE: usize = 16 << 20;
/// The largest event data accepted, in bytes. The biggest firmware events (Secure Boot variables such as
/// `dbx`) are tens of kilobytes.
pub const MAX_EVENT_DATA_SIZE: usize = 1 << 20;
/// The most events accepted in one log. Firmware logs hold a few hundred.
pub const MAX_EVENTS: usize = 65_536;
/// The most algorithms a Spec ID event may declare (and so digests per event).
pub const MAX_ALGORITHMS: usize = 16;
/// The largest digest size accepted for an algorithm this crate does not know (64: SHA-512, SHA3-512).
pub const MAX_UNKNOWN_DIGEST_SIZE: u16 = 64;

/// The signature of the crypto-agile Spec ID event (PFP, `TCG_EfiSpecIdEvent`).
pub const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
/// The signature of the StartupLocality event (PFP, `TCG_EfiStartupLocalityEvent`).
pub const STARTUP_LOCALITY_SIGNATURE: &[u8; 16] = b"StartupLocality\0";

/// Size of a legacy `TCG_PCR_EVENT` before its event data.
const LEGACY_HEADER: usize = 4 + 4 + 20 + 4;

/// What is wrong with an event log (or with a request to write one). Offsets are byte offsets from the
/// start of the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventLogError {
    /// The input is empty.
    #[error("event log is empty")]
    Empty,
    /// The input is larger than [`MAX_LOG_SIZE`].
    #[error("event log is over the {max}-byte cap ({len} bytes or more)")]
    LogTooLarge {
        /// Its length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A field runs past the end of the input: the log is truncated, or has trailing bytes that do not
    /// form a whole event.
    #[error(
        "at byte {offset}: {field} needs {needed} bytes but {available} remain (truncated log or trailing garbage)"
    )]
    Truncated {
        /// Where the field starts.
        offset: usize,
        /// Which field.
        field: &'static str,
        /// Bytes it needs.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// A count or size is above its cap.
    #[error("at byte {offset}: {field} is {value}, above the cap of {max}")]
    TooLarge {
        /// Where the field starts.
        offset: usize,
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The cap.
        max: u64,
    },
    /// A PCR index of 24 or more.
    #[error("at byte {offset}: PCR index {index} is out of range (0-23)")]
    PcrIndex {
        /// Where the event starts.
        offset: usize,
        /// The index.
        index: u32,
    },
    /// The Spec ID event is malformed.
    #[error("at byte {offset}: malformed Spec ID event: {reason}")]
    SpecId {
        /// Where the offending field starts.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// An event names an algorithm the Spec ID event does not declare.
    #[error(
        "at byte {offset}: algorithm 0x{id:04x} is not declared in the Spec ID event, so its digest size is unknown"
    )]
    UnknownAlgorithm {
        /// Where the algorithm id is.
        offset: usize,
        /// The id.
        id: u16,
    },
    /// The Spec ID event declares a known algorithm with the wrong digest size.
    #[error("at byte {offset}: algorithm 0x{id:04x} declared with digest size {declared}, but its size is {expected}")]
    DigestSize {
        /// Where the declaration is.
        offset: usize,
        /// The algorithm id.
        id: u16,
        /// The declared size.
        declared: u16,
        /// The real size.
        expected: usize,
    },
    /// An algorithm appears twice in one list.
    #[error("at byte {offset}: algorithm 0x{id:04x} appears twice")]
    DuplicateAlgorithm {
        /// Where the second occurrence is.
        offset: usize,
        /// The id.
        id: u16,
    },
    /// An event carries a different number of digests than the Spec ID event declares banks.
    #[error("at byte {offset}: event carries {got} digests but the Spec ID event declares {expected} algorithms")]
    DigestCount {
        /// Where the count is.
        offset: usize,
        /// Declared algorithms.
        expected: usize,
        /// Digests carried.
        got: u32,
    },
    /// A malformed or misplaced StartupLocality event.
    #[error("at byte {offset}: bad StartupLocality event: {reason}")]
    StartupLocality {
        /// Where the event starts.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// More than [`MAX_EVENTS`] events.
    #[error("at byte {offset}: more than {max} events")]
    TooManyEvents {
        /// Where the first event over the cap starts.
        offset: usize,
        /// The cap.
        max: usize,
    },
    /// Writing: the request cannot be encoded (banks or digests do not match, or the log is full).
    #[error("cannot write event: {reason}")]
    Write {
        /// What is wrong.
        reason: &'static str,
    },
    /// A PCR arithmetic error (a digest of the wrong size or a bad locality).
    #[error("PCR arithmetic failed")]
    Pcr(#[from] PcrError),
}

/// An event type (`eventType`), with the names the PFP specification gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventType(pub u32);

impl EventType {
    /// `EV_PREBOOT_CERT`.
    pub const PREBOOT_CERT: EventType = EventType(0x0000_0000);
    /// `EV_POST_CODE`.
    pub const POST_CODE: EventType = EventType(0x0000_0001);
    /// `EV_NO_ACTION`: informational, never extended.
    pub const NO_ACTION: EventType = EventType(0x0000_0003);
    /// `EV_SEPARATOR`.
    pub const SEPARATOR: EventType = EventType(0x0000_0004);
    /// `EV_ACTION`.
    pub const ACTION: EventType = EventType(0x0000_0005);
    /// `EV_EVENT_TAG`.
    pub const EVENT_TAG: EventType = EventType(0x0000_0006);
    /// `EV_S_CRTM_CONTENTS`.
    pub const S_CRTM_CONTENTS: EventType = EventType(0x0000_0007);
    /// `EV_S_CRTM_VERSION`.
    pub const S_CRTM_VERSION: EventType = EventType(0x0000_0008);
    /// `EV_CPU_MICROCODE`.
    pub const CPU_MICROCODE: EventType = EventType(0x0000_0009);
    /// `EV_PLATFORM_CONFIG_FLAGS`.
    pub const PLATFORM_CONFIG_FLAGS: EventType = EventType(0x0000_000A);
    /// `EV_TABLE_OF_DEVICES`.
    pub const TABLE_OF_DEVICES: EventType = EventType(0x0000_000B);
    /// `EV_COMPACT_HASH`.
    pub const COMPACT_HASH: EventType = EventType(0x0000_000C);
    /// `EV_IPL`: code or data loaded by an OS loader or, here, measured by the appliance runtime.
    pub const IPL: EventType = EventType(0x0000_000D);
    /// `EV_IPL_PARTITION_DATA`.
    pub const IPL_PARTITION_DATA: EventType = EventType(0x0000_000E);
    /// `EV_NONHOST_CODE`.
    pub const NONHOST_CODE: EventType = EventType(0x0000_000F);
    /// `EV_NONHOST_CONFIG`.
    pub const NONHOST_CONFIG: EventType = EventType(0x0000_0010);
    /// `EV_NONHOST_INFO`.
    pub const NONHOST_INFO: EventType = EventType(0x0000_0011);
    /// `EV_OMIT_BOOT_DEVICE_EVENTS`.
    pub const OMIT_BOOT_DEVICE_EVENTS: EventType = EventType(0x0000_0012);
    /// `EV_EFI_VARIABLE_DRIVER_CONFIG`.
    pub const EFI_VARIABLE_DRIVER_CONFIG: EventType = EventType(0x8000_0001);
    /// `EV_EFI_VARIABLE_BOOT`.
    pub const EFI_VARIABLE_BOOT: EventType = EventType(0x8000_0002);
    /// `EV_EFI_BOOT_SERVICES_APPLICATION`.
    pub const EFI_BOOT_SERVICES_APPLICATION: EventType = EventType(0x8000_0003);
    /// `EV_EFI_BOOT_SERVICES_DRIVER`.
    pub const EFI_BOOT_SERVICES_DRIVER: EventType = EventType(0x8000_0004);
    /// `EV_EFI_RUNTIME_SERVICES_DRIVER`.
    pub const EFI_RUNTIME_SERVICES_DRIVER: EventType = EventType(0x8000_0005);
    /// `EV_EFI_GPT_EVENT`.
    pub const EFI_GPT_EVENT: EventType = EventType(0x8000_0006);
    /// `EV_EFI_ACTION`.
    pub const EFI_ACTION: EventType = EventType(0x8000_0007);
    /// `EV_EFI_PLATFORM_FIRMWARE_BLOB`.
    pub const EFI_PLATFORM_FIRMWARE_BLOB: EventType = EventType(0x8000_0008);
    /// `EV_EFI_HANDOFF_TABLES`.
    pub const EFI_HANDOFF_TABLES: EventType = EventType(0x8000_0009);
    /// `EV_EFI_PLATFORM_FIRMWARE_BLOB2`.
    pub const EFI_PLATFORM_FIRMWARE_BLOB2: EventType = EventType(0x8000_000A);
    /// `EV_EFI_HANDOFF_TABLES2`.
    pub const EFI_HANDOFF_TABLES2: EventType = EventType(0x8000_000B);
    /// `EV_EFI_VARIABLE_BOOT2`.
    pub const EFI_VARIABLE_BOOT2: EventType = EventType(0x8000_000C);
    /// `EV_EFI_HCRTM_EVENT`.
    pub const EFI_HCRTM_EVENT: EventType = EventType(0x8000_0010);
    /// `EV_EFI_VARIABLE_AUTHORITY`.
    pub const EFI_VARIABLE_AUTHORITY: EventType = EventType(0x8000_00E0);
    /// `EV_EFI_SPDM_FIRMWARE_BLOB`.
    pub const EFI_SPDM_FIRMWARE_BLOB: EventType = EventType(0x8000_00E1);
    /// `EV_EFI_SPDM_FIRMWARE_CONFIG`.
    pub const EFI_SPDM_FIRMWARE_CONFIG: EventType = EventType(0x8000_00E2);

    /// The specification's name for this type, or `None` for a value it does not define.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::PREBOOT_CERT => "EV_PREBOOT_CERT",
            Self::POST_CODE => "EV_POST_CODE",
            EventType(2) => "EV_UNUSED",
            Self::NO_ACTION => "EV_NO_ACTION",
            Self::SEPARATOR => "EV_SEPARATOR",
            Self::ACTION => "EV_ACTION",
            Self::EVENT_TAG => "EV_EVENT_TAG",
            Self::S_CRTM_CONTENTS => "EV_S_CRTM_CONTENTS",
            Self::S_CRTM_VERSION => "EV_S_CRTM_VERSION",
            Self::CPU_MICROCODE => "EV_CPU_MICROCODE",
            Self::PLATFORM_CONFIG_FLAGS => "EV_PLATFORM_CONFIG_FLAGS",
            Self::TABLE_OF_DEVICES => "EV_TABLE_OF_DEVICES",
            Self::COMPACT_HASH => "EV_COMPACT_HASH",
            Self::IPL => "EV_IPL",
            Self::IPL_PARTITION_DATA => "EV_IPL_PARTITION_DATA",
            Self::NONHOST_CODE => "EV_NONHOST_CODE",
            Self::NONHOST_CONFIG => "EV_NONHOST_CONFIG",
            Self::NONHOST_INFO => "EV_NONHOST_INFO",
            Self::OMIT_BOOT_DEVICE_EVENTS => "EV_OMIT_BOOT_DEVICE_EVENTS",
            EventType(0x8000_0000) => "EV_EFI_EVENT_BASE",
            Self::EFI_VARIABLE_DRIVER_CONFIG => "EV_EFI_VARIABLE_DRIVER_CONFIG",
            Self::EFI_VARIABLE_BOOT => "EV_EFI_VARIABLE_BOOT",
            Self::EFI_BOOT_SERVICES_APPLICATION => "EV_EFI_BOOT_SERVICES_APPLICATION",
            Self::EFI_BOOT_SERVICES_DRIVER => "EV_EFI_BOOT_SERVICES_DRIVER",
            Self::EFI_RUNTIME_SERVICES_DRIVER => "EV_EFI_RUNTIME_SERVICES_DRIVER",
            Self::EFI_GPT_EVENT => "EV_EFI_GPT_EVENT",
            Self::EFI_ACTION => "EV_EFI_ACTION",
            Self::EFI_PLATFORM_FIRMWARE_BLOB => "EV_EFI_PLATFORM_FIRMWARE_BLOB",
            Self::EFI_HANDOFF_TABLES => "EV_EFI_HANDOFF_TABLES",
            Self::EFI_PLATFORM_FIRMWARE_BLOB2 => "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
            Self::EFI_HANDOFF_TABLES2 => "EV_EFI_HANDOFF_TABLES2",
            Self::EFI_VARIABLE_BOOT2 => "EV_EFI_VARIABLE_BOOT2",
            Self::EFI_HCRTM_EVENT => "EV_EFI_HCRTM_EVENT",
            Self::EFI_VARIABLE_AUTHORITY => "EV_EFI_VARIABLE_AUTHORITY",
            Self::EFI_SPDM_FIRMWARE_BLOB => "EV_EFI_SPDM_FIRMWARE_BLOB",
            Self::EFI_SPDM_FIRMWARE_CONFIG => "EV_EFI_SPDM_FIRMWARE_CONFIG",
            _ => return None,
        })
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "0x{:08x}", self.0),
        }
    }
}

/// Which of the two binary formats a log is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `TCG_PCR_EVENT` records only, SHA-1 digests (TPM 1.2 era firmware).
    LegacySha1,
    /// A Spec ID event, then `TCG_PCR_EVENT2` records with a digest per declared algorithm.
    CryptoAgile,
}

/// One algorithm declared by the Spec ID event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlgorithmSize {
    /// TCG algorithm id.
    pub id: u16,
    /// Digest size in bytes.
    pub digest_size: u16,
}

/// The crypto-agile log header (`TCG_EfiSpecIdEvent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecIdEvent {
    /// `platformClass` (0: client, 1: server).
    pub platform_class: u32,
    /// `specVersionMinor`.
    pub spec_version_minor: u8,
    /// `specVersionMajor` (always 2 here).
    pub spec_version_major: u8,
    /// `specErrata`.
    pub spec_errata: u8,
    /// `uintnSize` (1: UINT32, 2: UINT64).
    pub uintn_size: u8,
    /// The declared algorithms and their digest sizes, in log order.
    pub algorithms: Vec<AlgorithmSize>,
    /// `vendorInfo`.
    pub vendor_info: Vec<u8>,
}

impl SpecIdEvent {
    fn digest_size(&self, id: u16) -> Option<usize> {
        self.algorithms.iter().find(|a| a.id == id).map(|a| usize::from(a.digest_size))
    }
}

/// One digest in an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDigest {
    /// TCG algorithm id.
    pub alg_id: u16,
    /// The digest.
    pub bytes: Vec<u8>,
}

impl EventDigest {
    /// The algorithm, when this crate supports it.
    pub fn alg(&self) -> Option<HashAlg> {
        HashAlg::from_tcg_id(self.alg_id)
    }
}

/// One parsed event (the Spec ID header of a crypto-agile log is not one of these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Byte offset of the event in the log.
    pub offset: usize,
    /// `pcrIndex`.
    pub pcr: PcrIndex,
    /// `eventType`.
    pub event_type: EventType,
    /// The digests, in log order.
    pub digests: Vec<EventDigest>,
    /// The event data.
    pub data: Vec<u8>,
}

impl Event {
    /// The digest for `alg`, if the event carries one.
    pub fn digest(&self, alg: HashAlg) -> Option<&[u8]> {
        self.digests.iter().find(|d| d.alg_id == alg.tcg_id()).map(|d| d.bytes.as_slice())
    }

    /// Whether replay extends this event (everything but `EV_NO_ACTION`).
    pub fn is_extended(&self) -> bool {
        self.event_type != EventType::NO_ACTION
    }
}

/// Replayed PCR values: bank → PCR index → value.
pub type PcrValues = BTreeMap<HashAlg, BTreeMap<u32, Vec<u8>>>;

/// A parsed event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLog {
    format: LogFormat,
    spec_id: Option<SpecIdEvent>,
    events: Vec<Event>,
    startup_locality: Option<u8>,
}

impl EventLog {
    /// The format.
    pub fn format(&self) -> LogFormat {
        self.format
    }

    /// The Spec ID header (crypto-agile logs only).
    pub fn spec_id(&self) -> Option<&SpecIdEvent> {
        self.spec_id.as_ref()
    }

    /// The events after the header, in order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The locality of the StartupLocality event, if the log has one.
    pub fn startup_locality(&self) -> Option<u8> {
        self.startup_locality
    }

    /// The banks this crate can replay: the supported algorithms the Spec ID event declares (in its
    /// order), or SHA-1 for a legacy log.
    pub fn banks(&self) -> Vec<HashAlg> {
        match &self.spec_id {
            Some(s) => s.algorithms.iter().filter_map(|a| HashAlg::from_tcg_id(a.id)).collect(),
            None => vec![HashAlg::Sha1],
        }
    }

    /// Algorithm ids the Spec ID event declares that this crate cannot replay (e.g. `0x000D`, SHA-512).
    pub fn unsupported_algorithms(&self) -> Vec<u16> {
        self.spec_id
            .iter()
            .flat_map(|s| s.algorithms.iter())
            .filter(|a| HashAlg::from_tcg_id(a.id).is_none())
            .map(|a| a.id)
            .collect()
    }

    /// Replays the log into a modelled bank per supported algorithm.
    pub fn replay_banks(&self) -> Result<BTreeMap<HashAlg, PcrBank>, EventLogError> {
        let mut banks = BTreeMap::new();
        for alg in self.banks() {
            let bank = match self.startup_locality {
                Some(l) => PcrBank::with_startup_locality(alg, l)?,
                None => PcrBank::new(alg),
            };
            banks.insert(alg, bank);
        }
        for ev in self.events.iter().filter(|e| e.is_extended()) {
            for (alg, bank) in banks.iter_mut() {
                // The parser guarantees a digest per declared algorithm.
                let d = ev.digest(*alg).ok_or(EventLogError::DigestCount {
                    offset: ev.offset,
                    expected: self.banks().len(),
                    got: u32::try_from(ev.digests.len()).unwrap_or(u32::MAX),
                })?;
                bank.extend(ev.pcr, d)?;
            }
        }
        Ok(banks)
    }

    /// Replays the log: every supported bank in the log, and in each, every PCR the log touched (extended
    /// at least once, or PCR 0 when a StartupLocality event sets its initial value) with its final value.
    pub fn replay(&self) -> Result<PcrValues, EventLogError> {
        Ok(self
            .replay_banks()?
            .into_iter()
            .map(|(alg, bank)| {
                let pcrs = bank.touched().map(|p| (p.get(), bank.get(p).to_vec())).collect();
                (alg, pcrs)
            })
            .collect())
    }
}

/// Replayed PCR values as JSON: `{"sha256": {"0": "<lower-case hex>", ...}, "sha1": {...}}`. This is what
/// `bulwark boot eventlog FILE --json` prints.
pub fn pcr_values_json(values: &PcrValues) -> serde_json::Value {
    let banks = values
        .iter()
        .map(|(alg, pcrs)| {
            let pcrs = pcrs
                .iter()
                .map(|(i, v)| (i.to_string(), serde_json::Value::String(hex::encode(v))))
                .collect::<serde_json::Map<_, _>>();
            (alg.name().to_owned(), serde_json::Value::Object(pcrs))
        })
        .collect::<serde_json::Map<_, _>>();
    serde_json::Value::Object(banks)
}

/// Parses a binary event log in either format. Detection: a first event of type `EV_NO_ACTION` whose
/// data starts with [`SPEC_ID_SIGNATURE`] makes a crypto-agile log; anything else is parsed as legacy.
/// This is the entry point fuzz targets call.
pub fn parse(bytes: &[u8]) -> Result<EventLog, EventLogError> {
    if bytes.is_empty() {
        return Err(EventLogError::Empty);
    }
    if bytes.len() > MAX_LOG_SIZE {
        return Err(EventLogError::LogTooLarge { len: bytes.len(), max: MAX_LOG_SIZE });
    }
    let mut r = Reader::new(bytes, 0);
    let first = read_legacy_event(&mut r)?;
    let (format, spec_id, mut events) = if first.event_type == EventType::NO_ACTION
        && first.data.starts_with(SPEC_ID_SIGNATURE)
    {
        let data_offset = first.offset + LEGACY_HEADER;
        if first.pcr.get() != 0 {
            return Err(EventLogError::SpecId { offset: first.offset, reason: "header event is not in PCR 0" });
        }
        if first.digests.iter().any(|d| d.bytes.iter().any(|b| *b != 0)) {
            return Err(EventLogError::SpecId { offset: first.offset + 8, reason: "header event digest is not zero" });
        }
        let spec = parse_spec_id(&first.data, data_offset)?;
        (LogFormat::CryptoAgile, Some(spec), Vec::new())
    } else {
        (LogFormat::LegacySha1, None, vec![first])
    };
    while !r.is_empty() {
        if events.len() >= MAX_EVENTS {
            return Err(EventLogError::TooManyEvents { offset: r.offset(), max: MAX_EVENTS });
        }
        let ev = match &spec_id {
            Some(spec) => read_event2(&mut r, spec)?,
            None => read_legacy_event(&mut r)?,
        };
        events.push(ev);
    }
    let startup_locality = find_startup_locality(&events)?;
    Ok(EventLog { format, spec_id, events, startup_locality })
}

/// Checks StartupLocality events: at most one, in PCR 0, well formed, before any extend of PCR 0.
fn find_startup_locality(events: &[Event]) -> Result<Option<u8>, EventLogError> {
    let mut locality = None;
    let mut pcr0_extended = false;
    for ev in events {
        if ev.event_type == EventType::NO_ACTION && ev.data.starts_with(STARTUP_LOCALITY_SIGNATURE) {
            let bad = |reason| EventLogError::StartupLocality { offset: ev.offset, reason };
            if ev.pcr.get() != 0 {
                return Err(bad("not logged in PCR 0"));
            }
            if ev.data.len() != STARTUP_LOCALITY_SIGNATURE.len() + 1 {
                return Err(bad("event data is not 17 bytes"));
            }
            if locality.is_some() {
                return Err(bad("appears twice"));
            }
            if pcr0_extended {
                return Err(bad("comes after PCR 0 was extended"));
            }
            let l = ev.data.last().copied().unwrap_or(0);
            if l > MAX_LOCALITY {
                return Err(bad("locality above 4"));
            }
            locality = Some(l);
        } else if ev.is_extended() && ev.pcr.get() == 0 {
            pcr0_extended = true;
        }
    }
    Ok(locality)
}

fn parse_spec_id(data: &[u8], base: usize) -> Result<SpecIdEvent, EventLogError> {
    let mut r = Reader::new(data, base);
    r.take(SPEC_ID_SIGNATURE.len(), "Spec ID signature")?;
    let platform_class = r.u32("platformClass")?;
    let spec_version_minor = r.u8("specVersionMinor")?;
    let version_offset = r.offset();
    let spec_version_major = r.u8("specVersionMajor")?;
    if spec_version_major != 2 {
        return Err(EventLogError::SpecId { offset: version_offset, reason: "specVersionMajor is not 2" });
    }
    let spec_errata = r.u8("specErrata")?;
    let uintn_offset = r.offset();
    let uintn_size = r.u8("uintnSize")?;
    if !(1..=2).contains(&uintn_size) {
        return Err(EventLogError::SpecId { offset: uintn_offset, reason: "uintnSize is neither 1 nor 2" });
    }
    let count_offset = r.offset();
    let count = r.u32("numberOfAlgorithms")?;
    if count == 0 {
        return Err(EventLogError::SpecId { offset: count_offset, reason: "declares no algorithms" });
    }
    let count = bounded(count_offset, "numberOfAlgorithms", count, MAX_ALGORITHMS)?;
    let mut algorithms: Vec<AlgorithmSize> = Vec::with_capacity(count);
    for _ in 0..count {
        let offset = r.offset();
        let id = r.u16("algorithmId")?;
        let digest_size = r.u16("digestSize")?;
        if algorithms.iter().any(|a| a.id == id) {
            return Err(EventLogError::DuplicateAlgorithm { offset, id });
        }
        match HashAlg::from_tcg_id(id) {
            Some(alg) if usize::from(digest_size) != alg.digest_size() => {
                return Err(EventLogError::DigestSize {
                    offset,
                    id,
                    declared: digest_size,
                    expected: alg.digest_size(),
                });
            }
            Some(_) => {}
            None if digest_size == 0 || digest_size > MAX_UNKNOWN_DIGEST_SIZE => {
                return Err(EventLogError::TooLarge {
                    offset: offset + 2,
                    field: "digest size of an unsupported algorithm (or zero)",
                    value: u64::from(digest_size),
                    max: u64::from(MAX_UNKNOWN_DIGEST_SIZE),
                });
            }
            None => {}
        }
        algorithms.push(AlgorithmSize { id, digest_size });
    }
    let vendor_size = r.u8("vendorInfoSize")?;
    let vendor_info = r.take(usize::from(vendor_size), "vendorInfo")?.to_vec();
    if !r.is_empty() {
        return Err(EventLogError::SpecId { offset: r.offset(), reason: "trailing bytes after vendorInfo" });
    }
    Ok(SpecIdEvent {
        platform_class,
        spec_version_minor,
        spec_version_major,
        spec_errata,
        uintn_size,
        algorithms,
        vendor_info,
    })
}

fn read_pcr(r: &mut Reader<'_>, event_offset: usize) -> Result<PcrIndex, EventLogError> {
    let index = r.u32("pcrIndex")?;
    PcrIndex::new(index).map_err(|_| EventLogError::PcrIndex { offset: event_offset, index })
}

fn read_event_data(r: &mut Reader<'_>) -> Result<Vec<u8>, EventLogError> {
    let offset = r.offset();
    let size = r.u32("eventSize")?;
    let size = bounded(offset, "eventSize", size, MAX_EVENT_DATA_SIZE)?;
    Ok(r.take(size, "event data")?.to_vec())
}

fn read_legacy_event(r: &mut Reader<'_>) -> Result<Event, EventLogError> {
    let offset = r.offset();
    let pcr = read_pcr(r, offset)?;
    let event_type = EventType(r.u32("eventType")?);
    let digest = r.take(HashAlg::Sha1.digest_size(), "SHA-1 digest")?.to_vec();
    let data = read_event_data(r)?;
    Ok(Event {
        offset,
        pcr,
        event_type,
        digests: vec![EventDigest { alg_id: HashAlg::Sha1.tcg_id(), bytes: digest }],
        data,
    })
}

fn read_event2(r: &mut Reader<'_>, spec: &SpecIdEvent) -> Result<Event, EventLogError> {
    let offset = r.offset();
    let pcr = read_pcr(r, offset)?;
    let event_type = EventType(r.u32("eventType")?);
    let count_offset = r.offset();
    let count = r.u32("digest count")?;
    bounded(count_offset, "digest count", count, MAX_ALGORITHMS)?;
    if usize::try_from(count).ok() != Some(spec.algorithms.len()) {
        return Err(EventLogError::DigestCount { offset: count_offset, expected: spec.algorithms.len(), got: count });
    }
    let mut digests: Vec<EventDigest> = Vec::with_capacity(spec.algorithms.len());
    for _ in 0..count {
        let id_offset = r.offset();
        let alg_id = r.u16("digest algorithm id")?;
        let size = spec.digest_size(alg_id).ok_or(EventLogError::UnknownAlgorithm { offset: id_offset, id: alg_id })?;
        if digests.iter().any(|d| d.alg_id == alg_id) {
            return Err(EventLogError::DuplicateAlgorithm { offset: id_offset, id: alg_id });
        }
        let bytes = r.take(size, "digest")?.to_vec();
        digests.push(EventDigest { alg_id, bytes });
    }
    let data = read_event_data(r)?;
    Ok(Event { offset, pcr, event_type, digests, data })
}

/// `value` as a usize when it is at most `max`.
fn bounded(offset: usize, field: &'static str, value: u32, max: usize) -> Result<usize, EventLogError> {
    match usize::try_from(value) {
        Ok(v) if v <= max => Ok(v),
        _ => Err(EventLogError::TooLarge { offset, field, value: u64::from(value), max: max as u64 }),
    }
}

/// A cursor over untrusted bytes; every read is bounds-checked and reports absolute offsets.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Reader { buf, pos: 0, base }
    }

    fn offset(&self) -> usize {
        self.base + self.pos
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], EventLogError> {
        let available = self.buf.len().saturating_sub(self.pos);
        let truncated = EventLogError::Truncated { offset: self.offset(), field, needed: n, available };
        let end = self.pos.checked_add(n).ok_or(truncated.clone())?;
        let out = self.buf.get(self.pos..end).ok_or(truncated)?;
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], EventLogError> {
        let s = self.take(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, EventLogError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, EventLogError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, EventLogError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
}

// ---------------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------------

/// The bytes of a crypto-agile log's header: a `TCG_PCR_EVENT` in PCR 0, `EV_NO_ACTION`, zero SHA-1
/// digest, carrying a Spec ID event that declares `banks` (platform class 0 (client), spec version 2.0
/// errata 0, uintnSize 2, no vendor info).
pub fn encode_spec_id_header(banks: &[HashAlg]) -> Result<Vec<u8>, EventLogError> {
    encode_spec_id_header_with(banks, &[])
}

/// [`encode_spec_id_header`] with `vendor_info` in the Spec ID event's `vendorInfo` (at most 255 bytes:
/// its size field is one byte).
pub fn encode_spec_id_header_with(banks: &[HashAlg], vendor_info: &[u8]) -> Result<Vec<u8>, EventLogError> {
    check_banks(banks)?;
    let vendor_size = u8::try_from(vendor_info.len()).map_err(|_| EventLogError::TooLarge {
        offset: 0,
        field: "vendorInfoSize (writing)",
        value: vendor_info.len() as u64,
        max: u64::from(u8::MAX),
    })?;
    let mut spec = Vec::with_capacity(32 + 4 * banks.len());
    spec.extend_from_slice(SPEC_ID_SIGNATURE);
    spec.extend_from_slice(&0u32.to_le_bytes()); // platformClass: client
    spec.extend_from_slice(&[0, 2, 0, 2]); // minor, major, errata, uintnSize
    spec.extend_from_slice(&len_u32(banks.len()).to_le_bytes());
    for alg in banks {
        spec.extend_from_slice(&alg.tcg_id().to_le_bytes());
        spec.extend_from_slice(&len_u16(alg.digest_size()).to_le_bytes());
    }
    spec.push(vendor_size);
    spec.extend_from_slice(vendor_info);
    Ok(encode_legacy_event(0, EventType::NO_ACTION, &[0; 20], &spec))
}

/// The bytes of one `TCG_PCR_EVENT2` record carrying exactly `digests` (one per bank, in the given
/// order). Fails when a digest has the wrong size, a bank repeats, or the data is over
/// [`MAX_EVENT_DATA_SIZE`].
pub fn encode_event2(
    pcr: PcrIndex,
    event_type: EventType,
    digests: &[(HashAlg, Vec<u8>)],
    data: &[u8],
) -> Result<Vec<u8>, EventLogError> {
    let algs: Vec<HashAlg> = digests.iter().map(|(a, _)| *a).collect();
    check_banks(&algs)?;
    check_data(data)?;
    let mut out = Vec::with_capacity(16 + digests.iter().map(|(_, d)| 2 + d.len()).sum::<usize>() + data.len());
    out.extend_from_slice(&pcr.get().to_le_bytes());
    out.extend_from_slice(&event_type.0.to_le_bytes());
    out.extend_from_slice(&len_u32(digests.len()).to_le_bytes());
    for (alg, d) in digests {
        if d.len() != alg.digest_size() {
            return Err(
                PcrError::WrongSize { what: "digest", alg: *alg, expected: alg.digest_size(), got: d.len() }.into()
            );
        }
        out.extend_from_slice(&alg.tcg_id().to_le_bytes());
        out.extend_from_slice(d);
    }
    out.extend_from_slice(&len_u32(data.len()).to_le_bytes());
    out.extend_from_slice(data);
    Ok(out)
}

fn encode_legacy_event(pcr: u32, event_type: EventType, sha1: &[u8; 20], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(LEGACY_HEADER + data.len());
    out.extend_from_slice(&pcr.to_le_bytes());
    out.extend_from_slice(&event_type.0.to_le_bytes());
    out.extend_from_slice(sha1);
    out.extend_from_slice(&len_u32(data.len()).to_le_bytes());
    out.extend_from_slice(data);
    out
}

fn check_banks(banks: &[HashAlg]) -> Result<(), EventLogError> {
    if banks.is_empty() {
        return Err(EventLogError::Write { reason: "no banks" });
    }
    let set: BTreeSet<_> = banks.iter().collect();
    if set.len() != banks.len() {
        return Err(EventLogError::Write { reason: "a bank appears twice" });
    }
    Ok(())
}

fn check_data(data: &[u8]) -> Result<(), EventLogError> {
    if data.len() > MAX_EVENT_DATA_SIZE {
        return Err(EventLogError::TooLarge {
            offset: 0,
            field: "eventSize (writing)",
            value: data.len() as u64,
            max: MAX_EVENT_DATA_SIZE as u64,
        });
    }
    Ok(())
}

/// A length the caller has already bounded (by [`MAX_EVENT_DATA_SIZE`] or a bank count) as a u32.
fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn len_u16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// Builds an event log in memory, in either format. Used by tests, by the runtime measurement log and
/// by anything that predicts PCR values.
#[derive(Debug, Clone)]
pub struct LogWriter {
    format: LogFormat,
    banks: Vec<HashAlg>,
    buf: Vec<u8>,
    events: usize,
}

impl LogWriter {
    /// A crypto-agile log recording `banks` (in that order), starting with its Spec ID header.
    pub fn crypto_agile(banks: &[HashAlg]) -> Result<Self, EventLogError> {
        Self::crypto_agile_with(banks, &[])
    }

    /// [`LogWriter::crypto_agile`] with `vendor_info` in the Spec ID event (see
    /// [`encode_spec_id_header_with`]).
    pub fn crypto_agile_with(banks: &[HashAlg], vendor_info: &[u8]) -> Result<Self, EventLogError> {
        let buf = encode_spec_id_header_with(banks, vendor_info)?;
        Ok(LogWriter { format: LogFormat::CryptoAgile, banks: banks.to_vec(), buf, events: 0 })
    }

    /// A legacy SHA-1 log (no header).
    pub fn legacy_sha1() -> Self {
        LogWriter { format: LogFormat::LegacySha1, banks: vec![HashAlg::Sha1], buf: Vec::new(), events: 0 }
    }

    /// The format being written.
    pub fn format(&self) -> LogFormat {
        self.format
    }

    /// The banks each event carries a digest for.
    pub fn banks(&self) -> &[HashAlg] {
        &self.banks
    }

    /// Appends an event with explicit digests, which must cover exactly the writer's banks.
    pub fn event(
        &mut self,
        pcr: PcrIndex,
        event_type: EventType,
        digests: &[(HashAlg, Vec<u8>)],
        data: &[u8],
    ) -> Result<(), EventLogError> {
        if self.events >= MAX_EVENTS {
            return Err(EventLogError::Write { reason: "the log already holds the maximum number of events" });
        }
        let given: BTreeSet<HashAlg> = digests.iter().map(|(a, _)| *a).collect();
        let wanted: BTreeSet<HashAlg> = self.banks.iter().copied().collect();
        if given != wanted || digests.len() != self.banks.len() {
            return Err(EventLogError::Write { reason: "digests do not cover exactly the log's banks" });
        }
        let bytes = match self.format {
            LogFormat::CryptoAgile => encode_event2(pcr, event_type, digests, data)?,
            LogFormat::LegacySha1 => {
                check_data(data)?;
                let d = digests.first().map(|(_, d)| d.as_slice()).unwrap_or_default();
                let sha1: [u8; 20] = d.try_into().map_err(|_| PcrError::WrongSize {
                    what: "digest",
                    alg: HashAlg::Sha1,
                    expected: 20,
                    got: d.len(),
                })?;
                encode_legacy_event(pcr.get(), event_type, &sha1, data)
            }
        };
        self.buf.extend_from_slice(&bytes);
        self.events += 1;
        Ok(())
    }

    /// Appends an event that measures `measured` (digest per bank = H(`measured`)) with event data `data`,
    /// and returns the digests.
    pub fn measure(
        &mut self,
        pcr: PcrIndex,
        event_type: EventType,
        measured: &[u8],
        data: &[u8],
    ) -> Result<Vec<(HashAlg, Vec<u8>)>, EventLogError> {
        let digests: Vec<(HashAlg, Vec<u8>)> = self.banks.iter().map(|a| (*a, a.digest(measured))).collect();
        self.event(pcr, event_type, &digests, data)?;
        Ok(digests)
    }

    /// Appends an `EV_NO_ACTION` event (zero digests, never extended) with `data`.
    pub fn no_action(&mut self, pcr: PcrIndex, data: &[u8]) -> Result<(), EventLogError> {
        let digests: Vec<(HashAlg, Vec<u8>)> = self.banks.iter().map(|a| (*a, a.zero_digest())).collect();
        self.event(pcr, EventType::NO_ACTION, &digests, data)
    }

    /// Appends a StartupLocality event (PCR 0, `EV_NO_ACTION`). Must precede any event extending PCR 0.
    pub fn startup_locality(&mut self, locality: u8) -> Result<(), EventLogError> {
        if locality > MAX_LOCALITY {
            return Err(PcrError::Locality(locality).into());
        }
        let mut data = STARTUP_LOCALITY_SIGNATURE.to_vec();
        data.push(locality);
        self.no_action(PcrIndex::checked(0).ok_or(PcrError::IndexOutOfRange(0))?, &data)
    }

    /// The log so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The finished log.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(n: u32) -> PcrIndex {
        PcrIndex::new(n).unwrap()
    }

    /// A crypto-agile log over all three banks touching several PCRs, with informational events mixed in.
    pub(crate) fn sample_agile() -> Vec<u8> {
        let mut w = LogWriter::crypto_agile(&[HashAlg::Sha256, HashAlg::Sha1, HashAlg::Sha384]).unwrap();
        w.startup_locality(3).unwrap();
        w.measure(p(0), EventType::S_CRTM_VERSION, b"firmware 1.0", b"\x31\x00").unwrap();
        w.measure(p(0), EventType::POST_CODE, b"post", b"POST CODE").unwrap();
        w.no_action(p(0), b"some vendor note").unwrap();
        w.measure(p(7), EventType::EFI_VARIABLE_DRIVER_CONFIG, b"SecureBoot=1", b"sb").unwrap();
        for pcr in 0..8 {
            w.measure(p(pcr), EventType::SEPARATOR, &[0, 0, 0, 0], &[0, 0, 0, 0]).unwrap();
        }
        w.measure(p(4), EventType::EFI_BOOT_SERVICES_APPLICATION, b"uki image", b"\\EFI\\Linux\\uki.efi").unwrap();
        w.measure(p(15), EventType::IPL, b"runtime", b"bulwark").unwrap();
        w.into_bytes()
    }

    pub(crate) fn sample_legacy() -> Vec<u8> {
        let mut w = LogWriter::legacy_sha1();
        w.measure(p(0), EventType::S_CRTM_VERSION, b"bios 2.3", b"v").unwrap();
        w.no_action(p(0), b"not extended").unwrap();
        w.measure(p(2), EventType::POST_CODE, b"option rom", b"").unwrap();
        w.measure(p(4), EventType::IPL, b"mbr", b"boot").unwrap();
        w.measure(p(0), EventType::SEPARATOR, &[0; 4], &[0; 4]).unwrap();
        w.into_bytes()
    }

    /// An independent replay: extends by hand with the pcr module, from the writer's inputs.
    fn chain(alg: HashAlg, init: Vec<u8>, measured: &[&[u8]]) -> Vec<u8> {
        measured.iter().fold(init, |v, m| crate::pcr::extend(alg, &v, &alg.digest(m)).unwrap())
    }

    #[test]
    fn vendor_info_is_written_in_the_spec_id_event_and_capped() {
        let w = LogWriter::crypto_agile_with(&[HashAlg::Sha256], b"vendor bytes").unwrap();
        let log = parse(w.as_bytes()).unwrap();
        assert_eq!(log.spec_id().unwrap().vendor_info, b"vendor bytes");
        assert!(log.events().is_empty());
        assert!(LogWriter::crypto_agile_with(&[HashAlg::Sha256], &[7; 255]).is_ok());
        let err = LogWriter::crypto_agile_with(&[HashAlg::Sha256], &[7; 256]).unwrap_err();
        assert!(
            matches!(err, EventLogError::TooLarge { field: "vendorInfoSize (writing)", value: 256, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn crypto_agile_round_trip_and_replay() {
        let bytes = sample_agile();
        let log = parse(&bytes).unwrap();
        assert_eq!(log.format(), LogFormat::CryptoAgile);
        assert_eq!(log.banks(), vec![HashAlg::Sha256, HashAlg::Sha1, HashAlg::Sha384]);
        assert_eq!(log.startup_locality(), Some(3));
        assert_eq!(log.events().len(), 2 + 1 + 1 + 1 + 8 + 2);
        assert!(log.unsupported_algorithms().is_empty());
        let spec = log.spec_id().unwrap();
        assert_eq!((spec.spec_version_major, spec.uintn_size), (2, 2));
        assert_eq!(log.events()[0].offset, encode_spec_id_header(&log.banks()).unwrap().len());

        let values = log.replay().unwrap();
        assert_eq!(values.len(), 3);
        for (alg, pcrs) in &values {
            let touched: Vec<u32> = pcrs.keys().copied().collect();
            assert_eq!(touched, vec![0, 1, 2, 3, 4, 5, 6, 7, 15]);
            let mut loc3 = alg.zero_digest();
            *loc3.last_mut().unwrap() = 3;
            let sep: &[u8] = &[0, 0, 0, 0];
            assert_eq!(pcrs[&0], chain(*alg, loc3, &[b"firmware 1.0", b"post", sep]));
            assert_eq!(pcrs[&1], chain(*alg, alg.zero_digest(), &[sep]));
            assert_eq!(pcrs[&7], chain(*alg, alg.zero_digest(), &[b"SecureBoot=1", sep]));
            assert_eq!(pcrs[&4], chain(*alg, alg.zero_digest(), &[sep, b"uki image"]));
            assert_eq!(pcrs[&15], chain(*alg, alg.zero_digest(), &[b"runtime"]));
        }

        // Writing the parsed events back gives the same bytes.
        let mut w = LogWriter::crypto_agile(&log.banks()).unwrap();
        for ev in log.events() {
            let d: Vec<(HashAlg, Vec<u8>)> = ev.digests.iter().map(|d| (d.alg().unwrap(), d.bytes.clone())).collect();
            w.event(ev.pcr, ev.event_type, &d, &ev.data).unwrap();
        }
        assert_eq!(w.into_bytes(), bytes);
    }

    #[test]
    fn legacy_round_trip_and_replay() {
        let bytes = sample_legacy();
        let log = parse(&bytes).unwrap();
        assert_eq!(log.format(), LogFormat::LegacySha1);
        assert_eq!(log.banks(), vec![HashAlg::Sha1]);
        assert_eq!(log.events().len(), 5);
        assert_eq!(log.startup_locality(), None);
        let values = log.replay().unwrap();
        let sha1 = &values[&HashAlg::Sha1];
        assert_eq!(sha1.keys().copied().collect::<Vec<_>>(), vec![0, 2, 4]);
        let z = HashAlg::Sha1.zero_digest();
        assert_eq!(sha1[&0], chain(HashAlg::Sha1, z.clone(), &[b"bios 2.3", &[0; 4]]));
        assert_eq!(sha1[&2], chain(HashAlg::Sha1, z.clone(), &[b"option rom"]));
        assert_eq!(sha1[&4], chain(HashAlg::Sha1, z, &[b"mbr"]));
        let mut w = LogWriter::legacy_sha1();
        for ev in log.events() {
            w.event(ev.pcr, ev.event_type, &[(HashAlg::Sha1, ev.digests[0].bytes.clone())], &ev.data).unwrap();
        }
        assert_eq!(w.into_bytes(), bytes);
    }

    #[test]
    fn json_shape() {
        let log = parse(&sample_legacy()).unwrap();
        let json = pcr_values_json(&log.replay().unwrap());
        let obj = json.as_object().unwrap();
        assert_eq!(obj.keys().collect::<Vec<_>>(), vec!["sha1"]);
        let sha1 = obj["sha1"].as_object().unwrap();
        assert_eq!(sha1.len(), 3);
        let v = sha1["4"].as_str().unwrap();
        assert_eq!(v, hex::encode(crate::pcr::extend(HashAlg::Sha1, &[0; 20], &HashAlg::Sha1.digest(b"mbr")).unwrap()));
        let agile = pcr_values_json(&parse(&sample_agile()).unwrap().replay().unwrap());
        let names: Vec<&String> = agile.as_object().unwrap().keys().collect();
        assert_eq!(names.len(), 3);
        for n in ["sha1", "sha256", "sha384"] {
            assert!(agile[n]["15"].is_string());
        }
    }

    /// Offsets of each event start in a parsed log, plus the end: the only places a log may end.
    fn boundaries(bytes: &[u8]) -> Vec<usize> {
        let log = parse(bytes).unwrap();
        let mut b: Vec<usize> = log.events().iter().map(|e| e.offset).collect();
        b.push(bytes.len());
        b
    }

    #[test]
    fn truncation_at_every_offset_is_an_error_unless_at_an_event_boundary() {
        for bytes in [sample_agile(), sample_legacy()] {
            let ok_at = boundaries(&bytes);
            for cut in 0..bytes.len() {
                let r = parse(&bytes[..cut]);
                // A crypto-agile log cut right after its header is a valid empty log; a legacy log cut at an
                // event boundary is a shorter valid log.
                if ok_at.contains(&cut) && cut > 0 {
                    let log = r.unwrap_or_else(|e| panic!("cut at boundary {cut}: {e}"));
                    assert!(log.events().len() < parse(&bytes).unwrap().events().len());
                } else {
                    let e = r.expect_err(&format!("cut at {cut} must fail"));
                    if cut > 0 {
                        assert!(
                            matches!(e, EventLogError::Truncated { .. } | EventLogError::SpecId { .. }),
                            "cut at {cut}: {e}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn trailing_garbage_is_rejected_with_its_offset() {
        for bytes in [sample_agile(), sample_legacy()] {
            for extra in 1..40 {
                let mut b = bytes.clone();
                b.extend(std::iter::repeat_n(0xFFu8, extra));
                let e = parse(&b).unwrap_err();
                let offset = match e {
                    EventLogError::Truncated { offset, .. }
                    | EventLogError::PcrIndex { offset, .. }
                    | EventLogError::TooLarge { offset, .. } => offset,
                    other => panic!("unexpected error {other}"),
                };
                assert!(offset >= bytes.len(), "error {e} points inside the valid part");
            }
        }
        // Zero padding after a crypto-agile log: a zero digest count is caught. (In a legacy log, 32 zero
        // bytes are a well-formed EV_PREBOOT_CERT event; the format cannot tell them from padding.)
        let mut b = sample_agile();
        let len = b.len();
        b.extend([0u8; 64]);
        assert_eq!(parse(&b), Err(EventLogError::DigestCount { offset: len + 8, expected: 3, got: 0 }));
    }

    /// Offset of the first event after the header in the agile sample.
    fn first_event(bytes: &[u8]) -> usize {
        parse(bytes).unwrap().events()[0].offset
    }

    fn put_u32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn absurd_counts_and_sizes() {
        let good = sample_agile();
        let ev = first_event(&good);
        // Spec ID numberOfAlgorithms sits at header(32) + signature(16) + 4 + 4.
        let n_algs = LEGACY_HEADER + 16 + 8;
        for (at, v, want) in [
            (ev + 8, u32::MAX, "digest count"),
            (ev + 8, 17, "digest count"),
            (n_algs, 0xFFFF_FFFF, "numberOfAlgorithms"),
            (28, u32::MAX, "eventSize"),
        ] {
            let mut b = good.clone();
            put_u32(&mut b, at, v);
            match parse(&b) {
                Err(EventLogError::TooLarge { field, offset, .. }) => {
                    assert_eq!(field, want);
                    assert_eq!(offset, at);
                }
                other => panic!("patch at {at}: {other:?}"),
            }
        }
        // Event size of the last event set huge: too large; set slightly bigger than what remains: truncated.
        let log = parse(&good).unwrap();
        let last = log.events().last().unwrap();
        let size_at = good.len() - last.data.len() - 4;
        let mut b = good.clone();
        put_u32(&mut b, size_at, 0x7FFF_FFFF);
        assert!(matches!(parse(&b), Err(EventLogError::TooLarge { field: "eventSize", .. })));
        let mut b = good.clone();
        put_u32(&mut b, size_at, u32::try_from(last.data.len()).unwrap() + 1);
        assert!(matches!(parse(&b), Err(EventLogError::Truncated { field: "event data", .. })));
        // A digest count that is sane but wrong.
        let mut b = good.clone();
        put_u32(&mut b, ev + 8, 2);
        assert_eq!(parse(&b), Err(EventLogError::DigestCount { offset: ev + 8, expected: 3, got: 2 }));
        // PCR index out of range.
        let mut b = good.clone();
        put_u32(&mut b, ev, 24);
        assert_eq!(parse(&b), Err(EventLogError::PcrIndex { offset: ev, index: 24 }));
        // Legacy: the first event's size made huge.
        let mut b = sample_legacy();
        put_u32(&mut b, 28, u32::MAX);
        assert!(matches!(parse(&b), Err(EventLogError::TooLarge { offset: 28, .. })));
    }

    /// (pcrIndex, eventType, [(algId, digest)], event data), written as-is.
    type RawEvent = (u32, u32, Vec<(u16, Vec<u8>)>, Vec<u8>);

    /// Builds a crypto-agile log by hand with arbitrary algorithm declarations and digests.
    fn raw_agile(decl: &[(u16, u16)], events: &[RawEvent]) -> Vec<u8> {
        let mut spec = SPEC_ID_SIGNATURE.to_vec();
        spec.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 2]);
        spec.extend_from_slice(&u32::try_from(decl.len()).unwrap().to_le_bytes());
        for (id, size) in decl {
            spec.extend_from_slice(&id.to_le_bytes());
            spec.extend_from_slice(&size.to_le_bytes());
        }
        spec.push(0);
        let mut out = encode_legacy_event(0, EventType::NO_ACTION, &[0; 20], &spec);
        for (pcr, ty, digests, data) in events {
            out.extend_from_slice(&pcr.to_le_bytes());
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&u32::try_from(digests.len()).unwrap().to_le_bytes());
            for (id, d) in digests {
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(d);
            }
            out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
            out.extend_from_slice(data);
        }
        out
    }

    #[test]
    fn unknown_algorithm_with_spec_id_size_is_parsed_and_skipped_in_replay() {
        let sha256 = HashAlg::Sha256.digest(b"x");
        let bytes = raw_agile(
            &[(0x000B, 32), (0x000D, 64)],
            &[(8, EventType::IPL.0, vec![(0x000D, vec![7; 64]), (0x000B, sha256.clone())], b"data".to_vec())],
        );
        let log = parse(&bytes).unwrap();
        assert_eq!(log.banks(), vec![HashAlg::Sha256]);
        assert_eq!(log.unsupported_algorithms(), vec![0x000D]);
        let values = log.replay().unwrap();
        assert_eq!(values.len(), 1);
        assert_eq!(values[&HashAlg::Sha256][&8], crate::pcr::extend(HashAlg::Sha256, &[0; 32], &sha256).unwrap());
    }

    #[test]
    fn unknown_algorithm_without_spec_id_size_is_an_error() {
        let bytes = raw_agile(&[(0x000B, 32)], &[(8, EventType::IPL.0, vec![(0x0012, vec![0; 32])], Vec::new())]);
        let header = raw_agile(&[(0x000B, 32)], &[]).len();
        assert_eq!(parse(&bytes), Err(EventLogError::UnknownAlgorithm { offset: header + 12, id: 0x0012 }));
    }

    #[test]
    fn spec_id_problems() {
        // Known algorithm declared with the wrong size.
        let e = parse(&raw_agile(&[(0x000B, 20)], &[])).unwrap_err();
        assert!(matches!(e, EventLogError::DigestSize { id: 0x000B, declared: 20, expected: 32, .. }), "{e}");
        // Unknown algorithm declared with an absurd size.
        assert!(matches!(parse(&raw_agile(&[(0x00AA, 4096)], &[])), Err(EventLogError::TooLarge { .. })));
        assert!(matches!(parse(&raw_agile(&[(0x00AA, 0)], &[])), Err(EventLogError::TooLarge { .. })));
        // Duplicate declaration.
        assert!(matches!(
            parse(&raw_agile(&[(0x000B, 32), (0x000B, 32)], &[])),
            Err(EventLogError::DuplicateAlgorithm { id: 0x000B, .. })
        ));
        // No algorithms.
        assert!(matches!(parse(&raw_agile(&[], &[])), Err(EventLogError::SpecId { .. })));
        // Duplicate digest in an event.
        let d = vec![0u8; 32];
        let e = parse(&raw_agile(
            &[(0x000B, 32), (0x000D, 64)],
            &[(1, 1, vec![(0x000B, d.clone()), (0x000B, d)], Vec::new())],
        ))
        .unwrap_err();
        assert!(matches!(e, EventLogError::DuplicateAlgorithm { id: 0x000B, .. }), "{e}");
        // Header not in PCR 0.
        let mut b = raw_agile(&[(0x000B, 32)], &[]);
        put_u32(&mut b, 0, 1);
        assert!(matches!(parse(&b), Err(EventLogError::SpecId { offset: 0, .. })));
        // Trailing bytes inside the Spec ID event.
        let mut b = raw_agile(&[(0x000B, 32)], &[]);
        b.push(0);
        let size = u32::from_le_bytes(b[28..32].try_into().unwrap()) + 1;
        put_u32(&mut b, 28, size);
        assert!(matches!(parse(&b), Err(EventLogError::SpecId { reason: "trailing bytes after vendorInfo", .. })));
        // Major version 1.
        let mut b = raw_agile(&[(0x000B, 32)], &[]);
        b[LEGACY_HEADER + 16 + 5] = 1;
        assert!(matches!(parse(&b), Err(EventLogError::SpecId { reason: "specVersionMajor is not 2", .. })));
    }

    #[test]
    fn startup_locality_rules() {
        let banks = [HashAlg::Sha256];
        // After an extend of PCR 0.
        let mut w = LogWriter::crypto_agile(&banks).unwrap();
        w.measure(p(0), EventType::POST_CODE, b"x", b"").unwrap();
        w.startup_locality(3).unwrap();
        assert!(matches!(
            parse(w.as_bytes()),
            Err(EventLogError::StartupLocality { reason: "comes after PCR 0 was extended", .. })
        ));
        // Twice.
        let mut w = LogWriter::crypto_agile(&banks).unwrap();
        w.startup_locality(3).unwrap();
        w.startup_locality(3).unwrap();
        assert!(matches!(parse(w.as_bytes()), Err(EventLogError::StartupLocality { reason: "appears twice", .. })));
        // Not in PCR 0, or a bad locality, or a bad length.
        let mut w = LogWriter::crypto_agile(&banks).unwrap();
        w.no_action(p(1), b"StartupLocality\0\x03").unwrap();
        assert!(matches!(parse(w.as_bytes()), Err(EventLogError::StartupLocality { .. })));
        let mut w = LogWriter::crypto_agile(&banks).unwrap();
        w.no_action(p(0), b"StartupLocality\0\x09").unwrap();
        assert!(matches!(parse(w.as_bytes()), Err(EventLogError::StartupLocality { reason: "locality above 4", .. })));
        let mut w = LogWriter::crypto_agile(&banks).unwrap();
        w.no_action(p(0), b"StartupLocality\0\x03\x00").unwrap();
        assert!(matches!(parse(w.as_bytes()), Err(EventLogError::StartupLocality { .. })));
        // Locality 0 is valid and leaves PCR 0 at zero, but PCR 0 is reported.
        let mut w = LogWriter::crypto_agile(&banks).unwrap();
        w.startup_locality(0).unwrap();
        let v = parse(w.as_bytes()).unwrap().replay().unwrap();
        assert_eq!(v[&HashAlg::Sha256][&0], vec![0; 32]);
        // Only a header: a valid log with no PCR touched.
        let v = parse(&encode_spec_id_header(&banks).unwrap()).unwrap().replay().unwrap();
        assert!(v[&HashAlg::Sha256].is_empty());
    }

    #[test]
    fn writer_rejects_bad_input() {
        let mut w = LogWriter::crypto_agile(&[HashAlg::Sha256, HashAlg::Sha1]).unwrap();
        assert!(w.event(p(1), EventType::IPL, &[(HashAlg::Sha256, vec![0; 32])], b"").is_err());
        assert!(
            w.event(p(1), EventType::IPL, &[(HashAlg::Sha256, vec![0; 32]), (HashAlg::Sha1, vec![0; 32])], b"")
                .is_err()
        );
        assert!(
            w.event(p(1), EventType::IPL, &[(HashAlg::Sha256, vec![0; 32]), (HashAlg::Sha256, vec![0; 32])], b"")
                .is_err()
        );
        assert!(w.measure(p(1), EventType::IPL, b"", &vec![0; MAX_EVENT_DATA_SIZE + 1]).is_err());
        assert!(LogWriter::crypto_agile(&[]).is_err());
        assert!(LogWriter::crypto_agile(&[HashAlg::Sha1, HashAlg::Sha1]).is_err());
        assert!(w.startup_locality(5).is_err());
        assert_eq!(parse(w.as_bytes()).unwrap().events().len(), 0, "failed writes leave no partial event");
        let mut l = LogWriter::legacy_sha1();
        assert!(l.event(p(1), EventType::IPL, &[(HashAlg::Sha256, vec![0; 32])], b"").is_err());
    }

    #[test]
    fn empty_and_oversized_inputs() {
        assert_eq!(parse(&[]), Err(EventLogError::Empty));
        let big = vec![0u8; MAX_LOG_SIZE + 1];
        assert_eq!(parse(&big), Err(EventLogError::LogTooLarge { len: MAX_LOG_SIZE + 1, max: MAX_LOG_SIZE }));
    }

    #[test]
    fn event_type_names() {
        assert_eq!(EventType::NO_ACTION.to_string(), "EV_NO_ACTION");
        assert_eq!(EventType(0x8000_00E0).to_string(), "EV_EFI_VARIABLE_AUTHORITY");
        assert_eq!(EventType(0x1234_5678).to_string(), "0x12345678");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(log) = parse(&bytes) {
                // Whatever parses must replay without error.
                prop_assert!(log.replay().is_ok());
            }
        }

        #[test]
        fn mutated_valid_logs_never_panic(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            legacy in any::<bool>(),
        ) {
            let mut bytes = if legacy { sample_legacy() } else { sample_agile() };
            for (i, v) in flips {
                let at = i.index(bytes.len());
                bytes[at] = v;
            }
            if let Ok(log) = parse(&bytes) {
                prop_assert!(log.replay().is_ok());
            }
        }

        #[test]
        fn written_logs_round_trip(
            events in proptest::collection::vec((0u32..24, any::<u32>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..20),
            banks in proptest::sample::subsequence(HashAlg::ALL.to_vec(), 1..=3),
        ) {
            let mut w = LogWriter::crypto_agile(&banks).unwrap();
            let mut model: BTreeMap<HashAlg, PcrBank> = banks.iter().map(|a| (*a, PcrBank::new(*a))).collect();
            for (pcr, ty, data) in &events {
                let ty = if *ty == EventType::NO_ACTION.0 { 0 } else { *ty };
                w.measure(p(*pcr), EventType(ty), data, data).unwrap();
                for bank in model.values_mut() {
                    bank.measure(p(*pcr), data);
                }
            }
            let log = parse(w.as_bytes()).unwrap();
            prop_assert_eq!(log.events().len(), events.len());
            let values = log.replay().unwrap();
            for (alg, bank) in &model {
                let expect: BTreeMap<u32, Vec<u8>> = bank.touched().map(|p| (p.get(), bank.get(p).to_vec())).collect();
                prop_assert_eq!(&values[alg], &expect);
            }
        }
    }
}
