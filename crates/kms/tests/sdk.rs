//! The Rust AWS SDK (aws-sdk-kms, unchanged) against a real `nekms-kms`
//! process: key management, cryptography, and the seeds' lock-out scenarios
//! with simulated enclaves.

mod common;

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{
    DataKeyPairSpec, DataKeySpec, KeyEncryptionMechanism, KeySpec, KeyUsageType, MessageType, RecipientInfo, SigningAlgorithmSpec,
};
use common::{code, message, LocalKms};
use nekms_cms::RecipientKey;
use nekms_devworld::DevDir;
use nekms_nsm::measure::Measurement;
use nekms_nsm::{AttestationRequest, Nsm, SimConfig, SimulatedNsm};

const ACCOUNT: &str = "111122223333";

/// A simulated enclave: its NSM and its ephemeral recipient key.
struct Enclave {
    nsm: SimulatedNsm,
    key: RecipientKey,
    pcr0: String,
}

impl Enclave {
    fn boot(dev: &DevDir, image: &[u8]) -> Enclave {
        let measurement = Measurement::of_image(image, None);
        let pcr0 = measurement.pcr0.to_hex();
        let nsm = SimulatedNsm::boot(SimConfig::new(measurement), dev.document_signer().unwrap());
        Enclave { nsm, key: RecipientKey::generate().unwrap(), pcr0 }
    }

    fn document(&self) -> Vec<u8> {
        self.nsm.attestation(AttestationRequest { public_key: Some(self.key.public_key_der().unwrap()), ..Default::default() }).unwrap()
    }

    fn recipient(&self) -> RecipientInfo {
        RecipientInfo::builder()
            .key_encryption_algorithm(KeyEncryptionMechanism::RsaesOaepSha256)
            .attestation_document(Blob::new(self.document()))
            .build()
    }
}

fn instance_role() -> String {
    format!("arn:aws:iam::{ACCOUNT}:role/nekms-instance")
}

fn admin_role() -> String {
    format!("arn:aws:iam::{ACCOUNT}:role/nekms-key-admin")
}

/// kmstool.md's key policy: encrypt from the instance, decrypt only from the
/// enclave image, administration by the key administrators.
fn kmstool_policy(pcr0: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "Enable decrypt from enclave", "Effect": "Allow", "Principal": {"AWS": instance_role()},
             "Action": ["kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyPair"], "Resource": "*",
             "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": pcr0}}},
            {"Sid": "Enable encrypt from instance", "Effect": "Allow", "Principal": {"AWS": instance_role()},
             "Action": "kms:Encrypt", "Resource": "*"},
            {"Sid": "Allow access for Key Administrators", "Effect": "Allow", "Principal": {"AWS": admin_role()},
             "Action": ["kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*", "kms:Revoke*",
                        "kms:Disable*", "kms:Get*", "kms:Delete*", "kms:TagResource", "kms:UntagResource",
                        "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion"],
             "Resource": "*"}
        ]
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn key_management_and_symmetric_cryptography() {
    let kms = LocalKms::start();
    let admin = kms.client("admin");
    let key = admin
        .create_key()
        .description("sdk test")
        .tags(aws_sdk_kms::types::Tag::builder().tag_key("team").tag_value("a").build().unwrap())
        .send()
        .await
        .unwrap();
    let meta = key.key_metadata().unwrap();
    let key_id = meta.key_id().to_owned();
    assert_eq!(meta.key_spec(), Some(&KeySpec::SymmetricDefault));
    assert!(meta.arn().unwrap().starts_with(&format!("arn:aws:kms:us-east-1:{ACCOUNT}:key/")));
    admin.create_alias().alias_name("alias/sdk").target_key_id(&key_id).send().await.unwrap();
    assert_eq!(
        code(admin.create_alias().alias_name("alias/sdk").target_key_id(&key_id).send().await.unwrap_err()),
        "AlreadyExistsException"
    );

    // Policies: the default delegates to IAM; put and get round-trip.
    let policy = admin.get_key_policy().key_id("alias/sdk").send().await.unwrap();
    assert!(policy.policy().unwrap().contains(&format!("arn:aws:iam::{ACCOUNT}:root")));
    let listed = admin.list_key_policies().key_id(&key_id).send().await.unwrap();
    assert_eq!(listed.policy_names(), ["default"]);

    // Encrypt / decrypt with an encryption context; alias names work as KeyId.
    let ct = admin
        .encrypt()
        .key_id("alias/sdk")
        .plaintext(Blob::new("attack at dawn"))
        .encryption_context("purpose", "test")
        .send()
        .await
        .unwrap();
    let blob = ct.ciphertext_blob().unwrap().clone();
    let pt = admin.decrypt().ciphertext_blob(blob.clone()).encryption_context("purpose", "test").send().await.unwrap();
    assert_eq!(pt.plaintext().unwrap().as_ref(), b"attack at dawn");
    assert_eq!(pt.key_id(), meta.arn());
    let wrong = admin.decrypt().ciphertext_blob(blob.clone()).encryption_context("purpose", "other").send().await.unwrap_err();
    assert_eq!(code(wrong), "InvalidCiphertextException");
    let mut tampered = blob.as_ref().to_vec();
    *tampered.last_mut().unwrap() ^= 1;
    assert_eq!(
        code(admin.decrypt().ciphertext_blob(Blob::new(tampered)).encryption_context("purpose", "test").send().await.unwrap_err()),
        "InvalidCiphertextException"
    );

    // A second key named in Decrypt is the wrong key.
    let other = admin.create_key().send().await.unwrap().key_metadata().unwrap().key_id().to_owned();
    let e = admin.decrypt().ciphertext_blob(blob.clone()).key_id(&other).encryption_context("purpose", "test").send().await.unwrap_err();
    assert_eq!(code(e), "IncorrectKeyException");

    // ReEncrypt moves the ciphertext to the other key.
    let re = admin
        .re_encrypt()
        .ciphertext_blob(blob.clone())
        .source_encryption_context("purpose", "test")
        .destination_key_id(&other)
        .send()
        .await
        .unwrap();
    let back = admin.decrypt().ciphertext_blob(re.ciphertext_blob().unwrap().clone()).send().await.unwrap();
    assert_eq!(back.plaintext().unwrap().as_ref(), b"attack at dawn");

    // Data keys and random bytes.
    let dk = admin.generate_data_key().key_id(&key_id).key_spec(DataKeySpec::Aes256).send().await.unwrap();
    assert_eq!(dk.plaintext().unwrap().as_ref().len(), 32);
    let opened = admin.decrypt().ciphertext_blob(dk.ciphertext_blob().unwrap().clone()).send().await.unwrap();
    assert_eq!(opened.plaintext().unwrap().as_ref(), dk.plaintext().unwrap().as_ref());
    let dk = admin.generate_data_key_without_plaintext().key_id(&key_id).number_of_bytes(64).send().await.unwrap();
    assert!(dk.ciphertext_blob().is_some());
    let pair = admin.generate_data_key_pair().key_id(&key_id).key_pair_spec(DataKeyPairSpec::EccNistP256).send().await.unwrap();
    assert!(pair.private_key_plaintext().is_some() && pair.public_key().is_some());
    let random = admin.generate_random().number_of_bytes(1024).send().await.unwrap();
    assert_eq!(random.plaintext().unwrap().as_ref().len(), 1024);
    assert_eq!(code(admin.generate_random().number_of_bytes(1025).send().await.unwrap_err()), "ValidationException");
    assert_eq!(
        code(admin.encrypt().key_id(&key_id).plaintext(Blob::new(vec![0u8; 4097])).send().await.unwrap_err()),
        "ValidationException"
    );

    // Rotation: old ciphertexts still decrypt.
    admin.enable_key_rotation().key_id(&key_id).send().await.unwrap();
    assert!(admin.get_key_rotation_status().key_id(&key_id).send().await.unwrap().key_rotation_enabled());
    admin.rotate_key_on_demand().key_id(&key_id).send().await.unwrap();
    let after = admin.encrypt().key_id(&key_id).plaintext(Blob::new("new")).send().await.unwrap();
    assert_eq!(nekms_kms::blob::peek(blob.as_ref()).unwrap().material_version, 1);
    assert_eq!(nekms_kms::blob::peek(after.ciphertext_blob().unwrap().as_ref()).unwrap().material_version, 2);
    let old = admin.decrypt().ciphertext_blob(blob.clone()).encryption_context("purpose", "test").send().await.unwrap();
    assert_eq!(old.plaintext().unwrap().as_ref(), b"attack at dawn");

    // Tags.
    admin
        .tag_resource()
        .key_id(&key_id)
        .tags(aws_sdk_kms::types::Tag::builder().tag_key("env").tag_value("dev").build().unwrap())
        .send()
        .await
        .unwrap();
    admin.untag_resource().key_id(&key_id).tag_keys("team").send().await.unwrap();
    let tags = admin.list_resource_tags().key_id(&key_id).send().await.unwrap();
    assert_eq!(tags.tags().iter().map(|t| t.tag_key()).collect::<Vec<_>>(), ["env"]);

    // Disabled and pending-deletion keys refuse cryptography.
    admin.disable_key().key_id(&key_id).send().await.unwrap();
    assert_eq!(code(admin.encrypt().key_id(&key_id).plaintext(Blob::new("x")).send().await.unwrap_err()), "DisabledException");
    admin.enable_key().key_id(&key_id).send().await.unwrap();
    let scheduled = admin.schedule_key_deletion().key_id(&key_id).pending_window_in_days(7).send().await.unwrap();
    assert_eq!(scheduled.pending_window_in_days(), Some(7));
    assert_eq!(code(admin.encrypt().key_id(&key_id).plaintext(Blob::new("x")).send().await.unwrap_err()), "KMSInvalidStateException");
    assert_eq!(
        code(admin.schedule_key_deletion().key_id(&key_id).pending_window_in_days(6).send().await.unwrap_err()),
        "ValidationException"
    );
    admin.cancel_key_deletion().key_id(&key_id).send().await.unwrap();
    admin.enable_key().key_id(&key_id).send().await.unwrap();

    // Unknown keys and aliases.
    assert_eq!(code(admin.describe_key().key_id("alias/none").send().await.unwrap_err()), "NotFoundException");
    assert_eq!(code(admin.describe_key().key_id("00000000-0000-4000-8000-000000000000").send().await.unwrap_err()), "NotFoundException");

    // Listing with pagination.
    let page = admin.list_keys().limit(1).send().await.unwrap();
    assert!(page.truncated() && page.keys().len() == 1);
    let rest = admin.list_keys().marker(page.next_marker().unwrap()).send().await.unwrap();
    assert_eq!(rest.keys().len(), 1);
    let aliases = admin.list_aliases().send().await.unwrap();
    assert_eq!(aliases.aliases().iter().filter_map(|a| a.alias_name()).collect::<Vec<_>>(), ["alias/sdk"]);

    // The state survives a restart ...
    let mut kms = kms;
    kms.restart();
    let admin = kms.client("admin");
    let old = admin.decrypt().ciphertext_blob(blob).encryption_context("purpose", "test").send().await.unwrap();
    assert_eq!(old.plaintext().unwrap().as_ref(), b"attack at dawn");
    // ... and a SIGKILL right after acknowledged writes loses none of them.
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let k = admin.create_key().description(format!("crash {i}")).send().await.unwrap();
        acknowledged.push(k.key_metadata().unwrap().key_id().to_owned());
    }
    kms.crash_and_restart();
    let admin = kms.client("admin");
    for id in acknowledged {
        assert!(admin.describe_key().key_id(&id).send().await.is_ok(), "{id} lost in the crash");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_keys_sign_verify_and_publish_their_public_key() {
    let kms = LocalKms::start();
    let admin = kms.client("admin");
    for (spec, alg) in [
        (KeySpec::EccNistP256, SigningAlgorithmSpec::EcdsaSha256),
        (KeySpec::EccSecgP256K1, SigningAlgorithmSpec::EcdsaSha256),
        (KeySpec::EccNistP384, SigningAlgorithmSpec::EcdsaSha384),
        (KeySpec::Rsa2048, SigningAlgorithmSpec::RsassaPssSha256),
    ] {
        let key = admin.create_key().key_usage(KeyUsageType::SignVerify).key_spec(spec.clone()).send().await.unwrap();
        let id = key.key_metadata().unwrap().key_id().to_owned();
        let sig = admin.sign().key_id(&id).message(Blob::new("hello")).signing_algorithm(alg.clone()).send().await.unwrap();
        let ok = admin
            .verify()
            .key_id(&id)
            .message(Blob::new("hello"))
            .signature(sig.signature().unwrap().clone())
            .signing_algorithm(alg.clone())
            .send()
            .await
            .unwrap();
        assert!(ok.signature_valid(), "{spec:?}");
        let bad = admin
            .verify()
            .key_id(&id)
            .message(Blob::new("hellp"))
            .signature(sig.signature().unwrap().clone())
            .signing_algorithm(alg.clone())
            .send()
            .await
            .unwrap_err();
        assert_eq!(code(bad), "KMSInvalidSignatureException");
        // A digest signed as DIGEST verifies against the raw message.
        let digest = aws_lc_rs::digest::digest(
            if alg == SigningAlgorithmSpec::EcdsaSha384 { &aws_lc_rs::digest::SHA384 } else { &aws_lc_rs::digest::SHA256 },
            b"hello",
        );
        let dsig = admin
            .sign()
            .key_id(&id)
            .message(Blob::new(digest.as_ref()))
            .message_type(MessageType::Digest)
            .signing_algorithm(alg.clone())
            .send()
            .await
            .unwrap();
        assert!(admin
            .verify()
            .key_id(&id)
            .message(Blob::new("hello"))
            .signature(dsig.signature().unwrap().clone())
            .signing_algorithm(alg.clone())
            .send()
            .await
            .unwrap()
            .signature_valid());
        let public = admin.get_public_key().key_id(&id).send().await.unwrap();
        assert!(public.public_key().unwrap().as_ref().len() > 60);
        // Symmetric operations on a signing key are the wrong usage.
        assert_eq!(code(admin.encrypt().key_id(&id).plaintext(Blob::new("x")).send().await.unwrap_err()), "InvalidKeyUsageException");
    }
    let ec = admin.create_key().key_usage(KeyUsageType::SignVerify).key_spec(KeySpec::EccNistP256).send().await.unwrap();
    let e = admin
        .sign()
        .key_id(ec.key_metadata().unwrap().key_id())
        .message(Blob::new("x"))
        .signing_algorithm(SigningAlgorithmSpec::RsassaPssSha256)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(e), "InvalidKeyUsageException");

    // Key agreement: both sides derive the same secret.
    let ka = admin.create_key().key_usage(KeyUsageType::KeyAgreement).key_spec(KeySpec::EccNistP256).send().await.unwrap();
    let ka_id = ka.key_metadata().unwrap().key_id().to_owned();
    let peer = nekms_kms::crypto::generate_agreement(nekms_kms::model::KeySpec::EccNistP256).unwrap();
    let derived = admin
        .derive_shared_secret()
        .key_id(&ka_id)
        .key_agreement_algorithm(aws_sdk_kms::types::KeyAgreementAlgorithmSpec::Ecdh)
        .public_key(Blob::new(peer.public_spki.clone()))
        .send()
        .await
        .unwrap();
    let kms_public = admin.get_public_key().key_id(&ka_id).send().await.unwrap();
    let ours = nekms_kms::crypto::derive_shared_secret(
        nekms_kms::model::KeySpec::EccNistP256,
        &peer.private_pkcs8,
        kms_public.public_key().unwrap().as_ref(),
    )
    .unwrap();
    assert_eq!(derived.shared_secret().unwrap().as_ref(), &ours[..]);
    // secp256k1 is for signing only, as in KMS.
    let e = admin.create_key().key_usage(KeyUsageType::KeyAgreement).key_spec(KeySpec::EccSecgP256K1).send().await.unwrap_err();
    assert_eq!(code(e), "ValidationException");
}

#[tokio::test(flavor = "multi_thread")]
async fn kmstool_policy_only_the_enclave_image_decrypts_and_root_is_locked_out() {
    let kms = LocalKms::start();
    let dev = kms.dev();
    let good = Enclave::boot(&dev, b"the enclave image the policy names");
    let wrong = Enclave::boot(&dev, b"some other enclave image");
    let admin = kms.client("admin");
    let instance = kms.client("instance");
    let root = kms.client("root");

    // The root user cannot create a key whose policy would lock it out of changing it ...
    let e = root.create_key().policy(kmstool_policy(&good.pcr0)).send().await.unwrap_err();
    assert_eq!(code(e), "MalformedPolicyDocumentException");
    // ... but the key administrator can.
    let key = admin.create_key().description("kmstool").policy(kmstool_policy(&good.pcr0)).send().await.unwrap();
    let arn = key.key_metadata().unwrap().arn().unwrap().to_owned();

    // The instance encrypts.
    let ct = instance.encrypt().key_id(&arn).plaintext(Blob::new("the secret")).send().await.unwrap();
    let blob = ct.ciphertext_blob().unwrap().clone();

    // The instance role without attestation: denied.
    let e = instance.decrypt().ciphertext_blob(blob.clone()).send().await.unwrap_err();
    let m = message(&e);
    assert_eq!(code(e), "AccessDeniedException");
    assert!(m.contains("kms:Decrypt") && m.contains("nekms-instance"), "{m}");
    // A simulated enclave with the wrong PCR0: denied.
    let e = instance.decrypt().ciphertext_blob(blob.clone()).recipient(wrong.recipient()).send().await.unwrap_err();
    assert_eq!(code(e), "AccessDeniedException");
    // The right image: allowed, and the plaintext only comes back encrypted to the enclave.
    let out = instance.decrypt().ciphertext_blob(blob.clone()).recipient(good.recipient()).send().await.unwrap();
    assert!(out.plaintext().is_none());
    let sealed = out.ciphertext_for_recipient().unwrap().as_ref();
    assert_eq!(&good.key.open(sealed).unwrap()[..], b"the secret");
    assert!(wrong.key.open(sealed).is_err());
    // The administrators manage the key but cannot decrypt, even with the enclave's document.
    assert!(admin.describe_key().key_id(&arn).send().await.is_ok());
    assert_eq!(
        code(admin.decrypt().ciphertext_blob(blob.clone()).recipient(good.recipient()).send().await.unwrap_err()),
        "AccessDeniedException"
    );
    // The root user is locked out of everything, including the policy.
    assert_eq!(
        code(root.decrypt().ciphertext_blob(blob.clone()).recipient(good.recipient()).send().await.unwrap_err()),
        "AccessDeniedException"
    );
    assert_eq!(
        code(root.put_key_policy().key_id(&arn).policy(kmstool_policy(&good.pcr0)).send().await.unwrap_err()),
        "AccessDeniedException"
    );
    assert_eq!(code(root.schedule_key_deletion().key_id(&arn).send().await.unwrap_err()), "AccessDeniedException");

    // GenerateDataKey for the enclave: only CiphertextForRecipient carries the key.
    let dk = instance.generate_data_key().key_id(&arn).key_spec(DataKeySpec::Aes256).recipient(good.recipient()).send().await.unwrap();
    assert!(dk.plaintext().is_none());
    let data_key = good.key.open(dk.ciphertext_for_recipient().unwrap().as_ref()).unwrap();
    assert_eq!(data_key.len(), 32);
    let again = instance.decrypt().ciphertext_blob(dk.ciphertext_blob().unwrap().clone()).recipient(good.recipient()).send().await.unwrap();
    assert_eq!(good.key.open(again.ciphertext_for_recipient().unwrap().as_ref()).unwrap(), data_key);
    let pair = instance
        .generate_data_key_pair()
        .key_id(&arn)
        .key_pair_spec(DataKeyPairSpec::EccSecgP256K1)
        .recipient(good.recipient())
        .send()
        .await
        .unwrap();
    assert!(pair.private_key_plaintext().is_none());
    let private = good.key.open(pair.ciphertext_for_recipient().unwrap().as_ref()).unwrap();
    assert_eq!(
        nekms_kms::crypto::public_key(nekms_kms::model::KeySpec::EccSecgP256k1, &private).unwrap(),
        pair.public_key().unwrap().as_ref()
    );

    // The audit log records the enclave's image for Recipient requests, and no secrets.
    let lines = kms.audit_lines();
    let allowed: Vec<_> = lines.iter().filter(|l| l["eventName"] == "Decrypt" && l["errorCode"].is_null()).collect();
    assert!(!allowed.is_empty());
    assert_eq!(allowed[0]["additionalEventData"]["recipient"]["attestationDocumentEnclaveImageDigest"], good.pcr0);
    assert!(allowed[0]["additionalEventData"]["recipient"]["attestationDocumentModuleId"].as_str().unwrap().starts_with("i-0"));
    let text = std::fs::read_to_string(kms.dir.path().join("kms/audit.log")).unwrap();
    let b64 = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b);
    assert!(!text.contains(&b64(b"the secret")) && !text.contains(&b64(blob.as_ref())));
}

#[tokio::test(flavor = "multi_thread")]
async fn recipient_documents_that_fail_verification_are_refused() {
    let kms = LocalKms::start();
    let admin = kms.client("admin");
    let key = admin.create_key().send().await.unwrap().key_metadata().unwrap().key_id().to_owned();
    let ct = admin.encrypt().key_id(&key).plaintext(Blob::new("x")).send().await.unwrap().ciphertext_blob().unwrap().clone();
    let enclave = Enclave::boot(&kms.dev(), b"image");

    let recipient = |doc: Vec<u8>| {
        RecipientInfo::builder()
            .key_encryption_algorithm(KeyEncryptionMechanism::RsaesOaepSha256)
            .attestation_document(Blob::new(doc))
            .build()
    };
    let refused = |e: aws_sdk_kms::error::SdkError<aws_sdk_kms::operation::decrypt::DecryptError, _>| {
        let m = message(&e);
        assert_eq!(code(e), "ValidationException", "{m}");
        m
    };
    // A changed payload byte breaks the signature.
    let mut doc = enclave.document();
    let n = doc.len();
    doc[n - 120] ^= 1;
    let m = refused(admin.decrypt().ciphertext_blob(ct.clone()).recipient(recipient(doc)).send().await.unwrap_err());
    assert!(m.contains("attestation document"), "{m}");
    // A document from another development world's root.
    let elsewhere = tempfile::tempdir().unwrap();
    let other_dev = DevDir::new(elsewhere.path());
    other_dev.init().unwrap();
    let foreign = Enclave::boot(&other_dev, b"image");
    let m = refused(admin.decrypt().ciphertext_blob(ct.clone()).recipient(foreign.recipient()).send().await.unwrap_err());
    assert!(m.contains("root"), "{m}");
    // Garbage.
    refused(admin.decrypt().ciphertext_blob(ct.clone()).recipient(recipient(b"not a document".to_vec())).send().await.unwrap_err());
    // A document without a public key.
    let no_key = enclave.nsm.attestation(AttestationRequest::default()).unwrap();
    let m = refused(admin.decrypt().ciphertext_blob(ct.clone()).recipient(recipient(no_key)).send().await.unwrap_err());
    assert!(m.contains("public_key"), "{m}");
    // A public key that is not RSA-2048.
    let ec = nekms_kms::crypto::generate(nekms_kms::model::KeySpec::EccNistP256).unwrap();
    let ec_doc = enclave.nsm.attestation(AttestationRequest { public_key: Some(ec.public_spki), ..Default::default() }).unwrap();
    let m = refused(admin.decrypt().ciphertext_blob(ct.clone()).recipient(recipient(ec_doc)).send().await.unwrap_err());
    assert!(m.contains("RSA"), "{m}");
    // A real AWS document: this KMS trusts only the development root unless told otherwise.
    let real = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../attestation/tests/data/attestation-evervault.cbor")).unwrap();
    let m = refused(admin.decrypt().ciphertext_blob(ct.clone()).recipient(recipient(real)).send().await.unwrap_err());
    assert!(m.contains("root"), "{m}");
    // With everything right, the same key decrypts for the enclave.
    let ok = admin.decrypt().ciphertext_blob(ct).recipient(enclave.recipient()).send().await.unwrap();
    assert_eq!(&enclave.key.open(ok.ciphertext_for_recipient().unwrap().as_ref()).unwrap()[..], b"x");
}

/// two-enclave-attestation-demo.md: enclave 1 makes data keys, enclave 2
/// decrypts them, each denied the other's operation by a Deny statement
/// listing ImageSha384/PCR0/PCR1/PCR2 under one StringNotEqualsIgnoreCase.
#[tokio::test(flavor = "multi_thread")]
async fn two_enclave_policy_each_image_does_only_its_own_operation() {
    let kms = LocalKms::start();
    let dev = kms.dev();
    // Two images whose PCR0, PCR1 and PCR2 all differ (the seed's Deny
    // statements AND their keys, so a shared PCR would let the other image
    // through; tests/policy.rs pins that).
    let boot = |image: &[u8], kernel: &[u8]| {
        let mut m = Measurement::of_image(image, None);
        m.pcr1 = nekms_attestation::Pcr48::ZERO.extended(kernel);
        let pcrs = [m.pcr0.to_hex(), m.pcr1.to_hex(), m.pcr2.to_hex()];
        let nsm = SimulatedNsm::boot(SimConfig::new(m), dev.document_signer().unwrap());
        (Enclave { nsm, key: RecipientKey::generate().unwrap(), pcr0: pcrs[0].clone() }, pcrs)
    };
    let (e1, p1) = boot(b"NitroEnclaveDemo-1 image", b"kernel 1");
    let (e2, p2) = boot(b"NitroEnclaveDemo-2 image", b"kernel 2");
    let deny = |sid: &str, actions: serde_json::Value, p: &[String; 3]| {
        serde_json::json!({"Sid": sid, "Effect": "Deny", "Principal": {"AWS": instance_role()}, "Action": actions, "Resource": "*",
            "Condition": {"StringNotEqualsIgnoreCase": {
                "kms:RecipientAttestation:ImageSha384": p[0], "kms:RecipientAttestation:PCR0": p[0],
                "kms:RecipientAttestation:PCR1": p[1], "kms:RecipientAttestation:PCR2": p[2]}}})
    };
    let policy = serde_json::json!({"Version": "2012-10-17", "Statement": [
        {"Sid": "Enable IAM User Permissions", "Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:root")}, "Action": "kms:*", "Resource": "*"},
        {"Sid": "Role", "Effect": "Allow", "Principal": {"AWS": instance_role()}, "Action": "kms:*", "Resource": "*"},
        deny("Only Allow NitroEnclaveDemo-1", serde_json::json!(["kms:GenerateRandom", "kms:GenerateDataKey"]), &p1),
        deny("Only Allow NitroEnclaveDemo-2", serde_json::json!(["kms:Decrypt"]), &p2),
    ]});
    let admin = kms.client("admin");
    let instance = kms.client("instance");
    let arn = admin.create_key().policy(policy.to_string()).send().await.unwrap().key_metadata().unwrap().arn().unwrap().to_owned();

    // Enclave 1 generates a data key; only it can read the plaintext copy.
    let dk = instance.generate_data_key().key_id(&arn).key_spec(DataKeySpec::Aes256).recipient(e1.recipient()).send().await.unwrap();
    let data_key = e1.key.open(dk.ciphertext_for_recipient().unwrap().as_ref()).unwrap();
    // Enclave 2 decrypts the stored ciphertext of the data key.
    let blob = dk.ciphertext_blob().unwrap().clone();
    let out = instance.decrypt().ciphertext_blob(blob.clone()).recipient(e2.recipient()).send().await.unwrap();
    assert_eq!(e2.key.open(out.ciphertext_for_recipient().unwrap().as_ref()).unwrap(), data_key);
    // Each is denied the other's operation, explicitly; so is the bare instance role.
    let e = instance.decrypt().ciphertext_blob(blob.clone()).recipient(e1.recipient()).send().await.unwrap_err();
    let m = message(&e);
    assert_eq!(code(e), "AccessDeniedException");
    assert!(m.contains("with an explicit deny in a resource-based policy"), "{m}");
    let e = instance.generate_data_key().key_id(&arn).key_spec(DataKeySpec::Aes256).recipient(e2.recipient()).send().await.unwrap_err();
    assert_eq!(code(e), "AccessDeniedException");
    let e = instance.generate_data_key().key_id(&arn).key_spec(DataKeySpec::Aes256).send().await.unwrap_err();
    assert!(message(&e).contains("explicit deny"), "{}", message(&e));
    let _ = (e1.pcr0, e2.pcr0);
}
