//! Faults the fleet simulator injects into ingest requests: what a load
//! balancer, a captive portal or an outage does to a push.
//!
//! Faults are queued and applied in the order injected, each to the next
//! `count` ingest requests, before anything else looks at the request (the
//! token included), so a test knows exactly which requests a fault hits.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// One fault and how many ingest requests it applies to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Answer with `status` (e.g. 503, 500, 429) and a small JSON error body;
    /// nothing is stored.
    Status {
        /// The HTTP status, 300 to 599.
        status: u16,
        /// Seconds for a `Retry-After` header, when one should be sent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after: Option<u64>,
        /// Requests it applies to (at least 1; default 1).
        #[serde(default = "one")]
        count: u32,
    },
    /// Process the request normally (token, store, de-duplication) but
    /// answer `200` with `<html>OK</html>` as `text/html`, like a proxy or
    /// captive portal: the records are stored, so a re-send counts them as
    /// duplicates.
    NotJson {
        /// Requests it applies to (at least 1; default 1).
        #[serde(default = "one")]
        count: u32,
    },
    /// Read the request and never answer it: it is held until the client
    /// gives up (closes the connection) or the server shuts down. Nothing is
    /// stored.
    Hang {
        /// Requests it applies to (at least 1; default 1).
        #[serde(default = "one")]
        count: u32,
    },
}

/// serde's default for `count`.
fn one() -> u32 {
    1
}

/// Which kind of fault hit a request, as logs and events name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// [`Fault::Status`].
    Status,
    /// [`Fault::NotJson`].
    NotJson,
    /// [`Fault::Hang`].
    Hang,
}

/// A fault the simulator cannot inject.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidFault {
    /// A status that is not a redirect or an error.
    #[error("status {0} cannot be injected: expected 300 to 599")]
    Status(u16),
    /// A fault for no request at all.
    #[error("count must be at least 1")]
    ZeroCount,
}

impl Fault {
    /// Requests it applies to.
    pub fn count(&self) -> u32 {
        match self {
            Fault::Status { count, .. } | Fault::NotJson { count } | Fault::Hang { count } => {
                *count
            }
        }
    }

    /// Its kind.
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::Status { .. } => FaultKind::Status,
            Fault::NotJson { .. } => FaultKind::NotJson,
            Fault::Hang { .. } => FaultKind::Hang,
        }
    }

    /// Checks that it can be injected.
    pub fn validate(&self) -> Result<(), InvalidFault> {
        if self.count() == 0 {
            return Err(InvalidFault::ZeroCount);
        }
        match self {
            Fault::Status { status, .. } if !(300..=599).contains(status) => {
                Err(InvalidFault::Status(*status))
            }
            _ => Ok(()),
        }
    }

    /// The same fault for `count` requests.
    fn with_count(&self, count: u32) -> Fault {
        let mut fault = self.clone();
        match &mut fault {
            Fault::Status { count: c, .. }
            | Fault::NotJson { count: c }
            | Fault::Hang { count: c } => {
                *c = count;
            }
        }
        fault
    }
}

/// Faults waiting for requests, oldest first.
#[derive(Debug, Default)]
pub(crate) struct FaultQueue {
    /// Each fault with the requests it still applies to (never 0).
    queue: VecDeque<(Fault, u32)>,
}

impl FaultQueue {
    /// Queues a valid fault; returns how many faults are now waiting.
    pub(crate) fn push(&mut self, fault: Fault) -> usize {
        let count = fault.count();
        self.queue.push_back((fault, count));
        self.queue.len()
    }

    /// The fault for the next request, if any (consumes one of its count).
    pub(crate) fn take(&mut self) -> Option<Fault> {
        let (fault, remaining) = self.queue.front_mut()?;
        let taken = fault.with_count(1);
        *remaining -= 1;
        if *remaining == 0 {
            self.queue.pop_front();
        }
        Some(taken)
    }

    /// Drops every waiting fault; returns how many there were.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.queue.len();
        self.queue.clear();
        n
    }

    /// The waiting faults, each with the requests it still applies to as its
    /// count.
    pub(crate) fn pending(&self) -> Vec<Fault> {
        self.queue
            .iter()
            .map(|(fault, remaining)| fault.with_count(*remaining))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_from_their_admin_json() {
        let parse = |text: &str| serde_json::from_str::<Fault>(text);
        assert_eq!(
            parse(r#"{"kind":"status","status":503,"count":3,"retry_after":1}"#).ok(),
            Some(Fault::Status {
                status: 503,
                retry_after: Some(1),
                count: 3
            })
        );
        assert_eq!(
            parse(r#"{"kind":"not_json"}"#).ok(),
            Some(Fault::NotJson { count: 1 })
        );
        assert_eq!(
            parse(r#"{"kind":"hang","count":2}"#).ok(),
            Some(Fault::Hang { count: 2 })
        );
        for bad in [
            r#"{"kind":"explode"}"#,
            r#"{"kind":"hang","count":-1}"#,
            r#"{"kind":"hang","status":503}"#,
            r#"{"status":503}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation() {
        assert_eq!(
            Fault::Hang { count: 0 }.validate(),
            Err(InvalidFault::ZeroCount)
        );
        let status = |status| Fault::Status {
            status,
            retry_after: None,
            count: 1,
        };
        assert_eq!(status(200).validate(), Err(InvalidFault::Status(200)));
        assert_eq!(status(600).validate(), Err(InvalidFault::Status(600)));
        assert_eq!(status(503).validate(), Ok(()));
    }

    #[test]
    fn the_queue_applies_faults_in_order_for_their_count() {
        let mut queue = FaultQueue::default();
        queue.push(Fault::Hang { count: 2 });
        assert_eq!(queue.push(Fault::NotJson { count: 1 }), 2);
        assert_eq!(
            queue.pending(),
            vec![Fault::Hang { count: 2 }, Fault::NotJson { count: 1 }]
        );
        assert_eq!(queue.take(), Some(Fault::Hang { count: 1 }));
        assert_eq!(queue.pending()[0], Fault::Hang { count: 1 });
        assert_eq!(queue.take(), Some(Fault::Hang { count: 1 }));
        assert_eq!(queue.take(), Some(Fault::NotJson { count: 1 }));
        assert_eq!(queue.take(), None);
        queue.push(Fault::Hang { count: 5 });
        assert_eq!(queue.clear(), 1);
        assert_eq!(queue.take(), None);
    }
}
