//! Any bytes, split anywhere, through the line framer and every XL2 parser;
//! whatever parses as a command or a value must re-encode and parse back.
#![no_main]

use firmware_bridge::xl2::{
    Command, Identity, InitState, Param, Value, parse_error_queue, parse_values,
};
use firmware_bridge::{Feed, LineFramer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses where reads split the rest.
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(split).max(1);
    let mut framer = LineFramer::<256>::keeping_prompts();
    for chunk in stream.chunks(step) {
        let mut rest = chunk;
        loop {
            match framer.feed(rest) {
                Feed::Consumed => break,
                Feed::Overlong { remaining } => rest = remaining,
                Feed::Line { line, remaining } => {
                    check(line);
                    rest = remaining;
                }
            }
        }
    }
});

fn check(line: &[u8]) {
    let _ = Identity::parse(line);
    let _ = InitState::parse(line);
    let _ = parse_error_queue(line);
    if let Ok(values) = parse_values::<8>(line) {
        let mut text = heapless::String::<1024>::new();
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                let _ = text.push_str(", ");
            }
            let _ = v.write_to("dB", &mut text);
        }
        assert_eq!(parse_values::<8>(text.as_bytes()), Ok(values));
    }
    if let Ok(value) = Value::parse(line) {
        let mut text = heapless::String::<64>::new();
        if value.write_to("dB", &mut text).is_ok() {
            assert_eq!(Value::parse(text.as_bytes()), Ok(value));
        }
    }
    let mut params = heapless::Vec::<Param, 16>::new();
    if let Ok(cmd) = Command::parse_into(line, &mut params) {
        let mut wire = heapless::String::<512>::new();
        cmd.encode(&mut wire).expect("a parsed command encodes");
        let mut again = heapless::Vec::<Param, 16>::new();
        assert_eq!(Command::parse_into(wire.as_bytes(), &mut again), Ok(cmd));
    }
}
