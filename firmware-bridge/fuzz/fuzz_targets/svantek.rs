//! Any bytes, split anywhere, through the `;` frame splitter and every
//! Svantek parser; whatever parses as results or a request must re-encode
//! and parse back.
#![no_main]

use firmware_bridge::svantek::parse_setting_reply;
use firmware_bridge::svantek::request::UNIT_TYPE;
use firmware_bridge::svantek::{FrameFeed, FrameSplitter, Request, Results, ResultsReply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(split).max(1);
    let mut splitter = FrameSplitter::<256>::new();
    for chunk in stream.chunks(step) {
        let mut rest = chunk;
        loop {
            match splitter.feed(rest) {
                FrameFeed::Consumed => break,
                FrameFeed::Overlong { remaining } => rest = remaining,
                FrameFeed::Frame { frame, remaining } => {
                    assert!(frame.first() == Some(&b'#') && frame.len() <= 256);
                    check(frame);
                    rest = remaining;
                }
            }
        }
    }
});

fn check(frame: &[u8]) {
    let _ = parse_setting_reply(frame, UNIT_TYPE);
    if let Ok(request) = Request::parse(frame) {
        let mut wire = heapless::String::<16>::new();
        request.encode(&mut wire).expect("a parsed request encodes");
        assert_eq!(Request::parse(wire.as_bytes()), Ok(request));
    }
    if let Ok(reply) = Results::parse(frame) {
        let known = match &reply {
            ResultsReply::Results(r) => {
                let mut r = r.clone();
                r.unknown_tags = 0;
                ResultsReply::Results(r)
            }
            ResultsReply::NoResults => ResultsReply::NoResults,
        };
        let mut wire = heapless::String::<512>::new();
        known.encode(&mut wire).expect("a parsed reply encodes");
        assert_eq!(Results::parse(wire.as_bytes()), Ok(known));
    }
}
