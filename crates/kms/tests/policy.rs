//! Key policies behave as AWS evaluates them, and as the seed documents say.

use nekms_kms::policy::{default_key_policy, evaluate, Decision, Policy, RequestContext};

const ACCOUNT: &str = "111122223333";
const ROOT: &str = "arn:aws:iam::111122223333:root";
const ROLE: &str = "arn:aws:iam::111122223333:role/instance";
const ADMIN: &str = "arn:aws:iam::111122223333:role/key-admin";
const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
const PCR0: &str = "d425a8dddca64416b9bd2b1a352978198ee2cf2adfea7b899c3b91b441988ce40c867ed6f6234b8de88ec254d40c4bca";
const OTHER: &str = "17b041934b2255ae55b07433012e4d41999feda85eb839970645458a35f8571360f32ca68b5178dca8bdecf9fd37c010";

fn ctx(principal: &str, action: &str) -> RequestContext {
    RequestContext::new(principal, ACCOUNT, action, KEY)
}

fn attested(principal: &str, action: &str, pcr0: &str) -> RequestContext {
    let mut c = ctx(principal, action);
    c.set("kms:RecipientAttestation:ImageSha384", pcr0);
    c.set("kms:RecipientAttestation:PCR0", pcr0);
    c
}

fn key_admin_statement() -> String {
    format!(
        r#"{{"Sid": "Allow access for Key Administrators", "Effect": "Allow", "Principal": {{"AWS": "{ADMIN}"}},
            "Action": ["kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*",
                       "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*", "kms:TagResource",
                       "kms:UntagResource", "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion"],
            "Resource": "*"}}"#
    )
}

/// kms-lockout-demo.md, step 9: the enclave statement added, the root block
/// deleted, kms:Decrypt removed from the administrators.
fn lockout_policy() -> Policy {
    let text = format!(
        r#"{{"Version": "2012-10-17", "Statement": [
            {{"Sid": "Enable decrypt from enclave", "Effect": "Allow", "Principal": {{"AWS": "{ROLE}"}},
              "Action": "kms:Decrypt", "Resource": "*",
              "Condition": {{"StringEqualsIgnoreCase": {{"kms:RecipientAttestation:ImageSha384": "{PCR0}"}}}}}},
            {}
        ]}}"#,
        key_admin_statement()
    );
    Policy::parse(&text, true).unwrap()
}

#[test]
fn lockout_the_root_user_is_denied_everything_including_changing_the_policy() {
    let p = lockout_policy();
    for action in ["kms:Decrypt", "kms:Encrypt", "kms:PutKeyPolicy", "kms:ScheduleKeyDeletion", "kms:DescribeKey"] {
        assert_eq!(evaluate(&p, &[], &ctx(ROOT, action)), Decision::ImplicitDeny, "{action}");
        assert_eq!(evaluate(&p, &[], &attested(ROOT, action, PCR0)), Decision::ImplicitDeny, "{action} with attestation");
    }
}

#[test]
fn lockout_the_instance_role_decrypts_only_from_the_enclave_image() {
    let p = lockout_policy();
    assert_eq!(evaluate(&p, &[], &ctx(ROLE, "kms:Decrypt")), Decision::ImplicitDeny, "no attestation");
    assert_eq!(evaluate(&p, &[], &attested(ROLE, "kms:Decrypt", OTHER)), Decision::ImplicitDeny, "wrong PCR0");
    assert_eq!(evaluate(&p, &[], &attested(ROLE, "kms:Decrypt", PCR0)), Decision::Allow);
    assert_eq!(evaluate(&p, &[], &attested(ROLE, "kms:Decrypt", &PCR0.to_uppercase())), Decision::Allow, "IgnoreCase");
    // Its identity policy (kms:Encrypt) does not help: the key policy no longer delegates to IAM.
    let iam =
        Policy::parse(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["kms:Encrypt"],"Resource":["*"]}]}"#, false)
            .unwrap();
    assert_eq!(evaluate(&p, &[iam], &ctx(ROLE, "kms:Encrypt")), Decision::ImplicitDeny);
}

#[test]
fn lockout_administrators_manage_but_cannot_decrypt() {
    let p = lockout_policy();
    assert_eq!(evaluate(&p, &[], &ctx(ADMIN, "kms:DescribeKey")), Decision::Allow);
    assert_eq!(evaluate(&p, &[], &ctx(ADMIN, "kms:PutKeyPolicy")), Decision::Allow);
    assert_eq!(evaluate(&p, &[], &ctx(ADMIN, "kms:Decrypt")), Decision::ImplicitDeny);
    assert_eq!(evaluate(&p, &[], &attested(ADMIN, "kms:Decrypt", PCR0)), Decision::ImplicitDeny);
}

/// kmstool.md: Decrypt only from the enclave (debug mode: all-zero PCR0), Encrypt from the instance.
#[test]
fn kmstool_policy_encrypt_from_instance_decrypt_from_enclave() {
    let zero = "0".repeat(96);
    let text = format!(
        r#"{{"Version": "2012-10-17", "Statement": [
            {{"Sid": "Enable decrypt from enclave", "Effect": "Allow", "Principal": {{"AWS": "{ROLE}"}},
              "Action": "kms:Decrypt", "Resource": "*",
              "Condition": {{"StringEqualsIgnoreCase": {{"kms:RecipientAttestation:ImageSha384": "{zero}"}}}}}},
            {{"Sid": "Enable encrypt from instance", "Effect": "Allow", "Principal": {{"AWS": "{ROLE}"}},
              "Action": "kms:Encrypt", "Resource": "*"}},
            {}
        ]}}"#,
        key_admin_statement()
    );
    let p = Policy::parse(&text, true).unwrap();
    assert_eq!(evaluate(&p, &[], &ctx(ROLE, "kms:Encrypt")), Decision::Allow);
    assert_eq!(evaluate(&p, &[], &ctx(ROLE, "kms:Decrypt")), Decision::ImplicitDeny);
    assert_eq!(evaluate(&p, &[], &attested(ROLE, "kms:Decrypt", &zero)), Decision::Allow);
    assert_eq!(evaluate(&p, &[], &attested(ROLE, "kms:Decrypt", PCR0)), Decision::ImplicitDeny);
}

/// two-enclave-attestation-demo.md: Deny statements with StringNotEqualsIgnoreCase
/// on ImageSha384/PCR0/PCR1/PCR2, on top of a policy that otherwise allows the role.
fn two_enclave_policy(e1: [&str; 3], e2: [&str; 3]) -> Policy {
    let deny = |sid: &str, actions: &str, pcrs: [&str; 3]| {
        format!(
            r#"{{"Sid": "{sid}", "Effect": "Deny", "Principal": {{"AWS": "{ROLE}"}}, "Action": [{actions}], "Resource": "*",
                "Condition": {{"StringNotEqualsIgnoreCase": {{
                    "kms:RecipientAttestation:ImageSha384": "{}", "kms:RecipientAttestation:PCR0": "{}",
                    "kms:RecipientAttestation:PCR1": "{}", "kms:RecipientAttestation:PCR2": "{}"}}}}}}"#,
            pcrs[0], pcrs[0], pcrs[1], pcrs[2]
        )
    };
    let text = format!(
        r#"{{"Version": "2012-10-17", "Statement": [
            {{"Sid": "Enable IAM User Permissions", "Effect": "Allow", "Principal": {{"AWS": "{ROOT}"}}, "Action": "kms:*", "Resource": "*"}},
            {{"Sid": "Role", "Effect": "Allow", "Principal": {{"AWS": "{ROLE}"}}, "Action": "kms:*", "Resource": "*"}},
            {},
            {}
        ]}}"#,
        deny("Only Allow NitroEnclaveDemo-1", r#""kms:GenerateRandom", "kms:GenerateDataKey""#, e1),
        deny("Only Allow NitroEnclaveDemo-2", r#""kms:Decrypt""#, e2),
    );
    Policy::parse(&text, true).unwrap()
}

/// PCR0, PCR1, PCR2 made of one repeated hex digit each.
fn pcrs(p0: char, p1: char, p2: char) -> [String; 3] {
    [p0, p1, p2].map(|c| c.to_string().repeat(96))
}

fn as_strs(p: &[String; 3]) -> [&str; 3] {
    [p[0].as_str(), p[1].as_str(), p[2].as_str()]
}

fn enclave(action: &str, pcrs: [&str; 3]) -> RequestContext {
    let mut c = ctx("arn:aws:sts::111122223333:assumed-role/instance/i-0e4fc2c648b901c7e", action);
    c.set("kms:RecipientAttestation:ImageSha384", pcrs[0]);
    for (i, v) in pcrs.iter().enumerate() {
        c.set(&format!("kms:RecipientAttestation:PCR{i}"), *v);
    }
    c
}

#[test]
fn two_enclave_each_image_does_only_its_own_operation() {
    // Two images that differ in every PCR.
    let (e1, e2) = (pcrs('1', 'a', 'b'), pcrs('2', 'c', 'd'));
    let (e1, e2) = (as_strs(&e1), as_strs(&e2));
    let p = two_enclave_policy(e1, e2);
    assert_eq!(evaluate(&p, &[], &enclave("kms:GenerateDataKey", e1)), Decision::Allow);
    assert_eq!(evaluate(&p, &[], &enclave("kms:Decrypt", e2)), Decision::Allow);
    assert!(matches!(evaluate(&p, &[], &enclave("kms:GenerateDataKey", e2)), Decision::ExplicitDeny { .. }));
    assert!(matches!(evaluate(&p, &[], &enclave("kms:Decrypt", e1)), Decision::ExplicitDeny { .. }));
    // The instance role itself, without an attestation document: every
    // negated condition holds for absent keys, so the Deny applies, as the
    // document's "with an explicit deny" output shows.
    let bare = ctx("arn:aws:sts::111122223333:assumed-role/instance/i-0e4fc2c648b901c7e", "kms:GenerateDataKey");
    assert_eq!(evaluate(&p, &[], &bare), Decision::ExplicitDeny { sid: Some("Only Allow NitroEnclaveDemo-1".into()), in_key_policy: true });
}

#[test]
fn two_enclave_keys_in_one_negated_operator_are_anded_as_in_aws() {
    // Both images share PCR1 in the document. AWS ANDs the keys of one
    // operator, so the Deny needs every listed PCR to differ: an image that
    // shares PCR1 with enclave 1 escapes the "only enclave 1 generates" Deny.
    let (e1, e2) = (pcrs('1', 'f', 'a'), pcrs('2', 'f', 'b'));
    let p = two_enclave_policy(as_strs(&e1), as_strs(&e2));
    assert_eq!(evaluate(&p, &[], &enclave("kms:GenerateDataKey", as_strs(&e2))), Decision::Allow);
}

#[test]
fn the_default_policy_delegates_to_identity_policies() {
    let p = Policy::parse(&default_key_policy(ACCOUNT), true).unwrap();
    assert_eq!(evaluate(&p, &[], &ctx(ROOT, "kms:Decrypt")), Decision::Allow, "root needs no identity policy");
    assert_eq!(evaluate(&p, &[], &ctx(ROLE, "kms:Decrypt")), Decision::ImplicitDeny, "no identity policy");
    let iam = Policy::parse(r#"{"Statement": {"Effect": "Allow", "Action": "kms:*", "Resource": "*"}}"#, false).unwrap();
    assert_eq!(evaluate(&p, std::slice::from_ref(&iam), &ctx(ROLE, "kms:Decrypt")), Decision::Allow);
    let deny = Policy::parse(r#"{"Statement": {"Sid": "NoDecrypt", "Effect": "Deny", "Action": "kms:Decrypt"}}"#, false).unwrap();
    assert_eq!(
        evaluate(&p, &[iam, deny], &ctx(ROLE, "kms:Decrypt")),
        Decision::ExplicitDeny { sid: Some("NoDecrypt".into()), in_key_policy: false }
    );
    // Another account's principal gets nothing from this account's delegation.
    let other = RequestContext::new("arn:aws:iam::999999999999:role/x", "999999999999", "kms:Decrypt", KEY);
    assert_eq!(evaluate(&p, &[], &other), Decision::ImplicitDeny);
}

fn one(condition: &str) -> Policy {
    Policy::parse(
        &format!(
            r#"{{"Statement": [{{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*", "Condition": {condition}}}]}}"#
        ),
        true,
    )
    .unwrap()
}

#[test]
fn condition_operators() {
    let c = |f: &dyn Fn(&mut RequestContext)| {
        let mut c = ctx(ROLE, "kms:Decrypt");
        f(&mut c);
        c
    };
    let allowed = |p: &Policy, c: &RequestContext| evaluate(p, &[], c) == Decision::Allow;

    let p = one(r#"{"StringLike": {"kms:EncryptionContext:app": "web-*"}}"#);
    assert!(allowed(&p, &c(&|c| c.set("kms:EncryptionContext:app", "web-1"))));
    assert!(!allowed(&p, &c(&|c| c.set("kms:EncryptionContext:app", "db-1"))));
    assert!(!allowed(&p, &c(&|c| c.set("kms:EncryptionContext:App", "web-1"))), "context keys are case-sensitive");
    assert!(!allowed(&p, &c(&|_| {})), "absent key: positive operator fails");

    let p = one(r#"{"StringNotLike": {"kms:EncryptionContext:app": "web-*"}}"#);
    assert!(allowed(&p, &c(&|_| {})), "absent key: negated operator holds");
    assert!(!allowed(&p, &c(&|c| c.set("kms:EncryptionContext:app", "web-2"))));

    let p = one(r#"{"StringEqualsIfExists": {"kms:EncryptionContext:app": "web"}}"#);
    assert!(allowed(&p, &c(&|_| {})));
    assert!(!allowed(&p, &c(&|c| c.set("kms:EncryptionContext:app", "db"))));

    let p = one(r#"{"Null": {"kms:RecipientAttestation:ImageSha384": "false"}}"#);
    assert!(!allowed(&p, &c(&|_| {})));
    assert!(allowed(&p, &c(&|c| c.set("kms:RecipientAttestation:ImageSha384", PCR0))));

    let p = one(r#"{"Bool": {"aws:SecureTransport": true}}"#);
    assert!(allowed(&p, &c(&|c| c.set("aws:SecureTransport", "true"))));
    assert!(!allowed(&p, &c(&|c| c.set("aws:SecureTransport", "false"))));

    // Several values of one key are ORed; several keys are ANDed.
    let p = one(&format!(r#"{{"StringEquals": {{"kms:CallerAccount": ["000000000000", "{ACCOUNT}"], "aws:PrincipalArn": "{ROLE}"}}}}"#));
    assert!(allowed(&p, &c(&|_| {})));
    let p = one(&format!(r#"{{"StringEquals": {{"kms:CallerAccount": "{ACCOUNT}", "aws:PrincipalArn": "{ADMIN}"}}}}"#));
    assert!(!allowed(&p, &c(&|_| {})));

    // Condition key names are case-insensitive.
    let p = one(&format!(r#"{{"StringEqualsIgnoreCase": {{"KMS:RecipientAttestation:IMAGESHA384": "{PCR0}"}}}}"#));
    assert!(allowed(&p, &c(&|c| c.set("kms:RecipientAttestation:ImageSha384", PCR0))));

    // Multi-valued keys with set operators.
    let p = one(r#"{"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["app", "env"]}}"#);
    assert!(allowed(&p, &c(&|c| c.set_many("kms:EncryptionContextKeys", vec!["app".into()]))));
    assert!(!allowed(&p, &c(&|c| c.set_many("kms:EncryptionContextKeys", vec!["app".into(), "user".into()]))));
    let p = one(r#"{"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": "user"}}"#);
    assert!(allowed(&p, &c(&|c| c.set_many("kms:EncryptionContextKeys", vec!["app".into(), "user".into()]))));
}

#[test]
fn actions_and_resources_take_wildcards_and_negation() {
    let p = Policy::parse(&format!(r#"{{"Statement": [{{"Effect": "Allow", "Principal": {{"AWS": ["{ROLE}"]}}, "NotAction": ["kms:Decrypt", "kms:ReEncrypt*"], "Resource": "arn:aws:kms:*:{ACCOUNT}:key/*"}}]}}"#), true).unwrap();
    assert_eq!(evaluate(&p, &[], &ctx(ROLE, "kms:Encrypt")), Decision::Allow);
    assert_eq!(evaluate(&p, &[], &ctx(ROLE, "KMS:encrypt")), Decision::Allow, "actions are case-insensitive");
    assert_eq!(evaluate(&p, &[], &ctx(ROLE, "kms:Decrypt")), Decision::ImplicitDeny);
    assert_eq!(evaluate(&p, &[], &ctx(ROLE, "kms:ReEncryptFrom")), Decision::ImplicitDeny);
    let elsewhere = RequestContext::new(ROLE, ACCOUNT, "kms:Encrypt", "arn:aws:kms:us-east-1:999999999999:key/x");
    assert_eq!(evaluate(&p, &[], &elsewhere), Decision::ImplicitDeny);
}

#[test]
fn malformed_policies_are_refused_with_a_reason() {
    for (text, needle) in [
        ("not json", "not valid JSON"),
        ("[]", "JSON object"),
        (r#"{"Statement": []}"#, "needs a Statement"),
        (r#"{"Statement": [{"Effect": "Maybe", "Principal": "*", "Action": "kms:*"}]}"#, "Effect"),
        (r#"{"Statement": [{"Effect": "Allow", "Action": "kms:*"}]}"#, "needs a Principal"),
        (r#"{"Statement": [{"Effect": "Allow", "Principal": "*"}]}"#, "Action and NotAction"),
        (
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Condition": {"NumericLessThanOrSo": {"a": "1"}}}]}"#,
            "unsupported condition operator",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Condition": {"NumericLessThan": {"a": "one"}}}]}"#,
            "not a value NumericLessThan compares",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Condition": {"DateLessThan": {"aws:CurrentTime": "soon"}}}]}"#,
            "not a value",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/33"}}}]}"#,
            "not a value",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Condition": {"Bool": {"aws:SecureTransport": "yes"}}}]}"#,
            "not a value",
        ),
        (r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Shape": 1}]}"#, "unknown element"),
        (r#"{"Version": "2099-01-01", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*"}]}"#, "Version"),
    ] {
        let err = Policy::parse(text, true).unwrap_err();
        assert!(err.0.contains(needle), "{text}: {err}");
    }
    assert!(Policy::parse(&" ".repeat(40_000), true).unwrap_err().0.contains("limit"));
}

/// One row per documented AWS behaviour that a development KMS must not
/// decide differently: (condition block, what the request carries, allowed).
/// The instance calls plain Decrypt (no Recipient) unless the row says so.
#[test]
fn absent_keys_set_operators_and_null_as_aws_documents() {
    type Setup = fn(&mut RequestContext);
    let plain: Setup = |_| {};
    let enclave: Setup = |c| c.set("kms:RecipientAttestation:ImageSha384", PCR0);
    let rows: Vec<(&str, String, Setup, bool)> = vec![
        // Set operators on an absent key: ForAnyValue is false, ForAllValues true, whatever
        // the operator (negated or ...IfExists included).
        // https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_condition-single-vs-multi-valued-context-keys.html
        (
            "ForAnyValue negated, absent: false",
            format!(r#"{{"ForAnyValue:StringNotEquals": {{"kms:RecipientAttestation:ImageSha384": "{PCR0}"}}}}"#),
            plain,
            false,
        ),
        (
            "ForAnyValue IfExists, absent: false",
            format!(r#"{{"ForAnyValue:StringEqualsIfExists": {{"kms:RecipientAttestation:ImageSha384": "{PCR0}"}}}}"#),
            plain,
            false,
        ),
        (
            "ForAnyValue IfExists, present and equal",
            format!(r#"{{"ForAnyValue:StringEqualsIfExists": {{"kms:RecipientAttestation:ImageSha384": "{PCR0}"}}}}"#),
            enclave,
            true,
        ),
        (
            "ForAllValues, absent: true",
            format!(r#"{{"ForAllValues:StringEquals": {{"kms:RecipientAttestation:ImageSha384": "{OTHER}"}}}}"#),
            plain,
            true,
        ),
        (
            "ForAllValues negated, absent: true",
            r#"{"ForAllValues:StringNotLike": {"kms:EncryptionContextKeys": "nekms:*"}}"#.to_owned(),
            plain,
            true,
        ),
        // Single-valued operators on an absent key: positive fails, negated and IfExists hold.
        // https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html#Conditions_IfExists
        ("positive, absent: false", format!(r#"{{"StringEquals": {{"kms:RecipientAttestation:ImageSha384": "{PCR0}"}}}}"#), plain, false),
        ("negated, absent: true", format!(r#"{{"StringNotEquals": {{"kms:RecipientAttestation:ImageSha384": "{PCR0}"}}}}"#), plain, true),
        (
            "IfExists, absent: true",
            format!(r#"{{"StringEqualsIfExists": {{"kms:RecipientAttestation:ImageSha384": "{OTHER}"}}}}"#),
            plain,
            true,
        ),
        // Null: the values are ORed like any other operator's.
        // https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html#Conditions_Null
        (
            "Null [false, true], absent: true",
            r#"{"Null": {"kms:RecipientAttestation:ImageSha384": ["false", "true"]}}"#.to_owned(),
            plain,
            true,
        ),
        (
            "Null [false, true], present: true",
            r#"{"Null": {"kms:RecipientAttestation:ImageSha384": ["false", "true"]}}"#.to_owned(),
            enclave,
            true,
        ),
        ("Null true, present: false", r#"{"Null": {"kms:RecipientAttestation:ImageSha384": "true"}}"#.to_owned(), enclave, false),
        // aws:PrincipalAccount is set on every request.
        // https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_condition-keys.html#condition-keys-principalaccount
        (
            "aws:PrincipalAccount is the caller's account",
            format!(r#"{{"StringEquals": {{"aws:PrincipalAccount": "{ACCOUNT}"}}}}"#),
            plain,
            true,
        ),
    ];
    // The other operator families, on the global keys the emulator sets.
    // https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html
    let src: Setup = |c| c.set("aws:SourceIp", "10.1.2.3");
    let when: Setup = |c| {
        c.set("aws:CurrentTime", "2026-11-26T08:00:00Z");
        c.set("aws:EpochTime", "1795680000");
    };
    let mut rows = rows;
    rows.extend([
        ("IpAddress in the CIDR", r#"{"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}"#.to_owned(), src, true),
        ("IpAddress outside", r#"{"IpAddress": {"aws:SourceIp": "192.168.0.0/16"}}"#.to_owned(), src, false),
        ("NotIpAddress outside", r#"{"NotIpAddress": {"aws:SourceIp": "192.168.0.0/16"}}"#.to_owned(), src, true),
        ("DateLessThan, ISO 8601", r#"{"DateLessThan": {"aws:CurrentTime": "2027-01-01T00:00:00Z"}}"#.to_owned(), when, true),
        ("DateGreaterThan, ISO 8601", r#"{"DateGreaterThan": {"aws:CurrentTime": "2027-01-01T00:00:00Z"}}"#.to_owned(), when, false),
        ("DateGreaterThanEquals, epoch seconds", r#"{"DateGreaterThanEquals": {"aws:CurrentTime": "1700000000"}}"#.to_owned(), when, true),
        ("NumericLessThan", r#"{"NumericLessThan": {"aws:EpochTime": "1800000000"}}"#.to_owned(), when, true),
        ("NumericGreaterThan", r#"{"NumericGreaterThan": {"aws:EpochTime": "1800000000"}}"#.to_owned(), when, false),
        ("ArnLike, per part", format!(r#"{{"ArnLike": {{"aws:PrincipalArn": "arn:aws:iam::{ACCOUNT}:role/inst*"}}}}"#), plain, true),
        ("ArnLike, a wildcard does not cross parts", r#"{"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::*"}}"#.to_owned(), plain, false),
        ("ArnNotEquals, another role", format!(r#"{{"ArnNotEquals": {{"aws:PrincipalArn": "{ADMIN}"}}}}"#), plain, true),
        ("Bool false", r#"{"Bool": {"aws:SecureTransport": "false"}}"#.to_owned(), |c| c.set("aws:SecureTransport", "false"), true),
    ]);
    for (what, condition, setup, want) in rows {
        let mut c = ctx(ROLE, "kms:Decrypt");
        setup(&mut c);
        assert_eq!(evaluate(&one(&condition), &[], &c) == Decision::Allow, want, "{what}: {condition}");
    }

    // The issue's dangerous direction, as a Deny: a lock-out written with ForAnyValue does not
    // refuse the instance without attestation, on AWS or here.
    let deny = |condition: &str| {
        Policy::parse(
            &format!(
                r#"{{"Statement": [{{"Effect": "Allow", "Principal": {{"AWS": "{ROLE}"}}, "Action": "kms:Decrypt", "Resource": "*"}},
                    {{"Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*", "Condition": {condition}}}]}}"#
            ),
            true,
        )
        .unwrap()
    };
    let written_with_for_any = deny(&format!(r#"{{"ForAnyValue:StringNotEquals": {{"kms:RecipientAttestation:ImageSha384": "{PCR0}"}}}}"#));
    assert_eq!(evaluate(&written_with_for_any, &[], &ctx(ROLE, "kms:Decrypt")), Decision::Allow, "not denied: the lock-out is open");
    let written_right = deny(&format!(r#"{{"StringNotEquals": {{"kms:RecipientAttestation:ImageSha384": "{PCR0}"}}}}"#));
    assert!(matches!(evaluate(&written_right, &[], &ctx(ROLE, "kms:Decrypt")), Decision::ExplicitDeny { .. }));
    let denied_account = deny(&format!(r#"{{"StringNotEquals": {{"aws:PrincipalAccount": "{ACCOUNT}"}}}}"#));
    assert_eq!(evaluate(&denied_account, &[], &ctx(ROLE, "kms:Decrypt")), Decision::Allow, "aws:PrincipalAccount is set, so not denied");
}

#[test]
fn condition_keys_this_kms_does_not_set_are_named() {
    let p = one(
        r#"{"StringEquals": {"aws:SourceVpc": "vpc-1", "aws:PrincipalTag/team": "payments", "kms:EncryptionContext:app": "x", "kms:RecipientAttestation:PCR8": "00"}}"#,
    );
    assert_eq!(p.unmodelled_keys(), vec!["aws:SourceVpc".to_owned()]);
    assert!(one(r#"{"StringEquals": {"aws:PrincipalType": "AssumedRole", "kms:ViaService": "x"}}"#).unmodelled_keys().is_empty());
    // aws:PrincipalType as AWS sets it.
    let p = one(r#"{"StringEquals": {"aws:PrincipalType": "AssumedRole"}}"#);
    assert_eq!(evaluate(&p, &[], &ctx(ROLE, "kms:Decrypt")), Decision::Allow);
    assert_eq!(evaluate(&p, &[], &ctx(ROOT, "kms:Decrypt")), Decision::ImplicitDeny, "the root user is an Account");
}

fn versioned(version: &str, condition: &str, resource: &str) -> Policy {
    Policy::parse(
        &format!(r#"{{{version} "Statement": [{{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "{resource}", "Condition": {condition}}}]}}"#),
        true,
    )
    .unwrap()
}

/// Policy variables, one row per documented rule:
/// https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_variables.html
/// (substituted only under Version 2012-10-17, only in string and ARN
/// operators and in Resource; a default with `${key, 'text'}`; `${*}`,
/// `${?}` and `${$}` stand for the characters themselves; a variable whose
/// key the request lacks matches nothing).
#[test]
fn policy_variables_as_aws_documents() {
    const V: &str = r#""Version": "2012-10-17","#;
    let mut with_ctx = ctx(ROLE, "kms:Decrypt");
    with_ctx.set("kms:EncryptionContext:owner", "arn:aws:iam::111122223333:role/instance");
    with_ctx.set("kms:EncryptionContext:tenant", "t-*");
    type Row<'a> = (&'a str, String, &'a str, &'a RequestContext, bool, &'a str);
    let rows: &[Row] = &[
        (V, r#"{"StringEquals": {"kms:EncryptionContext:owner": "${aws:PrincipalArn}"}}"#.into(), "*", &with_ctx, true, "substituted"),
        (
            "",
            r#"{"StringEquals": {"kms:EncryptionContext:owner": "${aws:PrincipalArn}"}}"#.into(),
            "*",
            &with_ctx,
            false,
            "no Version: literal text",
        ),
        (
            r#""Version": "2008-10-17","#,
            r#"{"StringEquals": {"kms:EncryptionContext:owner": "${aws:PrincipalArn}"}}"#.into(),
            "*",
            &with_ctx,
            false,
            "Version 2008-10-17: literal text",
        ),
        (
            V,
            r#"{"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::${aws:PrincipalAccount}:role/*"}}"#.into(),
            "*",
            &with_ctx,
            true,
            "ARN operator, wildcard kept",
        ),
        (
            V,
            r#"{"StringLike": {"aws:PrincipalArn": "${kms:EncryptionContext:tenant}"}}"#.into(),
            "*",
            &with_ctx,
            false,
            "a substituted * is literal, not a wildcard",
        ),
        (V, r#"{"StringEquals": {"kms:EncryptionContext:tenant": "t-${*}"}}"#.into(), "*", &with_ctx, true, "${*} is a literal *"),
        (V, r#"{"StringLike": {"aws:PrincipalArn": "${*}"}}"#.into(), "*", &with_ctx, false, "${*} under StringLike matches only a *"),
        (
            V,
            r#"{"StringEquals": {"kms:EncryptionContext:owner": "${kms:EncryptionContext:missing}"}}"#.into(),
            "*",
            &with_ctx,
            false,
            "a missing key matches nothing",
        ),
        (
            V,
            r#"{"StringNotEquals": {"kms:EncryptionContext:owner": "${kms:EncryptionContext:missing}"}}"#.into(),
            "*",
            &with_ctx,
            true,
            "... so its negation holds",
        ),
        (
            V,
            r#"{"StringEquals": {"kms:EncryptionContext:tenant": "${kms:EncryptionContext:missing, 't-*'}"}}"#.into(),
            "*",
            &with_ctx,
            true,
            "a default value",
        ),
        (
            V,
            format!(r#"{{"StringEquals": {{"aws:PrincipalAccount": "{ACCOUNT}"}}}}"#),
            "arn:aws:kms:*:${aws:PrincipalAccount}:key/*",
            &with_ctx,
            true,
            "in Resource",
        ),
        (
            V,
            format!(r#"{{"StringEquals": {{"aws:PrincipalAccount": "{ACCOUNT}"}}}}"#),
            "arn:aws:kms:*:${kms:EncryptionContext:missing}:key/*",
            &with_ctx,
            false,
            "in Resource, a missing key matches nothing",
        ),
    ];
    for (version, condition, resource, request, allowed, why) in rows {
        let p = versioned(version, condition, resource);
        assert!(p.unmodelled_keys().is_empty(), "{why}");
        assert_eq!(evaluate(&p, &[], request) == Decision::Allow, *allowed, "{why}: {condition} on {resource}");
    }
    // A variable naming a key this KMS does not set is named, like a condition key.
    let p = versioned(V, r#"{"StringEquals": {"kms:EncryptionContext:owner": "${aws:SourceVpc}"}}"#, "*");
    assert_eq!(p.unmodelled_keys(), vec!["aws:SourceVpc".to_owned()]);
    assert!(versioned("", r#"{"StringEquals": {"kms:EncryptionContext:owner": "${aws:SourceVpc}"}}"#, "*").unmodelled_keys().is_empty());
}
