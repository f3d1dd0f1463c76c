//! The push request and the fleet's answer, as bytes (SPEC §7).
//!
//! Request body: `{"gateway": "...", "records": [<record>, ...]}` with each
//! record in the JSON form of SPEC §3, gzipped unless switched off, and two
//! optional members (slmd's extension of SPEC §7, see the README):
//! `"skipped": [[from, to], ...]`, numbers handed out or reserved but never
//! stored (an unclean stop), sent with the batch whose records pass them;
//! and `"epoch": n`, only when it is not 0: the records' numbering epoch
//! (the fleet de-duplicates by `(gateway, epoch, seq)`). The
//! answer decides what happens to the batch; [`classify`] is the one place
//! that reads it, and only a `200` whose body is
//! `{"accepted": n, "duplicates": m}` with `n + m` equal to the records sent
//! counts as delivered: a captive portal's HTML page, a truncated body or a
//! proxy's empty `200` do not.

use crate::record::Record;
use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Deserialize;
use std::io::Write;
use std::time::Duration;

/// Longest `Retry-After` honoured: a fleet asking for more is still retried
/// after this, so a typo on the server cannot park a gateway for days.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);

/// An encoded request body.
#[derive(Debug, Clone)]
pub struct Body {
    /// The bytes on the wire.
    pub bytes: Vec<u8>,
    /// Whether they are gzipped.
    pub gzip: bool,
}

/// Encodes one push request body: `records` of numbering `epoch`, and
/// the `skipped` ranges they pass.
pub fn encode(
    gateway: &str,
    epoch: u64,
    records: &[Record],
    skipped: &[(u64, u64)],
    gzip: bool,
) -> std::io::Result<Body> {
    // JSON text of a record is about 300 bytes.
    let mut json = Vec::with_capacity(64 + records.len() * 320);
    json.extend_from_slice(b"{\"gateway\":");
    serde_json::to_writer(&mut json, gateway)?;
    if epoch != 0 {
        json.extend_from_slice(b",\"epoch\":");
        serde_json::to_writer(&mut json, &epoch)?;
    }
    if !skipped.is_empty() {
        json.extend_from_slice(b",\"skipped\":");
        serde_json::to_writer(&mut json, skipped)?;
    }
    json.extend_from_slice(b",\"records\":[");
    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            json.push(b',');
        }
        serde_json::to_writer(&mut json, record)?;
    }
    json.extend_from_slice(b"]}");
    compress(json, gzip)
}

/// A JSON request body, gzipped when `gzip`.
pub fn compress(json: Vec<u8>, gzip: bool) -> std::io::Result<Body> {
    if !gzip {
        return Ok(Body { bytes: json, gzip });
    }
    let mut encoder = GzEncoder::new(Vec::with_capacity(json.len() / 8), Compression::default());
    encoder.write_all(&json)?;
    Ok(Body {
        bytes: encoder.finish()?,
        gzip,
    })
}

/// The fleet's `200` body.
#[derive(Debug, Deserialize)]
struct Ack {
    accepted: u64,
    duplicates: u64,
}

/// What the fleet's answer means for the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Delivered: the cursor may move past the batch.
    Accepted {
        /// Records new to the fleet.
        accepted: u64,
        /// Records it already had (re-sends).
        duplicates: u64,
    },
    /// `401`: this token is unknown or expired; try the other one.
    Unauthorized,
    /// `413`: the batch is too large; send half.
    TooLarge,
    /// `400`: something in the batch is malformed; find out what.
    Malformed {
        /// The fleet's explanation, shortened.
        detail: String,
    },
    /// Anything else: try the same batch again later.
    Retry {
        /// What went wrong, for status and the journal.
        error: String,
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
}

/// Reads the fleet's answer to a batch of `sent` records.
pub fn classify(status: u16, retry_after: Option<&str>, body: &[u8], sent: usize) -> Answer {
    match status {
        200 => match serde_json::from_slice::<Ack>(body) {
            Ok(ack) if ack.accepted.saturating_add(ack.duplicates) == sent as u64 => {
                Answer::Accepted {
                    accepted: ack.accepted,
                    duplicates: ack.duplicates,
                }
            }
            Ok(ack) => Answer::Retry {
                error: format!(
                    "fleet answered 200 but counted {} accepted + {} duplicates for {sent} records sent",
                    ack.accepted, ack.duplicates
                ),
                retry_after: None,
            },
            Err(e) => Answer::Retry {
                // serde quotes the offending value, which the fleet chose:
                // cut it like the body.
                error: format!(
                    "fleet answered 200 with a body that is not {{\"accepted\": n, \"duplicates\": m}} ({}): {}",
                    printable(&e.to_string()),
                    snippet(body)
                ),
                retry_after: None,
            },
        },
        401 => Answer::Unauthorized,
        413 => Answer::TooLarge,
        400 => Answer::Malformed {
            detail: snippet(body),
        },
        _ => Answer::Retry {
            error: format!("fleet answered {status}: {}", snippet(body)),
            retry_after: retry_after.and_then(parse_retry_after),
        },
    }
}

/// `Retry-After` as seconds or an HTTP date, capped at [`RETRY_AFTER_MAX`].
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(RETRY_AFTER_MAX))
}

/// Longest piece of the fleet's answer quoted in an error, in bytes of the
/// body or characters of a parser's message.
const QUOTED_MAX: usize = 120;

/// The start of a body, printable, for an error message.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(QUOTED_MAX)]);
    let mut s: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if body.len() > QUOTED_MAX {
        s.push('…');
    }
    if s.trim().is_empty() {
        "(empty body)".to_owned()
    } else {
        s
    }
}

/// `text` cut to [`QUOTED_MAX`] characters, control characters as spaces.
fn printable(text: &str) -> String {
    let mut s: String = text
        .chars()
        .take(QUOTED_MAX)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(QUOTED_MAX).is_some() {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{MeterState, Reading};
    use chrono::TimeZone;
    use flate2::read::GzDecoder;
    use std::io::Read;
    use std::sync::Arc;

    fn record(seq: u64) -> Record {
        Record::new(
            seq,
            Reading {
                device: Arc::from("nl43-north"),
                received_at: chrono::Utc
                    .with_ymd_and_hms(2026, 11, 22, 14, 15, 17)
                    .single()
                    .expect("valid"),
                device_time: None,
                metrics: vec![("lp", Some(52.1)), ("lmax", None)],
                state: MeterState::Measuring,
                flags: vec![],
            },
        )
    }

    #[test]
    fn body_is_the_contract_json_gzipped_or_not() {
        let records = [record(1041), record(1042)];
        let plain = encode("gw-0042", 0, &records, &[], false).expect("encode");
        let text = String::from_utf8(plain.bytes).expect("utf-8");
        assert_eq!(
            text,
            r#"{"gateway":"gw-0042","records":[{"seq":1041,"device":"nl43-north","received_at":"2026-11-22T14:15:17.000Z","device_time":null,"metrics":{"lp":52.1,"lmax":null},"state":"measuring","flags":[]},{"seq":1042,"device":"nl43-north","received_at":"2026-11-22T14:15:17.000Z","device_time":null,"metrics":{"lp":52.1,"lmax":null},"state":"measuring","flags":[]}]}"#
        );
        let zipped = encode("gw-0042", 0, &records, &[], true).expect("encode");
        assert!(zipped.gzip);
        let mut unzipped = String::new();
        GzDecoder::new(zipped.bytes.as_slice())
            .read_to_string(&mut unzipped)
            .expect("gunzip");
        assert_eq!(unzipped, text);
    }

    #[test]
    fn skipped_numbers_and_a_new_epoch_travel_with_the_batch() {
        let body = encode("gw-0042", 7, &[record(1041)], &[(1001, 1040)], false).expect("encode");
        let json: serde_json::Value = serde_json::from_slice(&body.bytes).expect("JSON");
        assert_eq!(json["epoch"], 7);
        assert_eq!(json["skipped"], serde_json::json!([[1001, 1040]]));
        assert_eq!(json["records"][0]["seq"], 1041);
        // Epoch 0 and no skip: exactly the SPEC §7 body.
        let plain = encode("gw-0042", 0, &[record(1041)], &[], false).expect("encode");
        let json: serde_json::Value = serde_json::from_slice(&plain.bytes).expect("JSON");
        let keys: Vec<&String> = json.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["gateway", "records"]);
    }

    #[test]
    fn only_a_contract_200_counts_as_delivered() {
        assert_eq!(
            classify(200, None, br#"{"accepted":3,"duplicates":2}"#, 5),
            Answer::Accepted {
                accepted: 3,
                duplicates: 2
            }
        );
        for (body, why) in [
            (&b"<html>OK</html>"[..], "not {"),
            (b"", "(empty body)"),
            (br#"{"accepted":3}"#, "not {"),
            (
                br#"{"accepted":3,"duplicates":1}"#,
                "counted 3 accepted + 1 duplicates for 5",
            ),
        ] {
            match classify(200, None, body, 5) {
                Answer::Retry { error, .. } => assert!(error.contains(why), "{error}"),
                other => panic!("{body:?} → {other:?}"),
            }
        }
    }

    #[test]
    fn status_codes_map_to_what_the_uplink_does() {
        assert_eq!(classify(401, None, b"", 1), Answer::Unauthorized);
        assert_eq!(classify(413, None, b"", 1), Answer::TooLarge);
        assert_eq!(
            classify(400, None, br#"{"error":"malformed"}"#, 1),
            Answer::Malformed {
                detail: r#"{"error":"malformed"}"#.to_owned()
            }
        );
        assert_eq!(
            classify(503, Some("7"), b"busy", 1),
            Answer::Retry {
                error: "fleet answered 503: busy".to_owned(),
                retry_after: Some(Duration::from_secs(7))
            }
        );
        match classify(429, Some("999999"), b"", 1) {
            Answer::Retry { retry_after, .. } => assert_eq!(retry_after, Some(RETRY_AFTER_MAX)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_200_quoting_a_huge_value_gives_a_short_error() {
        // Found by the fleet_answer fuzz target: serde's message quoted the
        // whole string, so a fleet (or a proxy) could put a megabyte into
        // every journal line and the status.
        let huge = format!("\"{}\\r\"", "x".repeat(1_000_000));
        match classify(200, None, huge.as_bytes(), 1) {
            Answer::Retry { error, .. } => {
                assert!(
                    error.chars().count() < 400,
                    "{} chars",
                    error.chars().count()
                );
                assert!(!error.contains('\r'), "{error:?}");
                assert!(error.contains("invalid type: string"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_after_as_an_http_date() {
        let at = chrono::Utc::now() + chrono::Duration::seconds(30);
        let wait = parse_retry_after(&at.to_rfc2822()).expect("date");
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        let past = parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT").expect("past date");
        assert_eq!(past, Duration::ZERO);
        assert_eq!(parse_retry_after("soon"), None);
    }
}
