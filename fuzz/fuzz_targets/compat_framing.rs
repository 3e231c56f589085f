//! uWSGI compat framing on an arbitrary byte stream: decoding frame after
//! frame never panics, never reads past the buffer, never yields a payload
//! above the MTU, and always makes progress.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vassal_router::compat::decode_frame;

fuzz_target!(|data: &[u8]| {
    let mtu = 1500;
    let mut at = 0;
    while let Ok(Some(frame)) = decode_frame(&data[at..], mtu) {
        assert!(frame.payload.len() <= mtu);
        assert_eq!(frame.consumed, frame.payload.len() + 4);
        at += frame.consumed;
        assert!(at <= data.len());
    }
});
