//! `Debug` of every state type that holds a secret prints no key bytes. The
//! snapshot pins the exact output; the loop below checks that no secret's hex
//! appears anywhere in it, so a new field printed carelessly fails even if
//! someone re-accepts the snapshot.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bluetick_crypto::media::{self, BlobId, MediaFormat};
use bluetick_crypto::prekeys::{verify_bundle, PreKeyStore};
use bluetick_crypto::ratchet::Session;
use bluetick_crypto::sender_key::{GroupId, OwnSenderKey, SenderKeyRecord};
use bluetick_crypto::{x3dh, CipherSuite, IdentityKeyPair, KeyPair, SecretKey};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

#[test]
fn debug_output_never_contains_secret_bytes() {
    let mut rng = ChaCha20Rng::seed_from_u64(2026);
    let suite = CipherSuite::BluetickV1;
    let alice = IdentityKeyPair::generate(&mut rng);
    let mut store = PreKeyStore::new(suite, IdentityKeyPair::generate(&mut rng), &mut rng, 0);
    store.generate_one_time(1, &mut rng);
    let bundle = store.bundle(Some(1)).unwrap();
    let init = x3dh::initiate(suite, &alice, &verify_bundle(suite, &bundle).unwrap(), &mut rng).unwrap();
    let mut session = Session::initiator(
        suite,
        &init.shared_secret,
        init.associated_data.clone(),
        init.their_signed_prekey,
        &mut rng,
    )
    .unwrap();
    session.encrypt(b"hello").unwrap();
    let mut own = OwnSenderKey::new(suite, GroupId([3; 16]), &mut rng);
    let dist = own.distribution();
    let record = SenderKeyRecord::from_distribution(suite, &dist).unwrap();
    own.encrypt(b"group").unwrap();
    let key_pair = KeyPair::generate(&mut rng);
    let media_key = SecretKey::generate(&mut rng);
    let (_, pointer) = media::encrypt(MediaFormat::BluetickV1, media_key.clone(), BlobId([4; 16]), b"pic").unwrap();

    let printed = format!(
        "{alice:#?}\n{key_pair:#?}\n{media_key:#?}\n{store:#?}\n{session:#?}\n{init:#?}\n{own:#?}\n{record:#?}\n{dist:#?}\n{pointer:#?}"
    );
    let secrets: Vec<String> = vec![
        hex::encode(alice.key_pair().secret_bytes().as_ref()),
        hex::encode(key_pair.secret_bytes().as_ref()),
        hex::encode(media_key.as_bytes()),
        hex::encode(store.identity().key_pair().secret_bytes().as_ref()),
        hex::encode(store.signed_prekey().key_pair().secret_bytes().as_ref()),
        hex::encode(init.shared_secret.as_bytes()),
        hex::encode(dist.chain_key.as_bytes()),
    ];
    for s in &secrets {
        // Eight hex digits of a secret anywhere would already be a leak.
        assert!(!printed.contains(&s[..8]), "Debug output leaks secret {}…", &s[..8]);
    }
    insta::assert_snapshot!(printed);
}
