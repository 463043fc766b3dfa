//! CiphertextForRecipient: real KMS responses parse, ours have the same shape,
//! and OpenSSL decrypts ours.

use std::path::PathBuf;
use std::process::Command;

use nekms_cms::{parse_ber, seal_for_recipient, Body, CmsError, Element, EnvelopedData, RecipientKey};

fn real(name: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)).unwrap()
}

#[test]
fn the_real_kms_responses_parse_to_the_documented_fields() {
    for (file, iv, ski, content_len) in [
        (
            "kms-ciphertext-for-recipient.ber",
            "688c6d5f7f31b0fecedf09f2e7c99ac9",
            "7087b55df94ba3255cdf3c01840a2aa3ec93620625d601cf56f97bde7a3d2eb1",
            48,
        ),
        (
            "kms-ciphertext-for-recipient-ctx.ber",
            "e66c1172aee0f2f7be34e3afc6b0e4fe",
            "4e61df69e443b8e25c8ae83318cfc72d9b6a5176d2167790fdf819c086e6967a",
            16,
        ),
    ] {
        let e = EnvelopedData::parse(&real(file)).unwrap();
        assert_eq!(e.version, 2);
        assert_eq!(e.recipient.version, 2);
        assert_eq!(hex::encode(&e.iv), iv);
        assert_eq!(hex::encode(&e.recipient.subject_key_identifier), ski);
        assert_eq!(e.recipient.key_encryption, "1.2.840.113549.1.1.7 (rsaesOaep)");
        assert_eq!(e.recipient.oaep_hash.as_deref(), Some("2.16.840.1.101.3.4.2.1 (sha256)"));
        assert_eq!(e.recipient.oaep_mgf1_hash.as_deref(), Some("2.16.840.1.101.3.4.2.1 (sha256)"));
        assert_eq!(e.recipient.encrypted_key.len(), 256);
        assert_eq!(e.content_encryption, "2.16.840.1.101.3.4.1.42 (aes-256-cbc)");
        assert_eq!(e.encrypted_content.len(), content_len);
        assert!(e.indefinite_lengths);
    }
}

/// Tags, indefinite-length flags, primitive lengths, and the values of OIDs,
/// INTEGERs and NULLs: everything but the random bytes.
fn skeleton(e: &Element<'_>, out: &mut String) {
    out.push_str(&format!("{:02x}{}", e.tag, if e.indefinite { "~" } else { "" }));
    match &e.body {
        Body::Primitive(b) if matches!(e.tag, 0x02 | 0x05 | 0x06) => out.push_str(&format!("={} ", hex::encode(b))),
        Body::Primitive(b) => out.push_str(&format!("[{}] ", b.len())),
        Body::Constructed(children) => {
            out.push('(');
            for c in children {
                skeleton(c, out);
            }
            out.push_str(") ");
        }
    }
}

#[test]
fn our_output_has_the_same_asn1_shape_as_real_kms_output() {
    let key = RecipientKey::generate().unwrap();
    // 40 bytes of plaintext pad to 48, like the real sample.
    let ours = seal_for_recipient(&[7u8; 40], &key.public_key_der().unwrap()).unwrap();
    let (mut a, mut b) = (String::new(), String::new());
    skeleton(&parse_ber(&ours).unwrap(), &mut a);
    skeleton(&parse_ber(&real("kms-ciphertext-for-recipient.ber")).unwrap(), &mut b);
    assert_eq!(a, b);
    assert_eq!(&key.open(&ours).unwrap()[..], &[7u8; 40]);
}

#[test]
fn round_trips_for_every_size_kms_allows() {
    let key = RecipientKey::generate().unwrap();
    let spki = key.public_key_der().unwrap();
    for n in [0usize, 1, 15, 16, 17, 32, 1000, 4096, 5000] {
        let data: Vec<u8> = (0..n).map(|i| i as u8).collect();
        let ber = seal_for_recipient(&data, &spki).unwrap();
        assert_eq!(&key.open(&ber).unwrap()[..], &data[..], "{n} bytes");
    }
}

#[test]
fn another_key_or_altered_bytes_are_refused() {
    let key = RecipientKey::generate().unwrap();
    let other = RecipientKey::generate().unwrap();
    let ber = seal_for_recipient(b"secret data key bytes, 32 long!!", &key.public_key_der().unwrap()).unwrap();
    assert!(matches!(other.open(&ber), Err(CmsError::RecipientMismatch { .. })));

    let parsed = EnvelopedData::parse(&ber).unwrap();
    let pos = ber.windows(32).position(|w| w == &parsed.recipient.encrypted_key[..32]).unwrap();
    let mut bad_key = ber.clone();
    bad_key[pos + 10] ^= 1;
    assert_eq!(key.open(&bad_key).unwrap_err(), CmsError::Unwrap);

    // Changing the IV changes the first block: CBC has no integrity of its own,
    // which is why KMS's data keys are further checked by AES-GCM in nekms.
    let mut bad_len = ber.clone();
    bad_len.truncate(ber.len() - 3);
    assert!(matches!(key.open(&bad_len), Err(CmsError::Ber(_))));
}

#[test]
fn a_non_rsa_2048_recipient_is_refused() {
    let out = tempfile::tempdir().unwrap();
    let k = out.path().join("k.pem");
    let p = out.path().join("p.der");
    assert!(Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072", "-out"])
        .arg(&k)
        .output()
        .unwrap()
        .status
        .success());
    assert!(Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&k)
        .arg("-out")
        .arg(&p)
        .status()
        .unwrap()
        .success());
    assert_eq!(seal_for_recipient(b"x", &std::fs::read(&p).unwrap()).unwrap_err(), CmsError::KeySize(3072));
    assert_eq!(seal_for_recipient(b"x", b"not a key").unwrap_err(), CmsError::PublicKey);
}

#[test]
fn openssl_decrypts_what_we_seal_and_we_open_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let key_pem = dir.path().join("key.pem");
    let pub_der = dir.path().join("pub.der");
    let msg = dir.path().join("msg.ber");
    let out = dir.path().join("out.bin");
    assert!(Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&key_pem)
        .output()
        .unwrap()
        .status
        .success());
    assert!(Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&key_pem)
        .arg("-out")
        .arg(&pub_der)
        .status()
        .unwrap()
        .success());
    let plaintext = b"the data key that KMS releases only to the enclave";
    std::fs::write(&msg, seal_for_recipient(plaintext, &std::fs::read(&pub_der).unwrap()).unwrap()).unwrap();
    let o = Command::new("openssl")
        .args(["cms", "-decrypt", "-inform", "DER", "-in"])
        .arg(&msg)
        .arg("-inkey")
        .arg(&key_pem)
        .arg("-out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "openssl: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), plaintext);

    let ours = RecipientKey::from_pem_or_der(&std::fs::read(&key_pem).unwrap()).unwrap();
    assert_eq!(&ours.open(&std::fs::read(&msg).unwrap()).unwrap()[..], plaintext);
}

#[test]
fn structural_defects_are_named() {
    assert!(matches!(EnvelopedData::parse(&[0x30, 0x80]), Err(CmsError::Ber(_))));
    assert_eq!(EnvelopedData::parse(&[0x30, 0x00]).unwrap_err(), CmsError::Structure("ContentInfo.contentType"));
    // signedData instead of envelopedData
    let signed = [0x30, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
    assert_eq!(EnvelopedData::parse(&signed).unwrap_err(), CmsError::NotEnvelopedData("1.2.840.113549.1.7.2".into()));
    assert!(matches!(EnvelopedData::parse(&vec![0u8; 70_000]), Err(CmsError::TooLarge { .. })));
}
