//! `/healthz` and `/readyz`, for load balancers and orchestrators: answered
//! on the HTTP (and HTTPS) listeners and on the API's own, without the API
//! token (they tell nothing but whether to send clients here).
//!
//! * `/healthz`: 200 while the process answers at all (a liveness probe:
//!   failing it means restart the process).
//! * `/readyz`: 200 while this process wants new clients: every worker's
//!   listeners are up and it is neither shutting down nor handing over to a
//!   successor; 503 otherwise (a readiness probe: take the node out of the
//!   pool, leave it running). docs/deploying.md shows both in a balancer's
//!   configuration.

use super::shared::Shared;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

/// The status and JSON body for `/healthz` or `/readyz` (`path`), None
/// for any other path.
pub fn answer(shared: &Shared, path: &str) -> Option<(u16, Value)> {
    match path {
        "/healthz" => Some((200, json!({ "status": "ok" }))),
        "/readyz" => {
            let listening = shared
                .workers
                .iter()
                .filter(|w| w.listening.load(Ordering::Relaxed))
                .count();
            let (draining, why) = if shared.handing_over() {
                (true, Some("handing over to a successor"))
            } else if shared.shutting_down() {
                (true, Some("shutting down"))
            } else if listening < shared.workers.len() {
                (false, Some("not every worker is listening"))
            } else {
                (false, None)
            };
            let body = json!({
                "status": if why.is_none() { "ready" } else { "not ready" },
                "draining": draining,
                "workers": shared.workers.len(),
                "workers_listening": listening,
                "reason": why,
            });
            Some((if why.is_none() { 200 } else { 503 }, body))
        }
        _ => None,
    }
}
