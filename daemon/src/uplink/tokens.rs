//! Fleet tokens: where they come from, which one to try first, and how a
//! token is named anywhere a person can see it.
//!
//! A token is a secret: it is only ever written into the `Authorization`
//! header. Logs, status, events and errors name it by its
//! [`fingerprint`], the first 8 hex digits of its SHA-256 (the form
//! `fleet-sim` prints too, so both sides' logs can be matched).
//!
//! Preference: the first token is preferred. When the fleet rejects the
//! token in use (`401`), the other one is tried for the same batch at once
//! ([`TokenRing::order`]); while the other one is in use, the preferred one
//! is tried first again every `token_retry`, so a token staged before the
//! fleet knows it is picked up later without anyone touching the gateway.

use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// Most tokens held: the current one and, during a rotation, the previous.
pub const MAX_TOKENS: usize = 2;

/// The short, non-secret name of a token.
pub fn fingerprint(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// One fleet token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The secret, sent only in the `Authorization` header.
    secret: String,
    /// What logs and status show instead.
    fingerprint: String,
}

impl Token {
    /// A token from its secret text.
    pub fn new(secret: &str) -> Token {
        let secret = secret.trim().to_owned();
        let fingerprint = fingerprint(&secret);
        Token {
            secret,
            fingerprint,
        }
    }

    /// The non-secret name.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The secret, for the request header only.
    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({})", self.fingerprint)
    }
}

/// Why tokens could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read.
    #[error("token file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The token file holds no token.
    #[error(
        "token file {path} holds no token; expected one token per line, the preferred one first"
    )]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The token file holds more than two tokens.
    #[error(
        "token file {path} holds {found} tokens; expected at most {MAX_TOKENS} (the current one and, during a rotation, the previous one)"
    )]
    TooMany {
        /// The file.
        path: PathBuf,
        /// How many it holds.
        found: usize,
    },
}

/// Reads a token file: one token per line, preferred first; blank lines
/// and lines starting with `#` are ignored. A file that others than its
/// owner and group can read is used, with a warning.
pub fn read_token_file(path: &Path) -> Result<Vec<Token>, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.to_owned(),
        source,
    })?;
    warn_if_exposed(path);
    let tokens: Vec<Token> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(Token::new)
        .collect();
    match tokens.len() {
        0 => Err(TokenError::Empty {
            path: path.to_owned(),
        }),
        n if n > MAX_TOKENS => Err(TokenError::TooMany {
            path: path.to_owned(),
            found: n,
        }),
        _ => Ok(tokens),
    }
}

/// Warns once per file and mode: the push and the heartbeat read the same
/// file, and a re-read of an unchanged file is not news.
fn warn_if_exposed(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    static WARNED: std::sync::Mutex<Vec<(std::path::PathBuf, u32)>> =
        std::sync::Mutex::new(Vec::new());
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o007 != 0 {
            let mut warned = WARNED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let key = (path.to_owned(), mode);
            if warned.contains(&key) {
                return;
            }
            warned.push(key);
            tracing::warn!(
                file = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "the fleet token file can be read by every user on this gateway; \
                 run `chmod 640 {}` (owner root, group slmd)",
                path.display()
            );
        }
    }
}

/// What identifies a version of the token file, to notice edits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    /// Modification time.
    modified: Option<SystemTime>,
    /// Size in bytes.
    len: u64,
    /// Inode (an editor that writes a new file and renames it changes it).
    inode: u64,
}

/// The token file's current stamp, `None` when it cannot be read.
pub fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// Tokens as configured: inline, or read from `token_file`.
pub fn load(config: &crate::config::FleetConfig) -> Result<Vec<Token>, TokenError> {
    match &config.token_file {
        Some(path) => read_token_file(path),
        None => Ok(config.tokens.iter().map(|t| Token::new(t)).collect()),
    }
}

/// Where the tokens come from (inline, or `token_file` and its stamp when
/// last read) and the ring over them: what the push and the heartbeat each
/// hold, so both follow a reload or an edited token file the same way.
#[derive(Debug)]
pub struct TokenSource {
    /// The tokens and which one works.
    pub ring: TokenRing,
    /// `token_file`, when the tokens come from a file.
    token_file: Option<std::path::PathBuf>,
    /// The file's stamp when last read.
    stamp: Option<FileStamp>,
}

impl TokenSource {
    /// The tokens `config` names. A missing or broken token file gives no
    /// token (and its error): the daemon runs, and the file is read again
    /// when it changes.
    pub fn new(config: &crate::config::FleetConfig) -> (TokenSource, Option<TokenError>) {
        let (tokens, error) = match load(config) {
            Ok(tokens) => (tokens, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        let source = TokenSource {
            ring: TokenRing::new(tokens, config.token_retry),
            token_file: config.token_file.clone(),
            stamp: config.token_file.as_deref().and_then(stamp),
        };
        (source, error)
    }

    /// A reloaded `[fleet]`: whether the tokens changed (then the ring
    /// starts again with the preferred one). On error the tokens in use
    /// stay.
    pub fn reload(&mut self, config: &crate::config::FleetConfig) -> Result<bool, TokenError> {
        self.token_file.clone_from(&config.token_file);
        self.stamp = config.token_file.as_deref().and_then(stamp);
        Ok(self.install(load(config)?))
    }

    /// Reads the token file again if it changed since last read; whether
    /// the tokens changed. On error the tokens in use stay.
    pub fn reread_file(&mut self) -> Result<bool, TokenError> {
        let Some(path) = &self.token_file else {
            return Ok(false);
        };
        let now = stamp(path);
        if now.is_none() || now == self.stamp {
            return Ok(false);
        }
        self.stamp = now;
        let tokens = read_token_file(path)?;
        Ok(self.install(tokens))
    }

    fn install(&mut self, tokens: Vec<Token>) -> bool {
        if tokens.as_slice() == self.ring.tokens() {
            return false;
        }
        self.ring.replace(tokens);
        true
    }
}

/// The tokens in preference order and which one the fleet accepts.
#[derive(Debug)]
pub struct TokenRing {
    /// Preferred first; one or two.
    tokens: Vec<Token>,
    /// The slot that worked last.
    active: usize,
    /// When the preferred token was last tried while the other was active.
    preferred_tried_at: Option<Instant>,
    /// How often the preferred token is tried again while the other works.
    retry_preferred: Duration,
}

impl TokenRing {
    /// A ring over `tokens` (preferred first), starting with the preferred.
    pub fn new(tokens: Vec<Token>, retry_preferred: Duration) -> TokenRing {
        TokenRing {
            tokens,
            active: 0,
            preferred_tried_at: None,
            retry_preferred,
        }
    }

    /// Replaces the tokens (a reload); starts again with the preferred.
    pub fn replace(&mut self, tokens: Vec<Token>) {
        self.tokens = tokens;
        self.active = 0;
        self.preferred_tried_at = None;
    }

    /// The tokens, preferred first.
    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// The slot in use.
    pub fn active(&self) -> usize {
        self.active
    }

    /// The token in a slot.
    pub fn get(&self, slot: usize) -> Option<&Token> {
        self.tokens.get(slot)
    }

    /// The slots to try for the next batch, in order: the active one, then
    /// the other; but the preferred one first when it is due a retry.
    pub fn order(&mut self, now: Instant) -> Vec<usize> {
        let n = self.tokens.len();
        if n <= 1 || self.active == 0 {
            return (0..n).collect();
        }
        let due = self
            .preferred_tried_at
            .is_none_or(|at| now.saturating_duration_since(at) >= self.retry_preferred);
        if due {
            self.preferred_tried_at = Some(now);
            vec![0, self.active]
        } else {
            vec![self.active, 0]
        }
    }

    /// Notes that `slot` was accepted. Returns true when that changes the
    /// slot in use.
    pub fn accepted(&mut self, slot: usize, now: Instant) -> bool {
        let changed = slot != self.active;
        if changed && slot != 0 {
            // Failed over away from the preferred token just now: wait a
            // full period before trying it again.
            self.preferred_tried_at = Some(now);
        }
        self.active = slot;
        changed
    }

    /// Fingerprints, preferred first.
    pub fn fingerprints(&self) -> Vec<String> {
        self.tokens
            .iter()
            .map(|t| t.fingerprint().to_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_short_sha256_hex() {
        // sha256("token1") = df3e6b0b...
        assert_eq!(fingerprint("token1"), "df3e6b0b");
        assert_eq!(Token::new(" token1\n").fingerprint(), "df3e6b0b");
        assert_eq!(format!("{:?}", Token::new("token1")), "Token(df3e6b0b)");
    }

    #[test]
    fn token_file_lines_comments_and_limits() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fleet.token");
        std::fs::write(
            &path,
            "# staged for the rotation\nnew-token\n\n old-token \n",
        )
        .expect("write");
        let tokens = read_token_file(&path).expect("two tokens");
        assert_eq!(
            tokens,
            vec![Token::new("new-token"), Token::new("old-token")]
        );

        std::fs::write(&path, "# nothing yet\n\n").expect("write");
        let e = read_token_file(&path).expect_err("empty");
        assert!(e.to_string().contains("holds no token"), "{e}");

        std::fs::write(&path, "a\nb\nc\n").expect("write");
        let e = read_token_file(&path).expect_err("three");
        assert!(e.to_string().contains("holds 3 tokens"), "{e}");

        let e = read_token_file(&dir.path().join("missing")).expect_err("missing");
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn a_token_source_follows_its_file_and_keeps_its_tokens_on_a_broken_edit() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fleet.token");
        std::fs::write(&path, "t1\n").expect("write");
        let config = crate::config::FleetConfig {
            token_file: Some(path.clone()),
            ..Default::default()
        };
        let (mut source, error) = TokenSource::new(&config);
        assert!(error.is_none());
        assert_eq!(source.ring.tokens(), [Token::new("t1")]);
        assert_eq!(source.reread_file().ok(), Some(false), "unchanged");
        std::fs::write(&path, "t2\nt1\n").expect("write");
        assert_eq!(source.reread_file().ok(), Some(true));
        assert_eq!(source.ring.tokens(), [Token::new("t2"), Token::new("t1")]);
        std::fs::write(&path, "a\nb\nc\n").expect("write");
        assert!(source.reread_file().is_err(), "three tokens");
        assert_eq!(source.ring.tokens().len(), 2, "the tokens in use stay");
        let inline = crate::config::FleetConfig {
            tokens: vec!["t3".into()],
            ..Default::default()
        };
        assert_eq!(source.reload(&inline).ok(), Some(true));
        assert_eq!(source.ring.tokens(), [Token::new("t3")]);
        assert_eq!(source.reread_file().ok(), Some(false), "no file any more");
    }

    #[test]
    fn fails_over_and_retries_the_preferred_token_after_the_period() {
        let start = Instant::now();
        let period = Duration::from_secs(300);
        let mut ring = TokenRing::new(vec![Token::new("staged"), Token::new("known")], period);
        assert_eq!(ring.order(start), vec![0, 1]);
        // The preferred token was rejected, the other accepted.
        assert!(ring.accepted(1, start));
        assert_eq!(ring.order(start + Duration::from_secs(1)), vec![1, 0]);
        assert_eq!(ring.order(start + Duration::from_secs(299)), vec![1, 0]);
        // Due: the preferred one goes first, once per period.
        assert_eq!(ring.order(start + period), vec![0, 1]);
        assert_eq!(
            ring.order(start + period + Duration::from_secs(1)),
            vec![1, 0]
        );
        // The fleet learnt the staged token: back to slot 0.
        assert!(ring.accepted(0, start + period * 2));
        assert_eq!(ring.order(start + period * 2), vec![0, 1]);
        assert!(!ring.accepted(0, start + period * 2));
    }

    #[test]
    fn a_reload_starts_with_the_new_preferred_token() {
        let now = Instant::now();
        let mut ring = TokenRing::new(
            vec![Token::new("a"), Token::new("b")],
            Duration::from_secs(60),
        );
        ring.accepted(1, now);
        ring.replace(vec![Token::new("c")]);
        assert_eq!(ring.active(), 0);
        assert_eq!(ring.order(now), vec![0]);
        assert_eq!(ring.fingerprints(), vec![fingerprint("c")]);
    }
}
