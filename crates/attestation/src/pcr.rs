//! PCR values and indexes.

use std::fmt;
use std::str::FromStr;

/// Number of PCRs an NSM exposes.
pub const PCR_COUNT: u16 = 32;
/// Length of a SHA-384 PCR.
pub const PCR_LEN: usize = 48;

/// A SHA-384 platform configuration register value. Displays as lower-case hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pcr48(pub [u8; PCR_LEN]);

impl Pcr48 {
    pub const ZERO: Pcr48 = Pcr48([0; PCR_LEN]);

    pub fn from_slice(bytes: &[u8]) -> Option<Pcr48> {
        <[u8; PCR_LEN]>::try_from(bytes).ok().map(Pcr48)
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; PCR_LEN]
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// `SHA-384(self || data)`: how an NSM extends a PCR.
    pub fn extended(&self, data: &[u8]) -> Pcr48 {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA384);
        ctx.update(&self.0);
        ctx.update(data);
        Pcr48::from_slice(ctx.finish().as_ref()).expect("SHA-384 is 48 bytes")
    }
}

impl fmt::Display for Pcr48 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Pcr48 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pcr48({})", self.to_hex())
    }
}

/// Why a string is not a PCR value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PcrParseError {
    #[error("PCR value is not hex")]
    NotHex,
    #[error("PCR value is {0} bytes; SHA-384 PCRs are 48 bytes (96 hex digits)")]
    Length(usize),
}

impl FromStr for Pcr48 {
    type Err = PcrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s.trim()).map_err(|_| PcrParseError::NotHex)?;
        Pcr48::from_slice(&bytes).ok_or(PcrParseError::Length(bytes.len()))
    }
}

impl serde::Serialize for Pcr48 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

/// A PCR index, 0..32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PcrIndex(u8);

impl PcrIndex {
    pub fn new(i: u64) -> Option<PcrIndex> {
        (i < PCR_COUNT as u64).then_some(PcrIndex(i as u8))
    }
    pub fn get(self) -> u8 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extend_is_sha384_of_old_value_and_data() {
        // python3 -c "import hashlib;print(hashlib.sha384(bytes(48)+b'abc').hexdigest())"
        let want = "b1c16eb7634112b7c9d5ebd27e62a2d4528bbfcfd68b62d3afd9ecf98e0f413a84314acce78317fb69fd895155343e09";
        assert_eq!(Pcr48::ZERO.extended(b"abc").to_hex(), want);
    }

    #[test]
    fn pcr_hex_must_be_48_bytes() {
        assert_eq!("00".parse::<Pcr48>(), Err(PcrParseError::Length(1)));
        assert_eq!("zz".parse::<Pcr48>(), Err(PcrParseError::NotHex));
        assert!("00".repeat(48).parse::<Pcr48>().unwrap().is_zero());
    }
}
