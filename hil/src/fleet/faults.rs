//! Faults the fleet simulator injects into requests: what a load balancer,
//! a captive portal or an outage does to a push or a heartbeat.
//!
//! Faults are queued and applied in the order injected, each to the next
//! `count` requests of its [`FaultRoute`] (ingest unless told otherwise),
//! before anything else looks at the request (the token included), so a test
//! knows exactly which requests a fault hits. A request takes the first
//! waiting fault that applies to its route; faults for other routes stay
//! queued.

use super::report::Route;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// One fault and how many requests (of its [`FaultRoute`]) it applies to.
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

/// The requests a fault applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultRoute {
    /// `POST /api/fleet/ingest` only (the default).
    #[default]
    Ingest,
    /// `POST /api/fleet/heartbeat` only.
    Heartbeat,
    /// `POST /api/fleet/events` only.
    Events,
    /// Every route (ingest, heartbeat, events): a fault with count N is
    /// consumed by the next N requests of any of them.
    All,
}

impl FaultRoute {
    /// Whether a fault for this route hits a request to `route`.
    pub fn applies_to(self, route: Route) -> bool {
        matches!(
            (self, route),
            (FaultRoute::All, _)
                | (FaultRoute::Ingest, Route::Ingest)
                | (FaultRoute::Heartbeat, Route::Heartbeat)
                | (FaultRoute::Events, Route::Events)
        )
    }
}

/// A fault with the route it applies to, as `POST /admin/faults` takes it
/// and `GET /admin/faults` shows it: the fault's fields and `"route"`
/// (`"ingest"` when absent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoutedFault {
    /// The fault.
    #[serde(flatten)]
    pub fault: Fault,
    /// The requests it applies to.
    pub route: FaultRoute,
}

impl RoutedFault {
    /// Reads the admin JSON form: a [`Fault`] object with an optional
    /// `"route"` field. The error says what is wrong.
    pub fn from_json(value: serde_json::Value) -> Result<RoutedFault, String> {
        let serde_json::Value::Object(mut object) = value else {
            return Err(
                r#"expected an object like {"kind":"status","status":503,"route":"all"}"#
                    .to_owned(),
            );
        };
        let route = match object.remove("route") {
            None => FaultRoute::Ingest,
            Some(route) => serde_json::from_value(route)
                .map_err(|e| format!("route: {e} (expected ingest, heartbeat, events or all)"))?,
        };
        let fault =
            serde_json::from_value(serde_json::Value::Object(object)).map_err(|e| e.to_string())?;
        Ok(RoutedFault { fault, route })
    }
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
    /// Each fault with its route and the requests it still applies to
    /// (never 0).
    queue: VecDeque<(Fault, FaultRoute, u32)>,
}

impl FaultQueue {
    /// Queues a valid fault for `route`; returns how many faults are now
    /// waiting.
    pub(crate) fn push(&mut self, fault: Fault, route: FaultRoute) -> usize {
        let count = fault.count();
        self.queue.push_back((fault, route, count));
        self.queue.len()
    }

    /// The fault for the next request to `route`, if any: the first waiting
    /// fault that applies to it (consumes one of its count).
    pub(crate) fn take(&mut self, route: Route) -> Option<Fault> {
        let at = self
            .queue
            .iter()
            .position(|(_, applies, _)| applies.applies_to(route))?;
        let (fault, _, remaining) = &mut self.queue[at];
        let taken = fault.with_count(1);
        *remaining -= 1;
        if *remaining == 0 {
            self.queue.remove(at);
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
    pub(crate) fn pending(&self) -> Vec<RoutedFault> {
        self.queue
            .iter()
            .map(|(fault, route, remaining)| RoutedFault {
                fault: fault.with_count(*remaining),
                route: *route,
            })
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
        queue.push(Fault::Hang { count: 2 }, FaultRoute::Ingest);
        assert_eq!(
            queue.push(Fault::NotJson { count: 1 }, FaultRoute::Ingest),
            2
        );
        let faults = |queue: &FaultQueue| -> Vec<Fault> {
            queue.pending().into_iter().map(|r| r.fault).collect()
        };
        assert_eq!(
            faults(&queue),
            vec![Fault::Hang { count: 2 }, Fault::NotJson { count: 1 }]
        );
        let ingest = Route::Ingest;
        assert_eq!(queue.take(ingest), Some(Fault::Hang { count: 1 }));
        assert_eq!(faults(&queue)[0], Fault::Hang { count: 1 });
        assert_eq!(queue.take(ingest), Some(Fault::Hang { count: 1 }));
        assert_eq!(queue.take(ingest), Some(Fault::NotJson { count: 1 }));
        assert_eq!(queue.take(ingest), None);
        queue.push(Fault::Hang { count: 5 }, FaultRoute::Ingest);
        assert_eq!(queue.clear(), 1);
        assert_eq!(queue.take(ingest), None);
    }

    #[test]
    fn a_request_takes_the_first_fault_for_its_route() {
        let mut queue = FaultQueue::default();
        queue.push(Fault::Hang { count: 1 }, FaultRoute::Heartbeat);
        queue.push(Fault::NotJson { count: 1 }, FaultRoute::Ingest);
        queue.push(Fault::Hang { count: 2 }, FaultRoute::All);
        assert_eq!(queue.take(Route::Ingest), Some(Fault::NotJson { count: 1 }));
        // The heartbeat fault was not consumed by the ingest request.
        assert_eq!(queue.take(Route::Heartbeat), Some(Fault::Hang { count: 1 }));
        // `all`: its count is shared by both routes.
        assert_eq!(queue.take(Route::Ingest), Some(Fault::Hang { count: 1 }));
        assert_eq!(queue.take(Route::Heartbeat), Some(Fault::Hang { count: 1 }));
        assert_eq!(queue.take(Route::Heartbeat), None);
        assert_eq!(queue.take(Route::Ingest), None);
        // Events have their own route, and `all` covers them too.
        queue.push(Fault::Hang { count: 1 }, FaultRoute::Events);
        queue.push(Fault::NotJson { count: 1 }, FaultRoute::All);
        assert_eq!(queue.take(Route::Events), Some(Fault::Hang { count: 1 }));
        assert_eq!(queue.take(Route::Events), Some(Fault::NotJson { count: 1 }));
        assert_eq!(queue.take(Route::Events), None);
    }

    #[test]
    fn routed_faults_parse_with_ingest_as_the_default() {
        let parse = |text: &str| RoutedFault::from_json(serde_json::from_str(text).expect("JSON"));
        assert_eq!(
            parse(r#"{"kind":"status","status":503,"count":100000,"route":"all"}"#),
            Ok(RoutedFault {
                fault: Fault::Status {
                    status: 503,
                    retry_after: None,
                    count: 100_000
                },
                route: FaultRoute::All
            })
        );
        assert_eq!(
            parse(r#"{"kind":"hang"}"#).map(|r| r.route),
            Ok(FaultRoute::Ingest)
        );
        assert_eq!(
            parse(r#"{"kind":"hang","route":"heartbeat"}"#).map(|r| r.route),
            Ok(FaultRoute::Heartbeat)
        );
        assert_eq!(
            parse(r#"{"kind":"hang","route":"events"}"#).map(|r| r.route),
            Ok(FaultRoute::Events)
        );
        for bad in [
            r#"{"kind":"hang","route":"alerts"}"#,
            r#"{"kind":"hang","route":null}"#,
            r#"{"kind":"hang","rout":"all"}"#,
            r#"[{"kind":"hang"}]"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let shown = serde_json::to_value(RoutedFault {
            fault: Fault::Hang { count: 2 },
            route: FaultRoute::All,
        })
        .expect("serializable");
        assert_eq!(
            shown,
            serde_json::json!({"kind": "hang", "count": 2, "route": "all"})
        );
    }
}
