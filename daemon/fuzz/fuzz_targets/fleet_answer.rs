//! Any answer from the fleet (status, `Retry-After`, body) through the
//! classifier that decides what happens to a batch: never a panic, only a
//! `200` with a matching count delivers, and what it says for status and
//! the journal stays short.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slmd::uplink::wire::{Answer, RETRY_AFTER_MAX, classify};

fuzz_target!(|data: &[u8]| {
    // Bytes 0-1: status; 2-3: records sent; 4: Retry-After length; then the
    // Retry-After text and the body.
    let [s0, s1, n0, n1, len, rest @ ..] = data else {
        return;
    };
    // Mostly the statuses that mean something, sometimes any number.
    let raw = u16::from_le_bytes([*s0, *s1]);
    let status = match raw % 8 {
        0 => 400,
        1 => 401,
        2 => 413,
        3 => 429,
        4 => 503,
        5 | 6 => 200,
        _ => raw / 8,
    };
    let sent = usize::from(u16::from_le_bytes([*n0, *n1]));
    let (retry_after, body) = rest.split_at(usize::from(*len).min(rest.len()));
    let retry_after = std::str::from_utf8(retry_after).ok();
    match classify(status, retry_after, body, sent) {
        Answer::Accepted {
            accepted,
            duplicates,
        } => {
            assert_eq!(status, 200);
            assert_eq!(accepted.saturating_add(duplicates), sent as u64);
        }
        Answer::Unauthorized => assert_eq!(status, 401),
        Answer::TooLarge => assert_eq!(status, 413),
        Answer::Malformed { detail } => {
            assert_eq!(status, 400);
            assert!(detail.chars().count() <= 200, "{detail}");
        }
        Answer::Retry { error, retry_after } => {
            assert!(![401, 413, 400].contains(&status));
            assert!(
                error.chars().count() <= 600,
                "{} chars",
                error.chars().count()
            );
            assert!(retry_after.is_none_or(|r| r <= RETRY_AFTER_MAX));
        }
    }
});
