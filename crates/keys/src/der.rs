//! The little DER this crate writes and reads itself: ECDSA signatures and
//! RFC 5915 private keys. Everything else goes through AWS-LC.

#[cfg(feature = "private-keys")]
use zeroize::Zeroizing;

#[cfg(feature = "private-keys")]
use crate::KeySpec;

/// Length of a DER TLV starting at `bytes[0]`, header included.
pub(crate) fn outer_len(bytes: &[u8]) -> Option<usize> {
    let (len, header) = read_len(bytes.get(1..)?)?;
    header.checked_add(1)?.checked_add(len)
}

/// (content length, bytes of the length field).
fn read_len(bytes: &[u8]) -> Option<(usize, usize)> {
    let first = *bytes.first()?;
    if first < 0x80 {
        return Some((first as usize, 1));
    }
    let n = (first & 0x7f) as usize;
    if n == 0 || n > 2 {
        return None;
    }
    let mut len = 0usize;
    for b in bytes.get(1..1 + n)? {
        len = (len << 8) | *b as usize;
    }
    (len >= 0x80).then_some((len, 1 + n))
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
}

fn push_uint(out: &mut Vec<u8>, n: &[u8]) {
    let first = n.iter().position(|b| *b != 0).unwrap_or(n.len() - 1);
    let n = &n[first..];
    out.push(0x02);
    if n[0] & 0x80 != 0 {
        push_len(out, n.len() + 1);
        out.push(0);
    } else {
        push_len(out, n.len());
    }
    out.extend_from_slice(n);
}

/// `r || s` (each `size` bytes) as an ECDSA-Sig-Value.
pub fn ecdsa_fixed_to_der(fixed: &[u8]) -> Vec<u8> {
    let (r, s) = fixed.split_at(fixed.len() / 2);
    let mut body = Vec::with_capacity(fixed.len() + 8);
    push_uint(&mut body, r);
    push_uint(&mut body, s);
    let mut out = vec![0x30];
    push_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// An ECDSA-Sig-Value as `r || s`, each `size` bytes; `None` unless it is
/// exactly one DER SEQUENCE of two non-negative INTEGERs that fit.
pub fn ecdsa_der_to_fixed(der: &[u8], size: usize) -> Option<Vec<u8>> {
    if der.first() != Some(&0x30) || outer_len(der)? != der.len() {
        return None;
    }
    let (_, h) = read_len(&der[1..])?;
    let mut rest = &der[1 + h..];
    let mut out = Vec::with_capacity(2 * size);
    for _ in 0..2 {
        if rest.first() != Some(&0x02) {
            return None;
        }
        let (len, h) = read_len(&rest[1..])?;
        let value = rest.get(1 + h..1 + h + len)?;
        rest = &rest[1 + h + len..];
        if value.is_empty() || value[0] & 0x80 != 0 || (value.len() > 1 && value[0] == 0 && value[1] & 0x80 == 0) {
            return None;
        }
        let value = if value[0] == 0 { &value[1..] } else { value };
        if value.len() > size {
            return None;
        }
        out.extend(std::iter::repeat_n(0, size - value.len()));
        out.extend_from_slice(value);
    }
    rest.is_empty().then_some(out)
}

#[cfg(feature = "private-keys")]
/// An RFC 5915 ECPrivateKey holding only the scalar and the curve, which
/// AWS-LC completes with the public point.
pub(crate) fn ec_private_key(spec: KeySpec, scalar: &[u8]) -> Zeroizing<Vec<u8>> {
    let oid: &[u8] = match spec {
        KeySpec::P256 => &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
        KeySpec::P384 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
        _ => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a],
    };
    let body_len = 3 + 2 + scalar.len() + 2 + oid.len();
    let mut out = Zeroizing::new(Vec::with_capacity(body_len + 2));
    out.extend_from_slice(&[0x30, body_len as u8, 0x02, 0x01, 0x01, 0x04, scalar.len() as u8]);
    out.extend_from_slice(scalar);
    out.extend_from_slice(&[0xa0, oid.len() as u8]);
    out.extend_from_slice(oid);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_signatures_convert_both_ways() {
        let mut fixed = vec![0u8; 64];
        fixed[0] = 0x80; // r needs a leading zero in DER
        fixed[63] = 1; // s is short
        let der = ecdsa_fixed_to_der(&fixed);
        assert_eq!(ecdsa_der_to_fixed(&der, 32).unwrap(), fixed);
        assert!(ecdsa_der_to_fixed(&der, 16).is_none());
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(ecdsa_der_to_fixed(&trailing, 32).is_none());
        assert!(ecdsa_der_to_fixed(&der[..der.len() - 1], 32).is_none());
    }
}
