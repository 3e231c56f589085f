//! The router's IP header view on arbitrary bytes: never panics, and what
//! it accepts is consistent with the buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = vassal_router::packet::parse(data) {
        assert_eq!(info.src.is_ipv4(), info.dst.is_ipv4(), "mixed families");
        assert_eq!(info.src.is_ipv4(), data[0] >> 4 == 4);
    }
});
