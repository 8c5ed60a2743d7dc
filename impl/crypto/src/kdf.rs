//! Key derivation plumbing: HKDF-SHA256 and HMAC-SHA256, the only two KDF shapes
//! the protocol uses. Outputs are wrapped in [`Zeroizing`] so intermediate key
//! material is wiped when the caller drops it.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// 32 zero bytes: the salt every "salt = zeros" derivation in the spec uses
/// (HKDF would substitute the same for an absent salt, but spelling it out keeps
/// the encoding unambiguous for other implementers).
pub const ZERO_SALT: [u8; 32] = [0u8; 32];

/// HKDF-SHA256 extract-and-expand into exactly `N` bytes.
///
/// `N` is a compile-time constant checked against HKDF-SHA256's 8160-byte
/// ceiling, so expansion cannot fail at run time.
pub fn hkdf_sha256<const N: usize>(salt: &[u8], ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; N]> {
    const { assert!(N <= 255 * 32, "HKDF-SHA256 output is at most 8160 bytes") };
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut out = Zeroizing::new([0u8; N]);
    // Cannot fail: the const assertion above bounds N to what HKDF can expand.
    let _ = hk.expand(info, out.as_mut());
    out
}

/// HMAC-SHA256 of `data` under `key`.
pub fn hmac_sha256(key: &[u8], data: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable_hmac(),
    };
    for part in data {
        mac.update(part);
    }
    Zeroizing::new(mac.finalize().into_bytes().into())
}

/// Constant-time check of a (possibly truncated) HMAC-SHA256 tag.
pub fn hmac_sha256_verify_truncated(key: &[u8], data: &[&[u8]], tag: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    let full = hmac_sha256(key, data);
    tag.len() <= 32 && !tag.is_empty() && bool::from(full[..tag.len()].ct_eq(tag))
}

#[cold]
#[allow(clippy::panic)]
fn unreachable_hmac() -> ! {
    // hmac::Hmac::new_from_slice only errors for fixed-key-size MACs; SHA-256 HMAC
    // takes any key length.
    panic!("HMAC-SHA256 rejected a key, which it never does")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5869, test case 1 (HKDF-SHA256 with salt and info).
    #[test]
    fn hkdf_matches_rfc5869_case_1() {
        let ikm = [0x0bu8; 22];
        let salt = hex::decode("000102030405060708090a0b0c").unwrap();
        let info = hex::decode("f0f1f2f3f4f5f6f7f8f9").unwrap();
        let okm = hkdf_sha256::<42>(&salt, &ikm, &info);
        assert_eq!(
            hex::encode(okm.as_ref()),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }

    /// RFC 5869, test case 3 (zero-length salt and info). An empty salt is the
    /// same as 32 zero bytes, which is what our "salt = zeros" derivations rely on.
    #[test]
    fn hkdf_matches_rfc5869_case_3_and_zero_salt_is_equivalent() {
        let ikm = [0x0bu8; 22];
        let expected = "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8";
        assert_eq!(hex::encode(hkdf_sha256::<42>(&[], &ikm, &[]).as_ref()), expected);
        assert_eq!(hex::encode(hkdf_sha256::<42>(&ZERO_SALT, &ikm, &[]).as_ref()), expected);
    }

    /// RFC 4231, test case 2 (HMAC-SHA256 with a short key).
    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let tag = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(hex::encode(tag.as_ref()), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert!(hmac_sha256_verify_truncated(b"Jefe", &[b"what do ya want for nothing?"], &tag[..8]));
        assert!(!hmac_sha256_verify_truncated(b"Jefe", &[b"what do ya want for nothing!"], &tag[..8]));
        assert!(!hmac_sha256_verify_truncated(b"Jefe", &[b"x"], &[]));
    }
}
