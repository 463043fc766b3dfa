//! The `nekms` binary as a user runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn nekms(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nekms")).env("NEKMS_DEV_DIR", dir).args(args).output().unwrap()
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn fail(out: Output) -> String {
    assert!(!out.status.success(), "unexpectedly succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stderr).unwrap()
}

fn real(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../attestation/tests/data").join(file)
}

fn image(dir: &Path) -> PathBuf {
    let p = dir.join("enclave.bin");
    std::fs::write(&p, b"pretend enclave binary").unwrap();
    p
}

#[test]
fn dev_init_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let first = ok(nekms(tmp.path(), &["dev", "init"]));
    assert!(first.contains("created root.pem"), "{first}");
    let second = ok(nekms(tmp.path(), &["dev", "init"]));
    assert!(!second.contains("created"), "{second}");
    assert!(second.contains("kept    root.pem"), "{second}");
}

#[test]
fn a_simulated_document_verifies_with_the_development_root_and_its_pcrs_match_pcr_sim() {
    let tmp = tempfile::tempdir().unwrap();
    ok(nekms(tmp.path(), &["dev", "init"]));
    let img = image(tmp.path());
    let doc = tmp.path().join("doc.cbor");
    ok(nekms(
        tmp.path(),
        &["attest", "sim", "--image", img.to_str().unwrap(), "--nonce", "0a0b", "--user-data", "cafe", "-o", doc.to_str().unwrap()],
    ));
    let pcrs: serde_json::Value = serde_json::from_str(&ok(nekms(tmp.path(), &["pcr", "sim", img.to_str().unwrap()]))).unwrap();
    let pcr0 = pcrs["Measurements"]["PCR0"].as_str().unwrap();
    let pcr2 = pcrs["Measurements"]["PCR2"].as_str().unwrap();

    let out = ok(nekms(
        tmp.path(),
        &[
            "attest",
            "verify",
            doc.to_str().unwrap(),
            "--dev-root",
            "--pcr",
            &format!("0={pcr0}"),
            "--pcr",
            &format!("2={pcr2}"),
            "--nonce",
            "0a0b",
        ],
    ));
    assert!(out.contains("OK: expected PCRs and nonce match"), "{out}");
    assert!(out.contains(&format!("PCR0  {pcr0}")), "{out}");
    assert!(out.contains("user_data:  2 bytes: cafe"), "{out}");

    let json: serde_json::Value =
        serde_json::from_str(&ok(nekms(tmp.path(), &["attest", "verify", doc.to_str().unwrap(), "--dev-root", "--json"]))).unwrap();
    assert_eq!(json["document"]["pcrs"]["0"], pcr0);
    assert_eq!(json["document"]["nonce"], "0a0b");

    // A different image has different PCRs, and the expectation fails naming PCR0.
    std::fs::write(&img, b"rebuilt enclave binary").unwrap();
    let other: serde_json::Value = serde_json::from_str(&ok(nekms(tmp.path(), &["pcr", "sim", img.to_str().unwrap()]))).unwrap();
    let other0 = other["Measurements"]["PCR0"].as_str().unwrap();
    assert_ne!(other0, pcr0);
    let err = fail(nekms(tmp.path(), &["attest", "verify", doc.to_str().unwrap(), "--dev-root", "--pcr", &format!("0={other0}")]));
    assert!(err.contains(&format!("PCR0 is {pcr0}; expected {other0}")), "{err}");

    // The default root is AWS's: a simulated document is not trusted by it.
    let err = fail(nekms(tmp.path(), &["attest", "verify", doc.to_str().unwrap()]));
    assert!(err.contains("not a pinned root"), "{err}");
}

#[test]
fn debug_mode_documents_have_zero_pcrs() {
    let tmp = tempfile::tempdir().unwrap();
    ok(nekms(tmp.path(), &["dev", "init"]));
    let img = image(tmp.path());
    let doc = tmp.path().join("debug.cbor");
    ok(nekms(tmp.path(), &["attest", "sim", "--image", img.to_str().unwrap(), "--debug-mode", "-o", doc.to_str().unwrap()]));
    let zero = "0".repeat(96);
    ok(nekms(
        tmp.path(),
        &["attest", "verify", doc.to_str().unwrap(), "--dev-root", "--pcr", &format!("0={zero}"), "--pcr", &format!("8={zero}")],
    ));
}

#[test]
fn real_documents_verify_at_their_own_time_and_expire_later() {
    let tmp = tempfile::tempdir().unwrap();
    let doc = real("attestation-blocky-nitrite.cbor");
    let out = ok(nekms(tmp.path(), &["attest", "verify", doc.to_str().unwrap(), "--at", "document"]));
    assert!(out.contains("module_id:  i-0a22e5c5f24d22174-enc0191cceb4289903f"), "{out}");
    let out = ok(nekms(tmp.path(), &["attest", "verify", doc.to_str().unwrap(), "--at", "2024-09-07T15:00:00Z"]));
    assert!(out.contains("Root-G1"), "{out}");
    let err = fail(nekms(tmp.path(), &["attest", "verify", doc.to_str().unwrap(), "--at", "2024-09-07T18:00:00Z"]));
    assert!(err.contains("leaf certificate") && err.contains("expired"), "{err}");
}

#[test]
fn bad_arguments_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let doc = real("attestation-evervault.cbor");
    let d = doc.to_str().unwrap();
    assert!(fail(nekms(tmp.path(), &["attest", "verify", d, "--pcr", "0=zz"])).contains("--pcr"));
    assert!(fail(nekms(tmp.path(), &["attest", "verify", d, "--pcr", "40=00"])).contains("index must be 0..31"));
    assert!(fail(nekms(tmp.path(), &["attest", "verify", d, "--at", "yesterday"])).contains("RFC 3339"));
    assert!(fail(nekms(tmp.path(), &["attest", "verify", "/nonexistent"])).contains("cannot read /nonexistent"));
    let err = fail(nekms(tmp.path(), &["attest", "sim", "-o", "/tmp/x.cbor", "--dir", tmp.path().join("none").to_str().unwrap()]));
    assert!(err.contains("nekms dev init"), "{err}");
    // Not a document at all.
    let junk = tmp.path().join("junk");
    std::fs::write(&junk, b"\xa0").unwrap();
    assert!(fail(nekms(tmp.path(), &["attest", "verify", junk.to_str().unwrap()])).contains("COSE_Sign1 must be a 4-element array"));
}

#[test]
fn the_demo_runs_and_says_what_it_did() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ok(nekms(tmp.path(), &["demo"]));
    for needle in [
        "[1] Development world",
        "OK: ES384 signature",
        "refused: COSE signature does not verify",
        "not a pinned root",
        "kms:RecipientAttestation:ImageSha384",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
    assert!(tmp.path().join("demo-attestation.cbor").exists());
    // The KMS step: three refusals, then the enclave opens the secret; the kmstool step: one more refusal;
    // two enclaves: three; the lock-out: four (root, the instance, the administrator reopening the key, the
    // instance minting an import ciphertext).
    assert_eq!(out.matches("refused: AccessDeniedException").count(), 11, "{out}");
    for needle in [
        "enclave 2 checked the record's origin document, signed \"Hello World\"",
        "enclave 1 signing the same record   -> refused: AccessDeniedException",
        "enclave 2 generating a key          -> refused: AccessDeniedException",
        "the account root decrypting it      -> refused: AccessDeniedException",
        // Ganache's first account, from its well-known key.
        "address 0x90F8bf6A479f320ead074411a4B0e7944Ea8c9C1",
        "it signed an EIP-1559 transaction: hash 0x",
        // A tmkms key as the validator signer's consensus key.
        "imported as a plain signing key      -> refused: rule import-ciphertext (InvalidCiphertextException)",
        "the general Sign with it             -> refused: rule key-usage",
        "the same prevote again               -> the same signature: true",
        "prevote for block B2 at 1/0          -> refused: conflicting data at height 1 round 0 step Prevote: already signed something else there (double sign refused)",
        "prevote at height 5000               -> refused: height 5000 is more than 1000 above",
        "precommit for B1 with an extension   -> signed, and its extension signed too (verified)",
        // The parent's attempts through the enclave itself.
        "the parent asking the enclave (RPC Decrypt) for the import plaintext -> refused: rule reserved-context",
        "the same with the context keys upper-cased                        -> refused: rule reserved-context",
        "the same through kmstool's port                                  -> refused: rule reserved-context",
        "importing it under another name     -> refused: rule import-ciphertext (InvalidCiphertextException)",
        "the parent asking the enclave for the record's data key   -> refused: rule reserved-context",
        "the parent asking for a document over its own RSA key     -> refused: rule attest-own-keys",
        "the parent asking for a data key to plant its own record  -> refused: rule reserved-context",
        "the record copied under another name                       -> refused: rule record-binding",
        "the parent asking enclave 2 itself for it -> refused: rule parent-decrypt",
        "the administrator reopening the key -> refused: AccessDeniedException",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
    assert!(out.contains("inside the enclave, its RSA key opens it: \"correct horse battery staple\""), "{out}");
    assert!(out.contains("the instance's own Decrypt               -> refused: AccessDeniedException"), "{out}");
    assert!(out.contains("kmstool client: Decrypt through the enclave -> \"Hello, KMS!\""), "{out}");
    let audit = std::fs::read_to_string(tmp.path().join("kms/audit.log")).unwrap();
    // Four in the lock-out step, two in the kmstool step (the instance's refusal, the enclave's Recipient decrypt),
    // three with two enclaves (enclave 1 and the instance refused, enclave 2's), eight in step 10 (root and the
    // instance refused, the import under another name and the consensus key's import as a plain key refused,
    // two imports, the first signature with the lock-out key, the signer opening the consensus key). The
    // parent's attempts through the enclave never reach KMS, nor the general Sign with the consensus key.
    assert_eq!(audit.lines().filter(|l| l.contains("\"eventName\":\"Decrypt\"")).count(), 17);
}

fn openssl(args: &[&str]) {
    let o = Command::new("openssl").args(args).output().unwrap();
    assert!(o.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn cms_inspect_shows_the_real_kms_responses_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../cms/tests/data");
    let out = ok(nekms(tmp.path(), &["cms", "inspect", dir.join("kms-ciphertext-for-recipient.ber").to_str().unwrap()]));
    assert!(out.contains("IV                   688c6d5f7f31b0fecedf09f2e7c99ac9"), "{out}");
    assert!(out.contains("subjectKeyIdentifier 7087b55df94ba3255cdf3c01840a2aa3ec93620625d601cf56f97bde7a3d2eb1 (32 bytes)"), "{out}");
    let json: serde_json::Value = serde_json::from_str(&ok(nekms(
        tmp.path(),
        &["cms", "inspect", "--json", dir.join("kms-ciphertext-for-recipient-ctx.ber").to_str().unwrap()],
    )))
    .unwrap();
    assert_eq!(json["iv"], "e66c1172aee0f2f7be34e3afc6b0e4fe");
    assert_eq!(json["recipient"]["subject_key_identifier"], "4e61df69e443b8e25c8ae83318cfc72d9b6a5176d2167790fdf819c086e6967a");
    assert_eq!(json["encrypted_content_len"], 16);
    assert_eq!(json["ber_indefinite_lengths"], true);
}

#[test]
fn cms_decrypt_opens_a_message_openssl_made() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n).to_str().unwrap().to_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &p("k.pem"),
        "-out",
        &p("c.pem"),
        "-subj",
        "/CN=enclave",
        "-days",
        "1",
    ]);
    std::fs::write(p("pt"), b"made by OpenSSL, opened by nekms").unwrap();
    openssl(&[
        "cms",
        "-encrypt",
        "-binary",
        "-in",
        &p("pt"),
        "-outform",
        "DER",
        "-out",
        &p("msg.der"),
        "-aes256",
        "-keyid",
        "-recip",
        &p("c.pem"),
        "-keyopt",
        "rsa_padding_mode:oaep",
        "-keyopt",
        "rsa_oaep_md:sha256",
        "-keyopt",
        "rsa_mgf1_md:sha256",
    ]);
    let out = ok(nekms(tmp.path(), &["cms", "decrypt", "--key", &p("k.pem"), &p("msg.der")]));
    assert_eq!(out, "made by OpenSSL, opened by nekms");

    // Another key: refused, naming the recipient the message is for.
    openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", &p("other.pem")]);
    let err = fail(nekms(tmp.path(), &["cms", "decrypt", "--key", &p("other.pem"), &p("msg.der")]));
    assert!(err.contains("the message is for recipient"), "{err}");
}

#[test]
fn the_kmstool_benchmark_runs_every_path_and_prints_ratios() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ok(nekms(tmp.path(), &["bench", "kmstool", "--seconds", "0.3", "--clients", "2"]));
    for path in [
        "KMS HTTPS directly (ref)",
        "enclave KMS client -> proxy -> KMS HTTPS",
        "kmstool Decrypt -> enclave -> proxy -> KMS",
        "client -> proxy -> KMS TCP",
    ] {
        let line = out.lines().find(|l| l.contains(path)).unwrap_or_else(|| panic!("no {path:?} in\n{out}"));
        let rps: f64 = line.split_whitespace().rev().nth(2).unwrap().parse().unwrap();
        assert!(rps > 0.0, "{line}");
    }
}

/// `nekms policy check` on policies shaped like the seeds' (written here)
/// and on nekms's own custody template.
#[test]
fn policy_check_says_who_can_do_what_and_flags_what_aws_reads_differently() {
    let tmp = tempfile::tempdir().unwrap();
    let check = |name: &str, policy: serde_json::Value| -> String {
        let f = tmp.path().join(name);
        std::fs::write(&f, policy.to_string()).unwrap();
        ok(nekms(tmp.path(), &["policy", "check", "--account", "111122223333", f.to_str().unwrap()]))
    };
    let instance = "arn:aws:iam::111122223333:role/instance";
    let admin = "arn:aws:iam::111122223333:role/admin";
    let zeros = "0".repeat(96);
    let pcr0 = "ab".repeat(48);
    let admin_wildcards = serde_json::json!({"Effect": "Allow", "Principal": {"AWS": admin},
        "Action": ["kms:Create*", "kms:Describe*", "kms:Put*", "kms:Disable*", "kms:Get*", "kms:ScheduleKeyDeletion"], "Resource": "*"});
    let enclave_decrypt = |pcr: &str| {
        serde_json::json!({"Effect": "Allow", "Principal": {"AWS": instance}, "Action": "kms:Decrypt", "Resource": "*",
        "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": pcr}}})
    };
    let root =
        serde_json::json!({"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"}, "Action": "kms:*", "Resource": "*"});

    // kmstool's: debug-mode zeros, the administrator with Put*/Create*.
    let out = check(
        "kmstool.json",
        serde_json::json!({"Statement": [enclave_decrypt(&zeros),
        {"Effect": "Allow", "Principal": {"AWS": instance}, "Action": "kms:Encrypt", "Resource": "*"}, admin_wildcards.clone()]}),
    );
    assert!(out.contains("names an all-zero PCR"), "{out}");
    assert!(
        out.contains("WARNING: whoever can change the policy can reopen the key") && out.contains("WARNING: whoever can create grants"),
        "{out}"
    );

    // The lock-out's: no root statement, yet the administrator can still reopen the key.
    let out = check("lockout.json", serde_json::json!({"Statement": [enclave_decrypt(&pcr0), admin_wildcards.clone()]}));
    assert!(
        out.contains(&format!("Who can decrypt: {instance}, when StringEqualsIgnoreCase kms:RecipientAttestation:ImageSha384 {pcr0}")),
        "{out}"
    );
    assert!(out.contains("Who can change the policy: arn:aws:iam::111122223333:role/admin"), "{out}");

    // The two-enclave document's: three PCRs ANDed in one Deny.
    let out = check(
        "two-enclave.json",
        serde_json::json!({"Statement": [root.clone(),
        {"Effect": "Deny", "Principal": {"AWS": instance}, "Action": "kms:Decrypt", "Resource": "*",
         "Condition": {"StringNotEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": "aa", "kms:RecipientAttestation:PCR1": "bb", "kms:RecipientAttestation:PCR2": "cc"}}}]}),
    );
    assert!(out.contains("fires only when every one differs"), "{out}");
    assert!(out.contains("may decrypt without an attestation document"), "the root statement: {out}");

    // tmkms's: the default root statement beside the enclave's Decrypt.
    let out = check("tmkms.json", serde_json::json!({"Statement": [root.clone(), enclave_decrypt(&pcr0)]}));
    assert!(
        out.contains("the account root, and whoever the account's IAM policies allow")
            && out.contains("may decrypt without an attestation document"),
        "{out}"
    );

    // A lock-out Deny written with ForAnyValue does not apply without a Recipient.
    let out = check(
        "for-any.json",
        serde_json::json!({"Statement": [root,
        {"Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*",
         "Condition": {"ForAnyValue:StringNotEquals": {"kms:RecipientAttestation:ImageSha384": pcr0}}}]}),
    );
    assert!(out.contains("ForAnyValue on the single-valued key kms:RecipientAttestation:ImageSha384"), "{out}");

    // nekms's own template: nobody reopens it, nothing misleading.
    let template = ok(nekms(tmp.path(), &["policy", "custody", "--account", "111122223333", "--pcr0", &pcr0]));
    let out = check("custody.json", serde_json::from_str(&template).unwrap());
    assert!(
        out.contains("Who can change the policy: nobody")
            && out.contains("Who can create grants: nobody")
            && out.ends_with("0 warning(s)\n"),
        "{out}"
    );
    // Trust by signer: the same guarantees, and the signer named in words; bootstrap --pcr8 prints the same final policy.
    let pcr8 = "5a".repeat(48);
    let signer = ok(nekms(tmp.path(), &["policy", "custody", "--account", "111122223333", "--pcr8", &pcr8]));
    assert_eq!(signer, ok(nekms(tmp.path(), &["policy", "bootstrap", "--account", "111122223333", "--pcr8", &pcr8])));
    let out = check("signer.json", serde_json::from_str(&signer).unwrap());
    assert!(
        out.contains("Who can change the policy: nobody")
            && out.contains(&format!("Trust by signer: every image signed with the certificate whose PCR8 is {pcr8}"))
            && out.ends_with("0 warning(s)\n"),
        "{out}"
    );
    assert!(fail(nekms(tmp.path(), &["policy", "custody", "--account", "111122223333", "--pcr8", &zeros])).contains("unsigned"));
    // A migration target with a window for the source's signer: said in words, no warning; misuses refused.
    let (target, acct) = ("0f".repeat(48), ["policy", "custody", "--account", "111122223333"]);
    let window = |extra: &[&str]| nekms(tmp.path(), &[&acct[..], extra].concat());
    let text = ok(window(&["--pcr8", &target, "--window-from-pcr8", &pcr8, "--window-until", "2030-01-01T00:00:00Z"]));
    let out = check("window.json", serde_json::from_str(&text).unwrap());
    assert!(
        out.contains(&format!("Migration window: images signed with the certificate whose PCR8 is {pcr8} may make data keys for records whose nekms:origin is migrated until 2030-01-01T00:00:00Z, and never decrypt"))
            && out.ends_with("0 warning(s)\n"),
        "{out}"
    );
    assert!(fail(window(&["--pcr0", &pcr0, "--pcr8", &target, "--window-from-pcr8", &pcr8, "--window-until", "2030-01-01T00:00:00Z"]))
        .contains("no --pcr0"));
    assert!(
        fail(window(&["--pcr8", &target, "--window-from-pcr8", &pcr8, "--window-until", "2030-01-01"])).contains("YYYY-MM-DDTHH:MM:SSZ")
    );
    assert!(fail(window(&["--pcr8", &target, "--window-from-pcr8", &target, "--window-until", "2030-01-01T00:00:00Z"]))
        .contains("trusts anyway"));
    let mut unsigned: serde_json::Value = serde_json::from_str(&signer).unwrap();
    unsigned["Statement"][0]["Condition"]["StringEqualsIgnoreCase"]["kms:RecipientAttestation:PCR8"] = serde_json::json!([zeros]);
    assert!(check("unsigned.json", unsigned).contains("all-zero PCR8, which every unsigned image"));
    assert!(fail(nekms(tmp.path(), &["policy", "check", tmp.path().join("missing.json").to_str().unwrap()])).contains("missing.json"));
}
