//! The `symbolic-insecure` suite runs the same state machines as the real
//! suites: X3DH, the Double Ratchet with DH steps and reordering, sender keys,
//! signatures that bind key and message. Its keys never work with a real
//! suite's, so a symbolic run cannot be mistaken for a real one.

use bluetick_crypto::prekeys::{verify_bundle, BundleError, PreKeyStore};
use bluetick_crypto::ratchet::Session;
use bluetick_crypto::sender_key::{GroupId, OwnSenderKey, SenderKeyError, SenderKeyRecord};
use bluetick_crypto::x3dh;
use bluetick_crypto::CipherSuite;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

const SYM: CipherSuite = CipherSuite::SymbolicInsecure;
/// The deliberately weakened build keeps used keys: there the checks below
/// must see the weakness instead.
const WEAK: bool = cfg!(feature = "weak-keep-used-keys");

#[test]
fn x3dh_and_the_double_ratchet_run_on_symbolic_keys() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let alice_id = SYM.generate_identity(&mut rng);
    let mut store = PreKeyStore::new(SYM, SYM.generate_identity(&mut rng), &mut rng, 0);
    let opks = store.generate_one_time(2, &mut rng);
    let bundle = store.bundle(Some(opks[0].id)).unwrap();
    let init = x3dh::initiate(SYM, &alice_id, &verify_bundle(SYM, &bundle).unwrap(), &mut rng).unwrap();
    let mut alice =
        Session::initiator(SYM, &init.shared_secret, init.associated_data.clone(), init.their_signed_prekey, &mut rng)
            .unwrap();
    let first = alice.encrypt(b"hi bob").unwrap();
    let r = x3dh::respond(SYM, &store, &init.header).unwrap();
    let mut bob = Session::responder(SYM, &r.shared_secret, r.associated_data.clone(), r.signed_prekey.clone());
    assert_eq!(bob.decrypt(&first, &mut rng).unwrap().as_slice(), b"hi bob");
    r.commit(&mut store).unwrap();
    assert_eq!(x3dh::respond(SYM, &store, &init.header).is_err(), !WEAK, "the one-time prekey is used once");

    // Turns of conversation (each a DH ratchet step), one of them reordered.
    for turn in 0..6 {
        let (from, to) = if turn % 2 == 0 { (&mut bob, &mut alice) } else { (&mut alice, &mut bob) };
        let a = from.encrypt(format!("turn {turn} a").as_bytes()).unwrap();
        let b = from.encrypt(format!("turn {turn} b").as_bytes()).unwrap();
        assert_eq!(to.decrypt(&b, &mut rng).unwrap().as_slice(), format!("turn {turn} b").as_bytes());
        assert_eq!(to.decrypt(&a, &mut rng).unwrap().as_slice(), format!("turn {turn} a").as_bytes());
        assert_eq!(to.decrypt(&a, &mut rng).is_err(), !WEAK, "a used message key is gone");
    }
}

#[test]
fn symbolic_and_real_keys_do_not_mix() {
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let store = PreKeyStore::new(SYM, SYM.generate_identity(&mut rng), &mut rng, 0);
    let bundle = store.bundle(None).unwrap();
    assert!(verify_bundle(SYM, &bundle).is_ok());
    for real in [CipherSuite::BluetickV1, CipherSuite::SignalV3Compat] {
        assert!(
            matches!(
                verify_bundle(real, &bundle),
                Err(BundleError::BadSignature { .. } | BundleError::UnusableIdentityKey { .. })
            ),
            "{real:?} accepted a symbolic bundle"
        );
        let real_store = PreKeyStore::new(real, real.generate_identity(&mut rng), &mut rng, 0);
        assert!(verify_bundle(SYM, &real_store.bundle(None).unwrap()).is_err(), "symbolic accepted a {real:?} bundle");
    }
    // Same secret, different public key: a symbolic key is never a real one.
    let secret = [9u8; 32];
    assert_ne!(
        SYM.key_pair_from_secret(secret).public(),
        CipherSuite::BluetickV1.key_pair_from_secret(secret).public()
    );
}

#[test]
fn a_symbolic_signature_binds_its_key_and_message() {
    let mut rng = ChaCha20Rng::seed_from_u64(13);
    let (a, b) = (SYM.generate_identity(&mut rng), SYM.generate_identity(&mut rng));
    let sig = SYM.sign(&a, b"group change", &mut rng);
    assert!(SYM.verify(&a.public(), b"group change", &sig).is_ok());
    assert!(SYM.verify(&b.public(), b"group change", &sig).is_err());
    assert!(SYM.verify(&a.public(), b"group chaNge", &sig).is_err());
    assert!(CipherSuite::BluetickV1.verify(&a.public(), b"group change", &sig).is_err());
}

#[test]
fn sender_keys_run_and_refuse_forgeries_under_the_symbolic_suite() {
    let mut rng = ChaCha20Rng::seed_from_u64(14);
    let group = GroupId([7; 16]);
    let mut sender = OwnSenderKey::new(SYM, group, &mut rng);
    let mut record = SenderKeyRecord::from_distribution(SYM, &sender.distribution()).unwrap();
    let m0 = sender.encrypt(b"zero").unwrap();
    let m1 = sender.encrypt(b"one").unwrap();
    assert_eq!(record.decrypt(&m1).unwrap().as_slice(), b"one");
    let mut forged = m0.clone();
    forged.ciphertext[0] ^= 1;
    assert!(matches!(record.decrypt(&forged), Err(SenderKeyError::BadSignature { .. })));
    assert_eq!(record.decrypt(&m0).unwrap().as_slice(), b"zero");
    // A real-suite record refuses the symbolic distribution outright.
    assert!(SenderKeyRecord::from_distribution(CipherSuite::BluetickV1, &sender.distribution()).is_err());
}
