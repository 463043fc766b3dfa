//! Specs, signing, sealing and import, checked against published vectors
//! where there are any. (OpenSSL, eth-account and Python's cryptography
//! check our output in tests/python.)

use nekms_keys::HashExt;
use nekms_keys::RecordExt;
use std::collections::BTreeMap;

use aws_lc_rs::encoding::AsDer;
use base64::Engine;
use nekms_keys::envelope::{open_record, seal_record};
use nekms_keys::eth::TxRequest;
use nekms_keys::record::binding_context;
use nekms_keys::{parse_private_key, Hash, KeyError, KeyRecord, KeySpec, Origin, Payload, PrivateKey, PublicKey, Scheme};

fn seed(n: u8) -> Vec<u8> {
    (0..64).map(|i| i ^ n).collect()
}

fn schemes(spec: KeySpec) -> Vec<Scheme> {
    match spec {
        KeySpec::Secp256k1 => vec![Scheme::EcdsaDer, Scheme::EcdsaRaw, Scheme::EcdsaRecoverable, Scheme::EthPersonal],
        KeySpec::Ed25519 => vec![Scheme::Ed25519],
        KeySpec::P256 | KeySpec::P384 => vec![Scheme::EcdsaDer, Scheme::EcdsaRaw],
        _ => vec![
            Scheme::RsaPkcs1(Hash::Sha256),
            Scheme::RsaPss(Hash::Sha384),
            Scheme::RsaPkcs1(Hash::Sha512),
            Scheme::RsaPkcs1(Hash::Sha1),
            Scheme::RsaPkcs1(Hash::Sha224),
            Scheme::RsaPss(Hash::Sha1),
            Scheme::RsaPss(Hash::Sha224),
            Scheme::RsaPssParams(Hash::Sha256, Hash::Sha1, 0),
            Scheme::RsaPssParams(Hash::Sha512, Hash::Sha256, 100),
        ],
    }
}

#[test]
fn every_spec_signs_and_verifies_with_every_scheme_it_allows() {
    for spec in [KeySpec::Secp256k1, KeySpec::Ed25519, KeySpec::P256, KeySpec::P384, KeySpec::Rsa2048] {
        let key = PrivateKey::generate(spec, &seed(1)).unwrap();
        let public = PublicKey::from_spki(key.public_key().spki()).unwrap();
        assert_eq!(public.spec(), spec);
        let msg = Payload::Message(b"Hello World".to_vec());
        for scheme in schemes(spec) {
            let sig = key.sign(scheme, &msg).unwrap();
            public.verify(scheme, &msg, &sig.signature).unwrap_or_else(|e| panic!("{spec} {scheme}: {e}"));
            let other = Payload::Message(b"Hello World!".to_vec());
            assert!(matches!(public.verify(scheme, &other, &sig.signature), Err(KeyError::BadSignature(_))), "{spec} {scheme}");
            if let Some(h) = scheme.message_hash(spec) {
                // The same signature verifies over the prehash.
                let digest = Payload::Digest(h.digest(b"Hello World"));
                public.verify(scheme, &digest, &sig.signature).unwrap();
                let sig2 = key.sign(scheme, &digest).unwrap();
                public.verify(scheme, &msg, &sig2.signature).unwrap();
            }
        }
        let wrong = if spec == KeySpec::Ed25519 { Scheme::EcdsaDer } else { Scheme::Ed25519 };
        assert!(matches!(key.sign(wrong, &msg), Err(KeyError::Scheme(_))));
    }
}

#[test]
fn elliptic_curve_keys_come_from_the_seed_and_rsa_keys_from_aws_lc() {
    for spec in [KeySpec::Secp256k1, KeySpec::Ed25519, KeySpec::P256, KeySpec::P384] {
        let a = PrivateKey::generate(spec, &seed(3)).unwrap();
        let b = PrivateKey::generate(spec, &seed(3)).unwrap();
        let c = PrivateKey::generate(spec, &seed(4)).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert_ne!(a.public_key(), c.public_key());
        let back = PrivateKey::from_secret(spec, &a.secret_bytes().unwrap()).unwrap();
        assert_eq!(back.public_key(), a.public_key());
    }
    assert!(matches!(PrivateKey::generate(KeySpec::P256, &[0u8; 16]), Err(KeyError::Entropy(_))));
    let rsa = PrivateKey::generate(KeySpec::Rsa3072, &seed(1)).unwrap();
    assert_eq!(PublicKey::from_spki(rsa.public_key().spki()).unwrap().spec(), KeySpec::Rsa3072);
}

#[test]
fn debug_output_never_shows_the_secret() {
    let key = PrivateKey::from_secret(KeySpec::Secp256k1, &[0x11; 32]).unwrap();
    let shown = format!("{key:?}");
    assert!(!shown.contains("1111111111"), "{shown}");
    assert!(shown.contains("redacted"));
}

/// The EIP-155 example from the EIP itself.
#[test]
fn legacy_transaction_matches_the_eip155_example() {
    let key = PrivateKey::from_secret(KeySpec::Secp256k1, &[0x46; 32]).unwrap();
    let tx = r#"{"type":0,"nonce":9,"gasPrice":20000000000,"gas":21000,"to":"0x3535353535353535353535353535353535353535","value":"1000000000000000000","data":"0x","chainId":1}"#;
    assert_eq!(
        hex::encode(TxRequest::from_json(tx).unwrap().signature_hash()),
        "daf5a779ae972f972197303d7b574746c7ef83eadac0f2791ad23db92e4c8e53"
    );
    let sig = key.sign(Scheme::EthTransaction, &Payload::Transaction(tx.into())).unwrap();
    assert_eq!(
        hex::encode(sig.raw_transaction.unwrap()),
        "f86c098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a76400008025a028ef61340bd939bc2195fe537567866003e1a15d3c71ff63e1590620aa636276a067cbe9d8997f761aecb703304b3800ccf555c9f3dc64214b297fb1966a3b6d83"
    );
}

#[test]
fn ethereum_address_matches_the_known_one() {
    let secret = hex::decode("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318").unwrap();
    let key = PrivateKey::from_secret(KeySpec::Secp256k1, &secret).unwrap();
    assert_eq!(key.public_key().eth_address().unwrap().to_checksum(None), "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23");
    // eth-account's documentation signs this message with this key.
    let doc_key = PrivateKey::from_secret(
        KeySpec::Secp256k1,
        &hex::decode("b25c7db31feed9122727bf0939dc769a96564b2de4c4726d035b36ecf1e5b364").unwrap(),
    )
    .unwrap();
    let msg = Payload::Message("I\u{2665}SF".as_bytes().to_vec());
    let sig = doc_key.sign(Scheme::EthPersonal, &msg).unwrap();
    assert_eq!(
        hex::encode(&sig.signature),
        "e6ca9bba58c88611fad66a6ce8f996908195593807c4b38bd528d2cff09d4eb33e5bfbbf4d3e39b1a2fd816a7680c19ebebaf3a141b239934ad43cb33fcec8ce1c"
    );
}

#[test]
fn eip712_typed_data_and_its_digest_sign_alike() {
    let typed = r#"{"types":{"EIP712Domain":[{"name":"name","type":"string"},{"name":"chainId","type":"uint256"}],"Mail":[{"name":"contents","type":"string"}]},"primaryType":"Mail","domain":{"name":"nekms","chainId":1},"message":{"contents":"Hello"}}"#;
    let key = PrivateKey::generate(KeySpec::Secp256k1, &seed(5)).unwrap();
    let a = key.sign(Scheme::Eip712, &Payload::TypedData(typed.into())).unwrap();
    let b = key.sign(Scheme::Eip712, &Payload::Digest(a.digest.clone())).unwrap();
    assert_eq!(a.signature, b.signature);
    key.public_key().verify(Scheme::Eip712, &Payload::TypedData(typed.into()), &a.signature).unwrap();
    assert!(matches!(key.sign(Scheme::Eip712, &Payload::TypedData("{}".into())), Err(KeyError::TypedData(_))));
}

fn record_for(key: &PrivateKey, key_id: &str) -> KeyRecord {
    KeyRecord {
        key_id: key_id.into(),
        spec: key.spec(),
        public_key: key.public_key().spki().to_vec(),
        kms_key_id: "arn:aws:kms:us-east-1:111122223333:key/abc".into(),
        encryption_context: binding_context(key_id, key.spec(), Origin::Generated, &BTreeMap::new()).unwrap(),
        encrypted_data_key: vec![1; 100],
        sealed_private_key: Vec::new(),
        origin: Origin::Generated,
        created_at: 0,
        attestation: None,
        migration: None,
    }
}

#[test]
fn sealed_keys_open_only_in_their_own_record() {
    let data_key = [9u8; 32];
    let k1 = PrivateKey::generate(KeySpec::Secp256k1, &seed(1)).unwrap();
    let k2 = PrivateKey::generate(KeySpec::Secp256k1, &seed(2)).unwrap();
    let r1 = seal_record(record_for(&k1, "u001"), &data_key, &k1).unwrap();
    let r2 = seal_record(record_for(&k2, "u002"), &data_key, &k2).unwrap();
    assert_eq!(open_record(&r1, &data_key).unwrap().public_key(), k1.public_key());

    let mut swapped = r1.clone();
    swapped.sealed_private_key = r2.sealed_private_key.clone();
    assert!(matches!(open_record(&swapped, &data_key), Err(KeyError::Sealed { .. })));

    let mut other_public = r1.clone();
    other_public.public_key = r2.public_key.clone();
    assert!(matches!(open_record(&other_public, &data_key), Err(KeyError::Sealed { .. })));

    let mut context = r1.clone();
    context.encryption_context.insert("tenant".into(), "x".into());
    assert!(matches!(open_record(&context, &data_key), Err(KeyError::Sealed { .. })));

    let mut renamed = r1.clone();
    renamed.key_id = "u002".into();
    assert!(matches!(open_record(&renamed, &data_key), Err(KeyError::Record { .. })));

    assert!(matches!(open_record(&r1, &[8u8; 32]), Err(KeyError::Sealed { .. })));
    // Sealing a key under a record that describes another key is refused.
    assert!(seal_record(record_for(&k1, "u003"), &data_key, &k2).is_err());

    // Another key sealed under r1's public fields opens, and is refused as not r1's key.
    let mut foreign = r1.clone();
    foreign.sealed_private_key = nekms_keys::envelope::seal(&data_key, &r1, &k2.secret_bytes().unwrap()).unwrap();
    assert!(matches!(open_record(&foreign, &data_key), Err(KeyError::Mismatch { .. })));

    // A record carrying another reserved context key (an import's) is refused before anything opens.
    let mut reserved = r1.clone();
    reserved.encryption_context.insert("nekms:purpose".into(), "import".into());
    assert!(matches!(reserved.check(), Err(KeyError::Record { .. })));
}

#[test]
fn records_round_trip_through_json_and_cbor() {
    let k = PrivateKey::generate(KeySpec::Ed25519, &seed(1)).unwrap();
    let r = seal_record(record_for(&k, "tm-1"), &[3u8; 32], &k).unwrap();
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.contains("\"spec\":\"ed25519\""));
    assert_eq!(serde_json::from_str::<KeyRecord>(&json).unwrap(), r);
    assert!(!json.contains(&hex::encode(k.secret_bytes().unwrap().as_slice())));
}

#[test]
fn imports_read_every_format_an_administrator_brings() {
    // PKCS#8 made by AWS-LC, in DER and PEM.
    let p256 = aws_lc_rs::signature::EcdsaKeyPair::generate(&aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
    let der = p256.to_pkcs8v1().unwrap();
    let from_der = parse_private_key(der.as_ref(), None).unwrap();
    assert_eq!(from_der.spec(), KeySpec::P256);
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(der.as_ref())
    );
    assert_eq!(parse_private_key(pem.as_bytes(), Some(KeySpec::P256)).unwrap().public_key(), from_der.public_key());
    assert!(parse_private_key(pem.as_bytes(), Some(KeySpec::P384)).unwrap_err().to_string().contains("p384"));

    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let rsa_der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&rsa).unwrap();
    assert_eq!(parse_private_key(rsa_der.as_ref(), None).unwrap().spec(), KeySpec::Rsa2048);

    // secp256k1 in PKCS#8, as `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:secp256k1` writes.
    let k1 = aws_lc_rs::signature::EcdsaKeyPair::generate(&aws_lc_rs::signature::ECDSA_P256K1_SHA256_ASN1_SIGNING).unwrap();
    let k1_key = parse_private_key(k1.to_pkcs8v1().unwrap().as_ref(), None).unwrap();
    assert_eq!(k1_key.spec(), KeySpec::Secp256k1);

    // Raw secrets: hex with 0x (Ethereum), binary; the spec must be said.
    let hex_key = b"0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318\n";
    let eth = parse_private_key(hex_key, Some(KeySpec::Secp256k1)).unwrap();
    assert_eq!(eth.public_key().eth_address().unwrap().to_checksum(None), "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23");
    assert!(parse_private_key(hex_key, None).unwrap_err().to_string().contains("say which spec"));

    // tmkms softsign: base64 of the 32-byte seed; Tendermint JSON: seed || public key.
    let ed = PrivateKey::from_secret(KeySpec::Ed25519, &[0x42; 32]).unwrap();
    let softsign = base64::engine::general_purpose::STANDARD.encode([0x42u8; 32]);
    assert_eq!(parse_private_key(softsign.as_bytes(), Some(KeySpec::Ed25519)).unwrap().public_key(), ed.public_key());
    let mut both = vec![0x42u8; 32];
    both.extend_from_slice(ed.public_key().point());
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let json = format!(
        r#"{{"address":"X","pub_key":{{"type":"tendermint/PubKeyEd25519","value":"{}"}},"priv_key":{{"type":"tendermint/PrivKeyEd25519","value":"{}"}}}}"#,
        b64(ed.public_key().point()),
        b64(&both)
    );
    assert_eq!(parse_private_key(json.as_bytes(), None).unwrap().public_key(), ed.public_key());
    // secp256k1 validator keys: the 32-byte scalar, the compressed public key.
    let k1 = PrivateKey::from_secret(KeySpec::Secp256k1, &[0x11; 32]).unwrap();
    let point = k1.public_key().point();
    let mut compressed = vec![2 + (point[64] & 1)];
    compressed.extend_from_slice(&point[1..33]);
    let k1_json = |public: &[u8]| {
        format!(
            r#"{{"address":"X","pub_key":{{"type":"tendermint/PubKeySecp256k1","value":"{}"}},"priv_key":{{"type":"tendermint/PrivKeySecp256k1","value":"{}"}}}}"#,
            b64(public),
            b64(&[0x11; 32])
        )
    };
    assert_eq!(parse_private_key(k1_json(&compressed).as_bytes(), None).unwrap().public_key(), k1.public_key());
    let mut wrong = compressed.clone();
    wrong[0] ^= 1;
    assert!(parse_private_key(k1_json(&wrong).as_bytes(), None).unwrap_err().to_string().contains("pub_key is not the public key"));
    let pieced = json.replace(&b64(ed.public_key().point()), &b64(&[7u8; 32]));
    assert!(parse_private_key(pieced.as_bytes(), None).is_err());
    assert!(parse_private_key(br#"{"priv_key":{"type":"tendermint/PrivKeySr25519","value":"AA=="}}"#, None)
        .unwrap_err()
        .to_string()
        .contains("Sr25519"));
    both[40] ^= 1;
    assert!(parse_private_key(&both, None).is_err());

    assert!(parse_private_key(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n", None)
        .unwrap_err()
        .to_string()
        .contains("encrypted"));
    assert!(parse_private_key(b"not a key at all!", None).is_err());
    assert!(parse_private_key(&[0u8; 32], Some(KeySpec::Secp256k1)).is_err(), "a zero scalar is not a key");
}

#[test]
fn bad_signatures_and_payloads_get_clear_errors() {
    let key = PrivateKey::generate(KeySpec::P384, &seed(1)).unwrap();
    let err = key.sign(Scheme::EcdsaDer, &Payload::Digest(vec![0; 32])).unwrap_err();
    assert!(err.to_string().contains("48-byte"), "{err}");
    let public = key.public_key();
    let msg = Payload::Message(b"m".to_vec());
    assert!(public.verify(Scheme::EcdsaDer, &msg, b"\x30\x00").is_err());
    assert!(public.verify(Scheme::EcdsaRaw, &msg, &[0u8; 10]).is_err());
    let k1 = PrivateKey::generate(KeySpec::Secp256k1, &seed(1)).unwrap();
    let sig = k1.sign(Scheme::EthPersonal, &msg).unwrap();
    let mut bad_v = sig.signature.clone();
    bad_v[64] = 5;
    assert!(k1.public_key().verify(Scheme::EthPersonal, &msg, &bad_v).unwrap_err().to_string().contains("recovery byte"));
}

#[test]
fn rsa_4096_keys_are_made_sealed_and_sign_with_both_paddings() {
    let key = PrivateKey::generate(KeySpec::Rsa4096, &seed(9)).unwrap();
    let r = seal_record(record_for(&key, "rsa-4096"), &[4u8; 32], &key).unwrap();
    let opened = open_record(&r, &[4u8; 32]).unwrap();
    let msg = Payload::Message(b"four thousand ninety-six".to_vec());
    for scheme in [Scheme::RsaPss(Hash::Sha512), Scheme::RsaPkcs1(Hash::Sha384)] {
        let sig = opened.sign(scheme, &msg).unwrap();
        assert_eq!(sig.signature.len(), 512);
        key.public_key().verify(scheme, &msg, &sig.signature).unwrap();
    }
}

#[test]
fn raw_rsa_operations_agree_with_the_hashing_schemes() {
    use nekms_keys::rsa_raw::{digest_info, parse_digest_info, public_raw};
    use nekms_keys::RsaPadding;
    let key = PrivateKey::generate(KeySpec::Rsa2048, &seed(3)).unwrap();
    let public = key.public_key();
    for h in [Hash::Sha1, Hash::Sha224, Hash::Sha256, Hash::Sha384, Hash::Sha512] {
        let digest = h.digest(b"raw");
        let t = digest_info(h, &digest);
        assert_eq!(parse_digest_info(&t), Some((h, digest.as_slice())));
        // PKCS#1 v1.5 is deterministic: the public operation gives back the padded DigestInfo.
        let sig = key.sign(Scheme::RsaPkcs1(h), &Payload::Digest(digest.clone())).unwrap();
        let em = public_raw(public.spki(), &sig.signature).unwrap();
        assert_eq!(&em[..2], &[0, 1]);
        assert!(em.ends_with(&t));
        // The raw private operation inverts it.
        let s = key.rsa_decrypt(RsaPadding::Raw, &em, None).unwrap();
        assert_eq!(s.as_slice(), sig.signature.as_slice());
    }
    assert_eq!(parse_digest_info(b"not a DigestInfo"), None);
    // A value at or above the modulus, or not k bytes, is refused.
    assert!(key.rsa_decrypt(RsaPadding::Raw, &[0xff; 256], None).is_err());
    assert!(key.rsa_decrypt(RsaPadding::Raw, &[1; 255], None).is_err());
    // A salt that does not fit is a scheme error, not a panic.
    let too_long = Scheme::RsaPssParams(Hash::Sha512, Hash::Sha512, 200);
    assert!(matches!(key.sign(too_long, &Payload::Message(b"x".to_vec())), Err(KeyError::Scheme(_))));
    for s in ["rsa-pss-sha256-mgf1-sha1-salt-0", "rsa-pkcs1-sha224", "rsa-pss-sha1"] {
        assert_eq!(s.parse::<Scheme>().unwrap().name(), s);
    }
    assert!("rsa-pkcs1-raw".parse::<Scheme>().is_err(), "no scheme signs caller-chosen bytes");
}

#[test]
fn a_records_usage_is_sealed_with_it_and_only_rsa_keys_decrypt() {
    use nekms_keys::context::{USAGE, USAGE_SIGN_DECRYPT};
    let data_key = [9u8; 32];
    let rsa = PrivateKey::generate(KeySpec::Rsa2048, &seed(4)).unwrap();
    let mut template = record_for(&rsa, "tls");
    template.encryption_context.insert(USAGE.into(), USAGE_SIGN_DECRYPT.into());
    let r = seal_record(template, &data_key, &rsa).unwrap();
    r.check().unwrap();
    assert!(r.may_decrypt());
    assert!(open_record(&r, &data_key).is_ok());
    // The same key sealed to sign only cannot be relabelled afterwards: the context is in the seal's associated data.
    let sign_only = seal_record(record_for(&rsa, "tls"), &data_key, &rsa).unwrap();
    assert!(!sign_only.may_decrypt());
    let mut claimed = sign_only.clone();
    claimed.encryption_context.insert(USAGE.into(), USAGE_SIGN_DECRYPT.into());
    assert!(claimed.may_decrypt(), "the claim reads as decrypt...");
    assert!(open_record(&claimed, &data_key).is_err(), "...but the record no longer opens");
    // Other values, and the usage on a non-RSA key, are not records.
    let ec = PrivateKey::generate(KeySpec::P256, &seed(5)).unwrap();
    let mut ec_record = seal_record(record_for(&ec, "ec"), &data_key, &ec).unwrap();
    ec_record.encryption_context.insert(USAGE.into(), USAGE_SIGN_DECRYPT.into());
    assert!(ec_record.check().is_err() && !ec_record.may_decrypt());
    let mut odd = r.clone();
    odd.encryption_context.insert(USAGE.into(), "encrypt".into());
    assert!(odd.check().is_err());
}

#[test]
fn a_consensus_keys_usage_is_sealed_with_it_and_only_ed25519_and_secp256k1_carry_it() {
    use nekms_keys::context::{import_context_with_usage, Usage, USAGE, USAGE_PRIVVAL};
    let data_key = [9u8; 32];
    for spec in [KeySpec::Ed25519, KeySpec::Secp256k1] {
        let k = PrivateKey::generate(spec, &seed(6)).unwrap();
        let mut template = record_for(&k, "validator");
        template.encryption_context.insert(USAGE.into(), USAGE_PRIVVAL.into());
        let r = seal_record(template, &data_key, &k).unwrap();
        r.check().unwrap();
        assert!(r.is_privval() && !r.may_decrypt() && r.usage() == Usage::Privval, "{spec}");
        assert!(open_record(&r, &data_key).is_ok());
        // A plain signing key relabelled as a consensus key, or the reverse, no longer opens.
        let plain = seal_record(record_for(&k, "validator"), &data_key, &k).unwrap();
        assert!(!plain.is_privval());
        let mut relabelled = r.clone();
        relabelled.encryption_context.remove(USAGE);
        assert!(!relabelled.is_privval() && open_record(&relabelled, &data_key).is_err(), "{spec}: the usage is in the seal");
    }
    // Other specs never carry it.
    let p256 = PrivateKey::generate(KeySpec::P256, &seed(7)).unwrap();
    let mut wrong = seal_record(record_for(&p256, "p"), &data_key, &p256).unwrap();
    wrong.encryption_context.insert(USAGE.into(), USAGE_PRIVVAL.into());
    assert!(wrong.check().is_err());
    assert!(wrong.is_privval(), "still read as a consensus key, so the general Sign refuses it whatever its spec");
    // The import context names the usage, so a ciphertext made for one usage imports as no other.
    let plain = import_context_with_usage("v", KeySpec::Ed25519, &Default::default(), Usage::Sign).unwrap();
    let consensus = import_context_with_usage("v", KeySpec::Ed25519, &Default::default(), Usage::Privval).unwrap();
    assert_ne!(plain, consensus);
    assert_eq!(consensus.get(USAGE).map(String::as_str), Some(USAGE_PRIVVAL));
    assert!(Usage::from_flags(true, true).is_err());
    assert!(Usage::Privval.check_spec(KeySpec::Rsa2048).is_err() && Usage::SignDecrypt.check_spec(KeySpec::Ed25519).is_err());
    // Decrypt-only (AWS KMS's ENCRYPT_DECRYPT): RSA only, decrypts, never signs.
    let only: std::collections::BTreeMap<String, String> = [(USAGE.to_owned(), "decrypt".to_owned())].into();
    assert_eq!(Usage::of_context(&only, KeySpec::Rsa3072), Ok(Usage::Decrypt));
    assert!(Usage::of_context(&only, KeySpec::P256).is_err());
    assert!(Usage::Decrypt.decrypts() && !Usage::Decrypt.signs() && Usage::SignDecrypt.signs() && !Usage::Privval.signs());
}
