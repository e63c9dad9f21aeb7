//! AEAD throughput at 1 MiB on one core: AES-256-GCM-SIV as the vault uses it, sealed by the `aes-gcm-siv`
//! crate (random 96-bit nonce, associated data, ciphertext returned in a new `Vec` by `Aead::encrypt`) and
//! opened by `aws-lc-rs` (from the stored bytes into a new zeroed `Vec`), plus `aes-gcm-siv`'s own decrypt
//! and its allocation-free in-place API for comparison.
//!
//! The crate picks its backends at run time (the `cpufeatures` crate reads CPUID): AES-NI for AES when
//! the CPU has `aes`, CLMUL for POLYVAL when it has `pclmulqdq`; the bench prints what this CPU reports.
//! To see where the time goes without other crates, two more lines isolate the parts of RFC 8452:
//! an encryption of an empty message with 1 MiB of associated data is POLYVAL over 1 MiB and nothing
//! else of size; AES-128-GCM-SIV (10 AES rounds instead of 14) shows how much the AES-CTR part weighs.
//!
//! Each line gives two throughputs: per CPU-second of this thread (what one core delivers, from
//! `/proc/thread-self/schedstat`) and per wall-clock second (lower when other processes share the cores).
//!
//! Run: `cargo bench -p bulwark-appliance --bench aead`. 1 GB = 10^9 bytes.

mod common;

use std::time::{Duration, Instant};

use aes_gcm_siv::aead::{Aead, AeadInOut, KeyInit, Payload};
use aes_gcm_siv::{Aes128GcmSiv, Aes256GcmSiv, Nonce};
use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, LessSafeKey, UnboundKey};
use common::{BoxErr, stats, thread_cpu_time};
use rand::RngCore;

const LEN: usize = 1 << 20;
const OPS_PER_REP: u32 = 128;
const REPS: usize = 11;

/// GB/s for one rep of `OPS_PER_REP` MiB in `d`.
fn gbps(d: Duration) -> f64 {
    f64::from(OPS_PER_REP) * 1_048_576.0 / d.as_secs_f64() / 1e9
}

/// Median throughputs of one operation: (per CPU-second, per wall second).
fn run(label: &str, mut op: impl FnMut() -> Result<(), BoxErr>) -> Result<(f64, f64), BoxErr> {
    for _ in 0..8 {
        op()?;
    }
    let (mut wall, mut cpu) = (Vec::with_capacity(REPS), Vec::with_capacity(REPS));
    for _ in 0..REPS {
        let c0 = thread_cpu_time()?;
        let t = Instant::now();
        for _ in 0..OPS_PER_REP {
            op()?;
        }
        wall.push(t.elapsed());
        cpu.push(thread_cpu_time()?.saturating_sub(c0));
    }
    let (sw, sc) = (stats(&wall)?, stats(&cpu)?);
    println!(
        "{label:<56} per CPU-s {:>5.3} GB/s (best {:.3})   wall {:>5.3} GB/s (best {:.3}, worst {:.3})",
        gbps(sc.median),
        gbps(sc.min),
        gbps(sw.median),
        gbps(sw.min),
        gbps(sw.max)
    );
    Ok((gbps(sc.median), gbps(sw.median)))
}

fn main() -> Result<(), BoxErr> {
    let mut key = [0u8; 32];
    let mut nonce = [0u8; 12];
    let mut msg = vec![0u8; LEN];
    rand::rngs::OsRng.fill_bytes(&mut key);
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    rand::rngs::OsRng.fill_bytes(&mut msg);
    // Associated data shaped like the vault's: label, tenant id, key length, key, version.
    let mut aad = b"bulwark/vault/record/v1\0".to_vec();
    aad.extend_from_slice(&[9u8; 16 + 4 + 8 + 8]);
    let nonce = Nonce::from(nonce);

    println!(
        "aead bench: AES-256-GCM-SIV (aes-gcm-siv 0.12.1 with aes 0.9.4 and polyval 0.7.3; aws-lc-rs 1.19.0), 1 MiB \
         messages, one thread, {REPS} reps of {OPS_PER_REP} x 1 MiB per line (medians)"
    );
    println!("{}", common::machine_report());
    println!(
        "runtime CPU detection: aes={} pclmulqdq={} vaes={} (aes 0.9 takes AES-NI, or VAES when present; polyval \
         0.7 its CLMUL path)",
        std::arch::is_x86_feature_detected!("aes"),
        std::arch::is_x86_feature_detected!("pclmulqdq"),
        std::arch::is_x86_feature_detected!("vaes")
    );

    let ct = Aes256GcmSiv::new(&key.into()).encrypt(&nonce, Payload { msg: &msg, aad: &aad }).map_err(|_| "encrypt")?;
    let (enc, enc_wall) = run("seal as the vault does (aes-gcm-siv, new Vec)", || {
        let c = Aes256GcmSiv::new(&key.into());
        let out = c.encrypt(&nonce, Payload { msg: &msg, aad: &aad }).map_err(|_| "encrypt")?;
        std::hint::black_box(out);
        Ok(())
    })?;
    let opener = LessSafeKey::new(UnboundKey::new(&AES_256_GCM_SIV, &key).map_err(|_| "aws-lc key")?);
    let (ct_body, ct_tag) = ct.split_at(LEN);
    let (dec, dec_wall) = run("open as the vault does (aws-lc-rs, new zeroed Vec)", || {
        let mut out = vec![0u8; LEN];
        let n = aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce.into());
        opener.open_separate_gather(n, Aad::from(&aad[..]), ct_body, ct_tag, &mut out).map_err(|_| "open")?;
        std::hint::black_box(out);
        Ok(())
    })?;
    run("decrypt with aes-gcm-siv (new Vec)", || {
        let c = Aes256GcmSiv::new(&key.into());
        let out = c.decrypt(&nonce, Payload { msg: &ct, aad: &aad }).map_err(|_| "decrypt")?;
        std::hint::black_box(out);
        Ok(())
    })?;
    let cipher = Aes256GcmSiv::new(&key.into());
    let mut buf = msg.clone();
    run("encrypt in place (one cipher, no allocation)", || {
        let tag = cipher.encrypt_inout_detached(&nonce, &aad, buf.as_mut_slice().into()).map_err(|_| "encrypt")?;
        std::hint::black_box(tag);
        Ok(())
    })?;
    // Decrypting in place consumes the ciphertext, so each op first copies it back (1 MiB memcpy, counted).
    let ct_tag = aes_gcm_siv::Tag::try_from(ct_tag).map_err(|_| "tag length")?;
    let mut work = ct_body.to_vec();
    run("decrypt in place (copy-in + decrypt, no allocation)", || {
        work.copy_from_slice(ct_body);
        cipher.decrypt_inout_detached(&nonce, &aad, work.as_mut_slice().into(), &ct_tag).map_err(|_| "decrypt")?;
        Ok(())
    })?;
    if work != msg {
        return Err("in-place decrypt returned the wrong plaintext".into());
    }
    let (polyval, _) = run("part: POLYVAL only (empty message, 1 MiB as AAD)", || {
        let mut empty: [u8; 0] = [];
        let tag = cipher.encrypt_inout_detached(&nonce, &msg, empty.as_mut_slice().into()).map_err(|_| "encrypt")?;
        std::hint::black_box(tag);
        Ok(())
    })?;
    let key128: [u8; 16] = key[..16].try_into()?;
    let (enc128, _) = run("part: AES-128-GCM-SIV encrypt, as the vault does", || {
        let c = Aes128GcmSiv::new(&key128.into());
        let out = c.encrypt(&nonce, Payload { msg: &msg, aad: &aad }).map_err(|_| "encrypt")?;
        std::hint::black_box(out);
        Ok(())
    })?;
    // Seconds per GB add up: t(GCM-SIV) = t(POLYVAL) + t(AES-CTR) + small change.
    let ctr = 1.0 / (1.0 / enc - 1.0 / polyval);
    println!(
        "split of vault-style encrypt per CPU-s: POLYVAL alone {polyval:.3} GB/s, AES-256-CTR + rest by difference \
         {ctr:.3} GB/s; AES-128 variant {enc128:.3} GB/s"
    );
    let verdict = |x: f64| if x >= 1.0 { "met".to_string() } else { format!("MISSED by {:.0} %", (1.0 - x) * 100.0) };
    println!(
        "target >= 1 GB/s per core (per CPU-s): seal {enc:.3} GB/s {}, open {dec:.3} GB/s {}   \
         (wall: {enc_wall:.3} / {dec_wall:.3} GB/s)",
        verdict(enc),
        verdict(dec)
    );
    println!("load average at end: {}", common::load_average());
    Ok(())
}
