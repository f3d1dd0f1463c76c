//! Any bytes, split anywhere, through the line framer, the Casella line
//! parser and the assembler; every assembled reading is bounded and every
//! parsed broad-band line re-encodes to itself.
#![no_main]

use firmware_bridge::casella::line::encode_broadband;
use firmware_bridge::casella::{Assembler, LineKind, PushedLine};
use firmware_bridge::{Feed, LineFramer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(split).max(1);
    let mut framer = LineFramer::<640>::keeping_prompts();
    let mut assembler = Assembler::new();
    for chunk in stream.chunks(step) {
        let mut rest = chunk;
        loop {
            match framer.feed(rest) {
                Feed::Consumed => break,
                Feed::Overlong { remaining } => rest = remaining,
                Feed::Line { line, remaining } => {
                    if let Ok(pushed) = PushedLine::parse(line) {
                        if let LineKind::Broadband { level, .. } = pushed.kind {
                            let mut wire = heapless::String::<96>::new();
                            if encode_broadband(pushed.tag, pushed.time, level, &mut wire).is_ok() {
                                assert_eq!(PushedLine::parse(wire.as_bytes()), Ok(pushed));
                            }
                        }
                        if let Some(done) = assembler.push(&pushed) {
                            assert_ne!(done.time, pushed.time);
                        }
                    }
                    rest = remaining;
                }
            }
        }
    }
    let _ = assembler.flush();
    assert!(assembler.pending().is_none());
});
