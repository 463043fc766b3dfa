//! Token PINs: the verifier the parent keeps instead of a PIN.

use nekms_protocol::rpc::PinVerifier;

/// Making and checking a [`PinVerifier`] (PBKDF2-HMAC-SHA256).
pub trait PinVerifierExt: Sized {
    /// A new verifier for `pin` (4-64 bytes) with a random salt; `None`
    /// for a PIN out of range or no randomness.
    fn new(pin: &[u8]) -> Option<Self>;
    /// Whether `pin` matches, compared in constant time. A verifier with
    /// iterations out of range matches nothing.
    fn matches(&self, pin: &[u8]) -> bool;
}

impl PinVerifierExt for PinVerifier {
    fn new(pin: &[u8]) -> Option<PinVerifier> {
        use aws_lc_rs::rand::SecureRandom;
        if !(4..=64).contains(&pin.len()) {
            return None;
        }
        let mut salt = vec![0u8; 16];
        aws_lc_rs::rand::SystemRandom::new().fill(&mut salt).ok()?;
        let mut hash = vec![0u8; 32];
        let n = std::num::NonZeroU32::new(PinVerifier::ITERATIONS)?;
        aws_lc_rs::pbkdf2::derive(aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256, n, &salt, pin, &mut hash);
        Some(PinVerifier { salt, iterations: PinVerifier::ITERATIONS, hash })
    }

    fn matches(&self, pin: &[u8]) -> bool {
        match std::num::NonZeroU32::new(self.iterations).filter(|n| n.get() <= PinVerifier::MAX_ITERATIONS) {
            Some(n) => aws_lc_rs::pbkdf2::verify(aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256, n, &self.salt, pin, &self.hash).is_ok(),
            None => false,
        }
    }
}
