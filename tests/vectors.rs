//! The known-answer vectors in `tests/vectors/` are current, and they follow
//! from the byte encodings in `impl/crypto/README.md` alone: this file
//! re-derives them with the primitive crates (x25519-dalek, hkdf, hmac,
//! chacha20poly1305, ed25519-dalek, sha2), not with bluetick's own code.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn load(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn h(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap_or_else(|| panic!("not a hex string: {v}"))).unwrap()
}

fn h32(v: &Value) -> [u8; 32] {
    h(v).try_into().unwrap()
}

fn hkdf<const N: usize>(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    Hkdf::<Sha256>::new(Some(salt), ikm).expand(info, &mut out).unwrap();
    out
}

fn hmac(key: &[u8], data: &[&[u8]]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    for d in data {
        m.update(d);
    }
    m.finalize().into_bytes().into()
}

fn x25519(secret: &[u8; 32], public: &[u8; 32]) -> [u8; 32] {
    x25519_dalek::x25519(*secret, *public)
}

fn public_of(secret: &[u8; 32]) -> [u8; 32] {
    x25519_dalek::x25519(*secret, x25519_dalek::X25519_BASEPOINT_BYTES)
}

#[test]
fn committed_vectors_are_current() {
    for (name, content) in bluetick_crypto::vectors::all().unwrap() {
        let mut fresh = serde_json::to_string_pretty(&content).unwrap();
        fresh.push('\n');
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors").join(name);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == fresh,
            "{} is stale: run `cargo run --release -- vectors --out tests/vectors`",
            path.display()
        );
    }
}

/// The two suites differ only in labels, key encoding in AD and the message cipher.
struct Suite {
    x3dh_info: &'static [u8],
    ratchet_info: &'static [u8],
    compat: bool,
}

fn seal(suite: &Suite, mk: &[u8; 32], ad: &[u8], header: &[u8], pt: &[u8]) -> Vec<u8> {
    if suite.compat {
        use aes_cbc::*;
        let okm: [u8; 80] = hkdf(&[0; 32], mk, b"WhisperMessageKeys");
        let mut out = cbc_encrypt(&okm[..32], &okm[64..], pt);
        let tag = hmac(&okm[32..64], &[ad, header, &out]);
        out.extend_from_slice(&tag[..8]);
        out
    } else {
        let okm: [u8; 44] = hkdf(&[0; 32], mk, b"bluetick message v1");
        let aad = [ad, header].concat();
        ChaCha20Poly1305::new(okm[..32].into()).encrypt(okm[32..].into(), Payload { msg: pt, aad: &aad }).unwrap()
    }
}

/// AES-256-CBC from the `aes` block cipher, written out so the test depends on
/// no bluetick code for the compat suite either.
mod aes_cbc {
    use aes::cipher::{BlockEncrypt, KeyInit};

    pub fn cbc_encrypt(key: &[u8], iv: &[u8], pt: &[u8]) -> Vec<u8> {
        let cipher = aes::Aes256::new_from_slice(key).unwrap();
        let pad = 16 - pt.len() % 16;
        let mut data = pt.to_vec();
        data.extend(std::iter::repeat_n(pad as u8, pad));
        let mut prev: [u8; 16] = iv.try_into().unwrap();
        for block in data.chunks_mut(16) {
            for (b, p) in block.iter_mut().zip(prev) {
                *b ^= p;
            }
            let ga = aes::cipher::generic_array::GenericArray::from_mut_slice(block);
            cipher.encrypt_block(ga);
            prev.copy_from_slice(block);
        }
        data
    }
}

fn kdf_rk(suite: &Suite, rk: &[u8; 32], dh: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    let okm: [u8; 64] = hkdf(rk, dh, suite.ratchet_info);
    (okm[..32].try_into().unwrap(), okm[32..].try_into().unwrap())
}

struct Party {
    dhs_secret: [u8; 32],
    dhr: Option<[u8; 32]>,
    rk: [u8; 32],
    cks: Option<[u8; 32]>,
    ckr: Option<[u8; 32]>,
    ns: u32,
    nr: u32,
    pn: u32,
}

fn rederive_conversation(file: &str, suite: Suite) {
    let v = load(file);
    let enc = |k: &[u8; 32]| if suite.compat { [&[5u8][..], k].concat() } else { k.to_vec() };
    let ik_a = h32(&v["alice_identity"]["private"]);
    let ik_b = h32(&v["bob_identity"]["private"]);
    let spk = h32(&v["bob_signed_prekey"]["private"]);
    let opk = h32(&v["bob_one_time_prekey"]["private"]);
    let ek = h32(&v["alice_ephemeral"]["private"]);
    for (k, name) in [(ik_a, "alice_identity"), (ik_b, "bob_identity"), (spk, "bob_signed_prekey")] {
        assert_eq!(public_of(&k).to_vec(), h(&v[name]["public"]), "{name}");
    }
    let mut ikm = vec![0xffu8; 32];
    ikm.extend(x25519(&ik_a, &public_of(&spk)));
    ikm.extend(x25519(&ek, &public_of(&ik_b)));
    ikm.extend(x25519(&ek, &public_of(&spk)));
    ikm.extend(x25519(&ek, &public_of(&opk)));
    assert_eq!(ikm, h(&v["x3dh_ikm"]));
    let sk: [u8; 32] = if suite.compat {
        let okm: [u8; 64] = hkdf(&[0; 32], &ikm, suite.x3dh_info);
        okm[..32].try_into().unwrap()
    } else {
        hkdf(&[0; 32], &ikm, suite.x3dh_info)
    };
    assert_eq!(sk.to_vec(), h(&v["shared_secret"]));
    let ad = [enc(&public_of(&ik_a)), enc(&public_of(&ik_b))].concat();
    assert_eq!(ad, h(&v["associated_data"]));
    let mut header0 = [public_of(&ik_a), public_of(&ek)].concat();
    header0.extend(1u32.to_be_bytes());
    header0.push(1);
    header0.extend((v["bob_one_time_prekey_id"].as_u64().unwrap() as u32).to_be_bytes());
    assert_eq!(header0, h(&v["initial_header"]));

    let a_first = h32(&v["alice_first_ratchet_key"]["private"]);
    let (rk, cks) = kdf_rk(&suite, &sk, &x25519(&a_first, &public_of(&spk)));
    let mut alice =
        Party { dhs_secret: a_first, dhr: Some(public_of(&spk)), rk, cks: Some(cks), ckr: None, ns: 0, nr: 0, pn: 0 };
    let mut bob = Party { dhs_secret: spk, dhr: None, rk: sk, cks: None, ckr: None, ns: 0, nr: 0, pn: 0 };

    let messages = v["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 10);
    let mut dh_steps = 0;
    for m in messages {
        let (s, r) = if m["from"] == "alice" { (&mut alice, &mut bob) } else { (&mut bob, &mut alice) };
        // Sender: one KDF_CK step.
        let ck = s.cks.expect("sender has a chain");
        let mk = hmac(&ck, &[&[1]]);
        s.cks = Some(hmac(&ck, &[&[2]]));
        let mut header = public_of(&s.dhs_secret).to_vec();
        header.extend(s.pn.to_be_bytes());
        header.extend(s.ns.to_be_bytes());
        s.ns += 1;
        assert_eq!(header, h(&m["header"]), "header of message {}", m["index"]);
        let pt = h(&m["plaintext"]);
        assert_eq!(seal(&suite, &mk, &ad, &header, &pt), h(&m["ciphertext"]), "ciphertext of message {}", m["index"]);
        // Receiver: a DH ratchet step when the sender's ratchet key is new.
        let their: [u8; 32] = header[..32].try_into().unwrap();
        if r.dhr != Some(their) {
            dh_steps += 1;
            r.pn = r.ns;
            r.ns = 0;
            r.nr = 0;
            r.dhr = Some(their);
            let (rk, ckr) = kdf_rk(&suite, &r.rk, &x25519(&r.dhs_secret, &their));
            r.ckr = Some(ckr);
            r.dhs_secret = h32(&m["receiver_new_ratchet_key"]["private"]);
            let (rk2, cks) = kdf_rk(&suite, &rk, &x25519(&r.dhs_secret, &their));
            r.rk = rk2;
            r.cks = Some(cks);
        } else {
            assert!(m["receiver_new_ratchet_key"].is_null());
        }
        let ckr = r.ckr.unwrap();
        assert_eq!(hmac(&ckr, &[&[1]]), mk, "receiver derives the same message key");
        r.ckr = Some(hmac(&ckr, &[&[2]]));
        r.nr += 1;
    }
    assert!(dh_steps >= 3, "the conversation must turn the DH ratchet at least 3 times, did {dh_steps}");
}

#[test]
fn conversation_bluetick_v1_follows_from_the_spec() {
    rederive_conversation(
        "conversation-bluetick-v1.json",
        Suite { x3dh_info: b"bluetick X3DH v1", ratchet_info: b"bluetick ratchet v1", compat: false },
    );
}

#[test]
fn conversation_signal_v3_compat_follows_from_the_spec() {
    rederive_conversation(
        "conversation-signal-v3-compat.json",
        Suite { x3dh_info: b"WhisperText", ratchet_info: b"WhisperRatchet", compat: true },
    );
}

#[test]
fn sender_key_bluetick_v1_follows_from_the_spec() {
    use ed25519_dalek::{Signer, SigningKey};
    let v = load("sender-key-bluetick-v1.json");
    for (dist, seed, msgs) in [
        ("distribution", "signing_seed", "messages"),
        ("rotated_distribution", "rotated_signing_seed", "rotated_messages"),
    ] {
        let d = h(&v[dist]);
        assert_eq!(d.len(), 89);
        assert_eq!(d[0], 0x01);
        let group = &d[1..17];
        assert_eq!(group, h(&v["group_id"]));
        let key_id = &d[17..21];
        let first_iteration = u32::from_be_bytes(d[21..25].try_into().unwrap());
        let mut ck: [u8; 32] = d[25..57].try_into().unwrap();
        let signing = SigningKey::from_bytes(&h32(&v[seed]));
        assert_eq!(signing.verifying_key().to_bytes().to_vec(), d[57..89].to_vec());
        for (iteration, m) in (first_iteration..).zip(v[msgs].as_array().unwrap()) {
            let seed_i = hmac(&ck, &[&[1]]);
            ck = hmac(&ck, &[&[2]]);
            let okm: [u8; 44] = hkdf(&[0; 32], &seed_i, b"bluetick sender key v1");
            let ad = [group, key_id, &iteration.to_be_bytes()].concat();
            let ct = ChaCha20Poly1305::new(okm[..32].into())
                .encrypt(okm[32..].into(), Payload { msg: &h(&m["plaintext"]), aad: &ad })
                .unwrap();
            let mut encoded = [&[0x01u8][..], group, key_id, &iteration.to_be_bytes(), &ct].concat();
            let sig = signing.sign(&encoded);
            encoded.extend_from_slice(&sig.to_bytes());
            assert_eq!(encoded, h(&m["encoded"]), "group message at iteration {iteration}");
        }
    }
}

#[test]
fn media_bluetick_v1_follows_from_the_spec() {
    let v = load("media-bluetick-v1.json");
    let key = h32(&v["media_key"]);
    let okm: [u8; 39] = hkdf(&[0; 32], &key, b"bluetick media v1");
    let cipher = ChaCha20Poly1305::new(okm[..32].into());
    let plaintext = bluetick_crypto::vectors::media_plaintext();
    assert_eq!(plaintext.len() as u64, v["plaintext_len"].as_u64().unwrap());
    let chunks: Vec<&[u8]> = plaintext.chunks(65536).collect();
    let mut blob = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let mut nonce = okm[32..].to_vec();
        nonce.extend((i as u32).to_be_bytes());
        nonce.push(u8::from(i + 1 == chunks.len()));
        blob.extend(cipher.encrypt(nonce.as_slice().into(), *chunk).unwrap());
    }
    assert_eq!(blob.len() as u64, v["ciphertext_len"].as_u64().unwrap());
    assert_eq!(Sha256::digest(&blob).to_vec(), h(&v["ciphertext_sha256"]));
    assert_eq!(blob[..48].to_vec(), h(&v["ciphertext_head"]));
    assert_eq!(blob[blob.len() - 48..].to_vec(), h(&v["ciphertext_tail"]));
}
