//! Any bytes, split anywhere, through the line framer and every line parser.
#![no_main]

use firmware_bridge::nl43::{
    BatteryLevel, Command, DodReading, DrdLine, MeasureState, MeterClock, ResultCode,
};
use firmware_bridge::{Feed, LineFramer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses where reads split the rest.
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(split).max(1);
    let mut framer = LineFramer::<128>::new();
    for chunk in stream.chunks(step) {
        let mut rest = chunk;
        loop {
            match framer.feed(rest) {
                Feed::Consumed => break,
                Feed::Overlong { remaining } => rest = remaining,
                Feed::Line { line, remaining } => {
                    assert!(!line.is_empty() && line.len() <= 128);
                    let _ = ResultCode::parse(line);
                    let _ = DodReading::parse(line);
                    let _ = DrdLine::parse(line);
                    let _ = MeterClock::parse(line);
                    let _ = MeasureState::parse(line);
                    let _ = BatteryLevel::parse(line);
                    let _ = Command::parse(line);
                    rest = remaining;
                }
            }
        }
    }
});
