//! Any frame body as the enclave's RPC server reads it: a client frame, then
//! the call's request. Either decodes or is refused; no panic, no unbounded
//! recursion. Whatever decodes re-encodes and decodes to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nekms_rpc::protocol::{self, ClientFrame, ServerFrame};

fuzz_target!(|data: &[u8]| {
    if let Ok(ClientFrame::Call { id, request }) = protocol::decode::<ClientFrame>(data) {
        if let Ok(request) = protocol::request_from_value(request) {
            let again = protocol::encode(&ClientFrame::Call { id, request: protocol::request_to_value(&request) });
            let ClientFrame::Call { request: back, .. } = protocol::decode::<ClientFrame>(&again).expect("our own encoding decodes") else {
                panic!("a Call re-encoded as something else");
            };
            assert_eq!(protocol::request_from_value(back).expect("our own request decodes"), request);
        }
    }
    // The client reads server frames from the enclave: those must not panic either.
    let _ = protocol::decode::<ServerFrame>(data);
});
