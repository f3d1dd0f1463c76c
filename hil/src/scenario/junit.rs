//! The JUnit XML report CI systems read: one `<testsuite>` per scenario,
//! one `<testcase>` per check (the timeline's named waits included, and a
//! `timeline` case when a step failed), `<failure>` or `<skipped>` with the
//! reason, and the scenario's transcript tail as `<system-out>` of a
//! failing suite.

use super::run::{Outcome, ScenarioReport};
use std::fmt::Write;

/// The report of every scenario run, as JUnit XML.
pub fn junit_xml(reports: &[ScenarioReport]) -> String {
    let count = |o: fn(&Outcome) -> bool| -> usize {
        reports
            .iter()
            .map(|r| r.checks.iter().filter(|c| o(&c.outcome)).count())
            .sum()
    };
    let total: usize = reports.iter().map(|r| r.checks.len()).sum();
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        xml,
        "<testsuites name=\"slm-hil\" tests=\"{total}\" failures=\"{}\" skipped=\"{}\" time=\"{:.3}\">",
        count(|o| matches!(o, Outcome::Fail(_))),
        count(|o| matches!(o, Outcome::Skip(_))),
        reports.iter().map(|r| r.seconds).sum::<f64>()
    );
    for r in reports {
        let failures = r
            .checks
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Fail(_)))
            .count();
        let skipped = r
            .checks
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Skip(_)))
            .count();
        let _ = writeln!(
            xml,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{:.3}\">",
            escape(&r.name),
            r.checks.len(),
            r.seconds
        );
        for c in &r.checks {
            let _ = write!(
                xml,
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
                escape(&r.name),
                escape(&c.title),
                c.seconds
            );
            match &c.outcome {
                Outcome::Pass(_) => xml.push_str("/>\n"),
                Outcome::Fail(why) => {
                    let _ = writeln!(
                        xml,
                        ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                        escape(first_line(why)),
                        escape(why)
                    );
                }
                Outcome::Skip(why) => {
                    let _ = writeln!(
                        xml,
                        ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                        escape(why)
                    );
                }
            }
        }
        if failures > 0 && !r.transcript.is_empty() {
            let _ = writeln!(
                xml,
                "    <system-out>{}</system-out>",
                escape(&r.transcript)
            );
        }
        xml.push_str("  </testsuite>\n");
    }
    xml.push_str("</testsuites>\n");
    xml
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// Text as XML character data or an attribute value; characters XML 1.0
/// cannot carry (most control characters) become `?`.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' | '\t' => out.push(c),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::run::CheckResult;

    #[test]
    fn markup_and_control_characters_in_a_reason_are_escaped() {
        let report = ScenarioReport {
            name: "a<b".to_owned(),
            seconds: 1.5,
            transcript: "line \u{1b}[1m\n".to_owned(),
            checks: vec![
                CheckResult {
                    title: "x & y".to_owned(),
                    seconds: 0.5,
                    outcome: Outcome::Fail("got \"</failure>\"\nmore".to_owned()),
                },
                CheckResult {
                    title: "z".to_owned(),
                    seconds: 0.0,
                    outcome: Outcome::Skip("real meter".to_owned()),
                },
            ],
        };
        let xml = junit_xml(&[report]);
        assert!(xml.contains("name=\"a&lt;b\""), "{xml}");
        assert!(xml.contains("name=\"x &amp; y\""), "{xml}");
        assert!(xml.contains("&quot;&lt;/failure&gt;&quot;"), "{xml}");
        assert!(xml.contains("line ?[1m"), "{xml}");
        assert!(xml.contains("failures=\"1\" skipped=\"1\""), "{xml}");
        assert_eq!(xml.matches("<failure ").count(), 1);
    }
}
