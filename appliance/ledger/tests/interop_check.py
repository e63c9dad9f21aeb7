#!/usr/bin/env python3
"""Independent check of Bulwark ledger signatures and receipts with pyca/cryptography (>= 48).

Usage: interop_check.py DIR
DIR holds: tenant.pub.pem, seed.hex, *.tlog-proof (receipts written by the Rust test).
Checks, written from docs/FORMATS.md only:
  - the public key derived from the seed by pyca equals the Rust key (FIPS 204 KeyGen interop);
  - every receipt: tlog-proof syntax, the checkpoint's signed-note key ID, the ML-DSA-65 signature over
    the note text with context "bulwark/oar/v1/<tenant>", the RFC 6962 inclusion proof, the entry's
    magic, version and tenant binding;
  - the signature does not verify under another tenant's context;
Writes py_note.txt: a checkpoint note over the last receipt's body, signed by pyca, for Rust to verify.
Exit 0 on success; prints the failing check otherwise.
"""
import base64
import hashlib
import pathlib
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mldsa

SIG_TYPE = b"\xff" + b"bulwark/ml-dsa-65/v1"
DASH = "\u2014 "


def b64(s):
    raw = base64.b64decode(s, validate=True)
    assert base64.b64encode(raw).decode() == s, "non-canonical base64"
    return raw


def node(l, r):
    return hashlib.sha256(b"\x01" + l + r).digest()


def verify_inclusion(index, size, leaf, proof, root):
    # RFC 9162 section 2.1.3.2
    assert index < size
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        assert sn != 0, "proof too long"
        if fn & 1 or fn == sn:
            r = node(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    assert sn == 0, "proof too short"
    assert r == root, "inclusion proof does not reach the root"


def parse_note(text, pk_raw):
    split = text.rindex("\n\n")
    body = text[: split + 1]
    lines = body[:-1].split("\n")
    assert len(lines) == 3
    origin, size, root = lines[0], int(lines[1]), b64(lines[2])
    sigs = text[split + 2 :].rstrip("\n").split("\n")
    assert len(sigs) == 1 and sigs[0].startswith(DASH)
    name, blob = sigs[0][len(DASH) :].split(" ")
    blob = b64(blob)
    assert name == origin
    key_id = hashlib.sha256(name.encode() + b"\n" + SIG_TYPE + pk_raw).digest()[:4]
    assert blob[:4] == key_id, "key ID mismatch"
    return body, origin, size, root, blob[4:]


def main(d):
    d = pathlib.Path(d)
    pk = serialization.load_pem_public_key((d / "tenant.pub.pem").read_bytes())
    assert isinstance(pk, mldsa.MLDSA65PublicKey)
    pk_raw = pk.public_bytes_raw()
    sk = mldsa.MLDSA65PrivateKey.from_seed_bytes(bytes.fromhex((d / "seed.hex").read_text().strip()))
    assert sk.public_key().public_bytes_raw() == pk_raw, "keygen from the seed differs"
    receipts = sorted(d.glob("*.tlog-proof"))
    assert receipts, "no receipts"
    for rp in receipts:
        text = rp.read_text()
        head, checkpoint = text.split("\n\n", 1)
        hl = head.split("\n")
        assert hl[0] == "c2sp.org/tlog-proof@v1"
        assert hl[1].startswith("extra ") and hl[2].startswith("index ")
        entry = b64(hl[1][6:])
        index = int(hl[2][6:])
        proof = [b64(x) for x in hl[3:]]
        body, origin, size, root, sig = parse_note(checkpoint, pk_raw)
        tenant = origin.rsplit("/", 1)[1]
        assert origin == "bulwark.ledger/tenant/" + tenant
        ctx = ("bulwark/oar/v1/" + tenant).encode()
        pk.verify(sig, body.encode(), ctx)
        try:
            pk.verify(sig, body.encode(), ("bulwark/oar/v1/" + "0" * 32).encode())
            raise AssertionError("signature verified under another tenant's context")
        except InvalidSignature:
            pass
        verify_inclusion(index, size, hashlib.sha256(b"\x00" + entry).digest(), proof, root)
        assert entry[:14] == b"bulwark.entry\x01", "entry magic/version"
        assert entry[14] in (0, 1), "entry kind"
        assert entry[15] == 0 and entry[16:32] == bytes.fromhex(tenant), "entry not bound to the tenant"
        print(f"ok {rp.name}: index {index} in size {size}, kind {'OAR' if entry[14] == 0 else 'outcome'}")
    # pyca signs a note for the Rust side to verify.
    py_sig = sk.sign(body.encode(), ctx)
    key_id = hashlib.sha256(origin.encode() + b"\n" + SIG_TYPE + pk_raw).digest()[:4]
    note = body + "\n" + DASH + origin + " " + base64.b64encode(key_id + py_sig).decode() + "\n"
    (d / "py_note.txt").write_text(note)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
