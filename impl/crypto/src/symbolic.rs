//! The public-key layer of the `symbolic-insecure` suite: stand-ins for X25519
//! and XEdDSA that keep the algebra the protocol relies on and drop the cost
//! and, deliberately, all of the security.
//!
//! **Never use this for anything but scale runs of the simulator and model
//! checker.** A public key here is a hash of its secret, a Diffie-Hellman
//! output is a hash of the two *public* keys (so anyone who sees both can
//! compute it), and a signature is a hash of the public key and the message
//! (so anyone can forge one). What survives is what the state machines
//! need: DH is commutative, different key pairs give different outputs,
//! a signature verifies only under the key and message it was made for, and
//! the symmetric layer (HKDF, HMAC, ChaCha20-Poly1305) is the real one. An
//! adversary that only uses the protocol's own operations — the Dolev–Yao
//! view the model checker takes — therefore sees the same behaviour as with
//! real keys, at a few hundred nanoseconds per operation instead of tens of
//! microseconds.
//!
//! The hash is SHA-256/SHA-512 from `sha2`, used as a deterministic mixer, not
//! as a security argument.

use sha2::{Digest, Sha256, Sha512};
use zeroize::Zeroizing;

use crate::keys::{DhOutput, PublicKey};
use crate::xeddsa::Signature;

const PUBLIC_LABEL: &[u8] = b"bluetick symbolic public v1";
const DH_LABEL: &[u8] = b"bluetick symbolic dh v1";
const SIGNATURE_LABEL: &[u8] = b"bluetick symbolic signature v1";

/// The symbolic public key of `secret`.
pub fn public(secret: &[u8; 32]) -> PublicKey {
    let mut h = Sha256::new();
    h.update(PUBLIC_LABEL);
    h.update(secret);
    PublicKey(h.finalize().into())
}

/// The shared "secret" of two symbolic key pairs: a hash of the two public
/// keys in sorted order, which makes it commutative without the secret.
pub fn dh(ours: &PublicKey, theirs: &PublicKey) -> DhOutput {
    let (lo, hi) = if ours <= theirs { (ours, theirs) } else { (theirs, ours) };
    let mut h = Sha256::new();
    h.update(DH_LABEL);
    h.update(lo.0);
    h.update(hi.0);
    Zeroizing::new(h.finalize().into())
}

/// The symbolic signature of `message` by the holder of `public`.
pub fn sign(public: &PublicKey, message: &[u8]) -> Signature {
    let mut h = Sha512::new();
    h.update(SIGNATURE_LABEL);
    h.update(public.0);
    h.update((message.len() as u64).to_be_bytes());
    h.update(message);
    Signature(h.finalize().into())
}

/// Whether `signature` is the symbolic signature of `message` under `public`.
pub fn verifies(public: &PublicKey, message: &[u8], signature: &Signature) -> bool {
    sign(public, message) == *signature
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dh_is_commutative_and_depends_on_both_keys() {
        let (a, b, c) = (public(&[1; 32]), public(&[2; 32]), public(&[3; 32]));
        assert_eq!(*dh(&a, &b), *dh(&b, &a));
        assert_ne!(*dh(&a, &b), *dh(&a, &c));
        assert_ne!(*dh(&a, &b), *dh(&c, &b));
        assert_ne!(a, b);
    }

    #[test]
    fn a_signature_verifies_only_for_its_key_and_message() {
        let (a, b) = (public(&[1; 32]), public(&[2; 32]));
        let sig = sign(&a, b"hello");
        assert!(verifies(&a, b"hello", &sig));
        assert!(!verifies(&b, b"hello", &sig));
        assert!(!verifies(&a, b"hellp", &sig));
        let mut bad = sig;
        bad.0[63] ^= 1;
        assert!(!verifies(&a, b"hello", &bad));
    }
}
