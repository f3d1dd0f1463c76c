//! The fleet's tokens: one current token and at most one previous token,
//! honoured until its grace window ends (SPEC §7).
//!
//! Only SHA-256 digests are kept: a plain token never reaches the state, the
//! logs, the events or an admin answer. Everything a person sees names a
//! token by its [`fingerprint`], the first 8 hex digits of its SHA-256, the
//! same form the daemon logs, so both sides' logs can be matched.
//!
//! Expiry runs on the monotonic clock (a wall-clock step does not end a grace
//! window early or late); the wall-clock `expires_at` in reports is for
//! people.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// The SHA-256 of a token: all the simulator keeps of it.
pub(crate) type TokenDigest = [u8; 32];

/// The SHA-256 of `token`.
pub(crate) fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// The short, non-secret name of a token: the first 8 hex digits of its
/// SHA-256 (what the daemon logs for the same token).
pub fn fingerprint(token: &str) -> String {
    fingerprint_of(&digest(token))
}

/// The fingerprint of a token known only by its digest.
pub(crate) fn fingerprint_of(digest: &TokenDigest) -> String {
    let mut text = String::with_capacity(8);
    for byte in &digest[..4] {
        // Writing to a String cannot fail.
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// Which of the honoured tokens a request presented.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRole {
    /// The current token.
    Current,
    /// The previous token, inside its grace window.
    Previous,
}

/// The rotated-out token and when it stops being honoured.
#[derive(Clone, Debug)]
struct Previous {
    /// Its digest.
    digest: TokenDigest,
    /// When it stops being honoured (monotonic); `None` when the grace is too
    /// long to represent, i.e. never.
    expires: Option<Instant>,
    /// The same moment on the wall clock, for reports.
    expires_at: Option<DateTime<Utc>>,
}

/// The tokens the fleet honours.
#[derive(Clone, Debug)]
pub(crate) struct Tokens {
    /// The token every request may use.
    current: TokenDigest,
    /// The token rotated out last, if any: at most one is kept (SPEC §7).
    previous: Option<Previous>,
}

/// The honoured tokens as a report shows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenStatus {
    /// Fingerprint of the current token.
    pub current: String,
    /// Fingerprint of the previous token, if one is kept (even when its grace
    /// has ended: `previous_active` says whether it is still honoured).
    pub previous: Option<String>,
    /// When the previous token stops (or stopped) being honoured, RFC 3339
    /// UTC with milliseconds; `null` without a previous token or when the
    /// grace never ends.
    pub previous_expires_at: Option<String>,
    /// Whether the previous token is honoured right now.
    pub previous_active: bool,
}

/// What a rotation did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RotateReport {
    /// Fingerprint of the new current token.
    pub current: String,
    /// Fingerprint of the token that is now previous (the old current one),
    /// `null` when the rotation changed nothing (the new token was already
    /// current and there was no previous one).
    pub previous: Option<String>,
    /// When the previous token stops being honoured (RFC 3339 UTC, ms).
    pub previous_expires_at: Option<String>,
    /// The grace given to the previous token, in milliseconds.
    pub grace_ms: u64,
    /// Fingerprint of the older previous token that this rotation retired at
    /// once (at most one previous token is honoured), if there was one.
    pub retired: Option<String>,
    /// Whether anything changed: rotating to the current token is a no-op.
    pub changed: bool,
}

/// RFC 3339 UTC with milliseconds, the form every timestamp in reports has.
pub(crate) fn rfc3339_ms(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Previous {
    /// `digest` honoured for `grace` from `now`.
    fn new(digest: TokenDigest, grace: Duration, now: Instant) -> Previous {
        let expires_at = chrono::TimeDelta::from_std(grace)
            .ok()
            .and_then(|grace| Utc::now().checked_add_signed(grace));
        Previous {
            digest,
            expires: now.checked_add(grace),
            expires_at,
        }
    }

    /// Whether it is still honoured at `now`.
    fn active(&self, now: Instant) -> bool {
        self.expires.is_none_or(|expires| now < expires)
    }
}

impl Tokens {
    /// `current`, and `previous` honoured for `grace` from now.
    pub(crate) fn new(current: &str, previous: Option<&str>, grace: Duration) -> Tokens {
        let now = Instant::now();
        Tokens {
            current: digest(current),
            previous: previous.map(|token| Previous::new(digest(token), grace, now)),
        }
    }

    /// The role of the token with `presented` digest at `now`, or `None`
    /// when it is unknown or its grace has ended.
    pub(crate) fn check(&self, presented: &TokenDigest, now: Instant) -> Option<TokenRole> {
        if *presented == self.current {
            return Some(TokenRole::Current);
        }
        match &self.previous {
            Some(previous) if previous.digest == *presented && previous.active(now) => {
                Some(TokenRole::Previous)
            }
            _ => None,
        }
    }

    /// Makes `new` current; the old current token becomes the previous one,
    /// honoured for `grace`, and any older previous token is retired at once.
    /// Rotating to the current token changes nothing.
    pub(crate) fn rotate(&mut self, new: &str, grace: Duration) -> RotateReport {
        let new = digest(new);
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        if new == self.current {
            let status = self.status(Instant::now());
            return RotateReport {
                current: status.current,
                previous: status.previous,
                previous_expires_at: status.previous_expires_at,
                grace_ms,
                retired: None,
                changed: false,
            };
        }
        let old_current = std::mem::replace(&mut self.current, new);
        let older = self
            .previous
            .replace(Previous::new(old_current, grace, Instant::now()));
        // Rotating back to the previous token makes it current: it is not retired.
        let retired = older
            .filter(|older| older.digest != new)
            .map(|older| fingerprint_of(&older.digest));
        let status = self.status(Instant::now());
        RotateReport {
            current: status.current,
            previous: status.previous,
            previous_expires_at: status.previous_expires_at,
            grace_ms,
            retired,
            changed: true,
        }
    }

    /// Ends the previous token's grace now; returns its fingerprint, if there
    /// was one.
    pub(crate) fn expire_previous(&mut self) -> Option<String> {
        self.previous
            .take()
            .map(|previous| fingerprint_of(&previous.digest))
    }

    /// The tokens as reports show them.
    pub(crate) fn status(&self, now: Instant) -> TokenStatus {
        TokenStatus {
            current: fingerprint_of(&self.current),
            previous: self.previous.as_ref().map(|p| fingerprint_of(&p.digest)),
            previous_expires_at: self
                .previous
                .as_ref()
                .and_then(|p| p.expires_at)
                .map(rfc3339_ms),
            previous_active: self.previous.as_ref().is_some_and(|p| p.active(now)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_matches_the_daemons_form() {
        // The daemon's own test vector (daemon/src/uplink/tokens.rs).
        assert_eq!(fingerprint("token1"), "df3e6b0b");
        assert_eq!(fingerprint("t").len(), 8);
    }

    #[test]
    fn rotation_keeps_one_previous_token() {
        let long = Duration::from_secs(3600);
        let mut tokens = Tokens::new("a", None, long);
        let now = Instant::now();
        assert_eq!(tokens.check(&digest("a"), now), Some(TokenRole::Current));
        assert_eq!(tokens.check(&digest("b"), now), None);

        let report = tokens.rotate("b", long);
        assert!(report.changed);
        assert_eq!(report.current, fingerprint("b"));
        assert_eq!(report.previous, Some(fingerprint("a")));
        assert_eq!(report.retired, None);
        let now = Instant::now();
        assert_eq!(tokens.check(&digest("a"), now), Some(TokenRole::Previous));
        assert_eq!(tokens.check(&digest("b"), now), Some(TokenRole::Current));

        let report = tokens.rotate("c", long);
        assert_eq!(report.retired, Some(fingerprint("a")));
        let now = Instant::now();
        assert_eq!(tokens.check(&digest("a"), now), None);
        assert_eq!(tokens.check(&digest("b"), now), Some(TokenRole::Previous));

        // Back to the previous one: it becomes current and is not "retired".
        let report = tokens.rotate("b", long);
        assert_eq!(report.retired, None);
        assert_eq!(report.previous, Some(fingerprint("c")));

        let report = tokens.rotate("b", long);
        assert!(!report.changed);
        assert_eq!(tokens.expire_previous(), Some(fingerprint("c")));
        assert_eq!(tokens.check(&digest("c"), Instant::now()), None);
        assert_eq!(tokens.expire_previous(), None);
    }

    #[test]
    fn grace_ends_on_the_monotonic_clock() {
        let mut tokens = Tokens::new("a", None, Duration::ZERO);
        tokens.rotate("b", Duration::from_millis(100));
        let now = Instant::now();
        assert_eq!(tokens.check(&digest("a"), now), Some(TokenRole::Previous));
        let later = now + Duration::from_millis(200);
        assert_eq!(tokens.check(&digest("a"), later), None);
        assert!(!tokens.status(later).previous_active);
        // A zero grace ends at once.
        tokens.rotate("c", Duration::ZERO);
        assert_eq!(tokens.check(&digest("b"), Instant::now()), None);
    }
}
