//! Any query string on `GET /v1/devices/{id}/history`: URL-decoded and read
//! as the route does (parameters, `since`, `after`, `limit`), including the
//! 400's message; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let query = String::from_utf8_lossy(data);
    let _ = slmd::api::fuzz_parse_history_query(&query);
});
