//! The attach protocol's decoders on arbitrary datagrams: never panic, and
//! whatever decodes re-encodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vassal_attach::{decode_request, decode_response, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = decode_request(data) {
        let again = decode_request(&encode(&request)).expect("a decoded request re-encodes");
        assert_eq!(again, request);
    }
    if let Ok(response) = decode_response(data) {
        let again = decode_response(&encode(&response)).expect("a decoded response re-encodes");
        assert_eq!(again, response);
    }
});
