//! Any bytes through the `DOD?` parser; whatever parses must re-encode and
//! parse back to the same reading.
#![no_main]

use firmware_bridge::nl43::DodReading;
use firmware_bridge::nl43::dod::DodLine;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(reading) = DodReading::parse(data) {
        let mut line = DodLine::new();
        if reading.encode(&mut line).is_ok() {
            let wire = line.as_str().trim_end_matches("\r\n");
            assert_eq!(DodReading::parse(wire.as_bytes()), Ok(reading));
        }
    }
});
