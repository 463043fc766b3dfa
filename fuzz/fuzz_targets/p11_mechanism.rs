//! The PKCS#11 module's readers of caller bytes: a mechanism with its
//! parameters and data, turned into the enclave's scheme and payload; and
//! a key's public key and certificates (as provisioned), read for every
//! attribute a client may ask. An error code or a value, never a panic.
#![no_main]

use cryptoki_sys::{CK_RSA_PKCS_PSS_PARAMS, CK_ULONG};
use libfuzzer_sys::fuzz_target;
use nekms_keys::KeySpec;
use nekms_p11::{mech, objects};
use nekms_rpc::protocol::P11PublicKey;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let spec = KeySpec::ALL[data[0] as usize % KeySpec::ALL.len()];
    let mechanism = mech::MECHANISMS[data[1] as usize % mech::MECHANISMS.len()].0 + if data[2] == 0xff { 1 } else { 0 };
    let rest = &data[3..];
    let size = std::mem::size_of::<CK_RSA_PKCS_PSS_PARAMS>();
    let params = (rest.len() >= size).then(|| {
        let word = |i: usize| CK_ULONG::from_ne_bytes(rest[i * 8..i * 8 + 8].try_into().unwrap());
        CK_RSA_PKCS_PSS_PARAMS { hashAlg: word(0), mgf: word(1), sLen: word(2) }
    });
    if let Ok(m) = mech::mechanism(spec, mechanism, params.as_ref(), if params.is_some() { size } else { rest.len() % 3 }) {
        let _ = mech::to_scheme(spec, m, rest);
    }
    let _ = mech::x509_block(spec, rest);
    for m in [mech::Mech::RsaPkcs, mech::Mech::RsaX509] {
        let _ = mech::raw_block(spec, m, rest);
    }
    // The same bytes as a public key and as a certificate.
    let (spki, cert) = rest.split_at(rest.len() / 2);
    let key = P11PublicKey {
        id: vec![1],
        label: "k".into(),
        spec,
        public_key: spki.to_vec(),
        certificates: vec![serde_bytes::ByteBuf::from(cert.to_vec())],
        certificate_count: 1,
        decrypt: data[2] & 1 == 1,
    };
    for kind in [objects::Kind::Private, objects::Kind::Public, objects::Kind::Certificate(0)] {
        let o = objects::Object { key: &key, kind };
        for t in 0..0x200 {
            let _ = o.attribute(t);
        }
    }
});
