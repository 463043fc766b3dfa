//! Any text as a key policy or an Authorization header: an error or a value, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nekms_kms::policy::{evaluate, Policy, RequestContext};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = nekms_kms::sigv4::parse_authorization(text);
    for key_policy in [true, false] {
        if let Ok(p) = Policy::parse(text, key_policy) {
            let mut ctx = RequestContext::new(
                "arn:aws:iam::111122223333:role/r",
                "111122223333",
                "kms:Decrypt",
                "arn:aws:kms:us-east-1:111122223333:key/k",
            );
            ctx.set("kms:RecipientAttestation:ImageSha384", "00");
            let _ = evaluate(&p, &[p.clone()], &ctx);
        }
    }
});
