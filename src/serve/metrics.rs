//! The counters behind `GET /metrics`: request counts and latency histograms per route and status (recorded by
//! [`super::auth::guard`]), the queue, batches and generation speed (from the model thread's
//! [`WorkerStats`](super::worker::WorkerStats)), in Prometheus' text format.

use super::worker::WorkerStats;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Count, summed seconds and histogram buckets of one route and status.
type Latency = (u64, f64, [u64; 11]);

/// Request counts and latency histograms per endpoint and status, for /metrics.
#[derive(Default)]
pub(super) struct Metrics {
    by_route: Mutex<BTreeMap<(String, u16), Latency>>,
    /// Requests being answered.
    pub(super) in_flight: AtomicUsize,
    /// Requests refused because the queue was full.
    pub(super) rejected_full: AtomicU64,
    /// The connection and time limits' counters.
    pub(super) limits: LimitCounters,
}

/// How often each of `limits.rs`'s limits has triggered, and the connections open now.
#[derive(Debug, Default)]
pub(super) struct LimitCounters {
    /// Connections open now.
    pub(super) open: AtomicUsize,
    /// Connections refused because `--max-connections` were open.
    pub(super) refused: AtomicU64,
    /// Connections closed because a request's headers did not arrive in time.
    pub(super) header_timeouts: AtomicU64,
    /// Requests answered 408 because their body did not arrive in time.
    pub(super) body_timeouts: AtomicU64,
    /// Connections still open at the shutdown deadline, closed then.
    pub(super) closed_at_shutdown: AtomicU64,
}

/// The histogram's upper bounds, in seconds (then `+Inf`).
const BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

impl Metrics {
    /// Counts one request of `route` answered with `status` after `seconds`.
    pub(super) fn record(&self, route: &str, status: u16, seconds: f64) {
        let mut m = self.by_route.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry((route.to_string(), status)).or_insert((0, 0.0, [0; 11]));
        e.0 += 1;
        e.1 += seconds;
        let i = BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(10);
        e.2[i] += 1;
    }
}

/// The Prometheus text of `GET /metrics` (served by [`super::native`]).
pub(super) fn render(metrics: &Metrics, ws: &WorkerStats) -> String {
    let mut s = String::new();
    s.push_str("# HELP vlm_zoo_requests_total Requests by route and status.\n# TYPE vlm_zoo_requests_total counter\n");
    let m = metrics.by_route.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for ((route, status), (n, _, _)) in &m {
        s.push_str(&format!("vlm_zoo_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}\n"));
    }
    s.push_str("# HELP vlm_zoo_request_seconds Request latency.\n# TYPE vlm_zoo_request_seconds histogram\n");
    let mut per_route: BTreeMap<&str, Latency> = BTreeMap::new();
    for ((route, _), (n, sum, b)) in &m {
        let e = per_route.entry(route.as_str()).or_insert((0, 0.0, [0; 11]));
        e.0 += n;
        e.1 += sum;
        for i in 0..11 {
            e.2[i] += b[i];
        }
    }
    for (route, (n, sum, b)) in per_route {
        let mut acc = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            acc += b[i];
            s.push_str(&format!("vlm_zoo_request_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {acc}\n"));
        }
        s.push_str(&format!("vlm_zoo_request_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {n}\n"));
        s.push_str(&format!("vlm_zoo_request_seconds_sum{{route=\"{route}\"}} {sum}\n"));
        s.push_str(&format!("vlm_zoo_request_seconds_count{{route=\"{route}\"}} {n}\n"));
    }
    s.push_str(
        "# HELP vlm_zoo_queue_depth Requests waiting for the model.\n# TYPE vlm_zoo_queue_depth gauge\n",
    );
    s.push_str(&format!("vlm_zoo_queue_depth {}\n", ws.queued.load(Ordering::Relaxed)));
    s.push_str("# HELP vlm_zoo_in_flight Requests being answered.\n# TYPE vlm_zoo_in_flight gauge\n");
    s.push_str(&format!("vlm_zoo_in_flight {}\n", metrics.in_flight.load(Ordering::Relaxed)));
    s.push_str("# HELP vlm_zoo_rejected_total Requests refused with 503 (queue full).\n# TYPE vlm_zoo_rejected_total counter\n");
    s.push_str(&format!("vlm_zoo_rejected_total {}\n", metrics.rejected_full.load(Ordering::Relaxed)));
    let l = &metrics.limits;
    for (name, help, kind, value) in [
        ("connections_open", "Connections open.", "gauge", l.open.load(Ordering::Relaxed) as u64),
        (
            "connections_refused_total",
            "Connections refused at --max-connections.",
            "counter",
            l.refused.load(Ordering::Relaxed),
        ),
        (
            "header_timeouts_total",
            "Connections closed because headers did not arrive within --header-timeout-s.",
            "counter",
            l.header_timeouts.load(Ordering::Relaxed),
        ),
        (
            "body_timeouts_total",
            "Requests answered 408 because the body did not arrive within --body-timeout-s.",
            "counter",
            l.body_timeouts.load(Ordering::Relaxed),
        ),
        (
            "shutdown_closed_total",
            "Connections closed at the --shutdown-timeout-s deadline.",
            "counter",
            l.closed_at_shutdown.load(Ordering::Relaxed),
        ),
    ] {
        s.push_str(&format!(
            "# HELP vlm_zoo_{name} {help}\n# TYPE vlm_zoo_{name} {kind}\nvlm_zoo_{name} {value}\n"
        ));
    }
    s.push_str("# HELP vlm_zoo_batches_total Batches run, by size.\n# TYPE vlm_zoo_batches_total counter\n");
    for (label, c) in ["1", "2-4", "5-8", "9-16", "17+"].iter().zip(&ws.batch_sizes) {
        s.push_str(&format!("vlm_zoo_batches_total{{size=\"{label}\"}} {}\n", c.load(Ordering::Relaxed)));
    }
    s.push_str("# HELP vlm_zoo_joined_total Requests that joined a running batch.\n# TYPE vlm_zoo_joined_total counter\n");
    s.push_str(&format!("vlm_zoo_joined_total {}\n", ws.joined.load(Ordering::Relaxed)));
    let tokens = ws.tokens.load(Ordering::Relaxed);
    let secs = ws.generate_micros.load(Ordering::Relaxed) as f64 / 1e6;
    s.push_str("# HELP vlm_zoo_generated_tokens_total Tokens generated.\n# TYPE vlm_zoo_generated_tokens_total counter\n");
    s.push_str(&format!("vlm_zoo_generated_tokens_total {tokens}\n"));
    s.push_str("# HELP vlm_zoo_tokens_per_second Generated tokens per second of generation time.\n# TYPE vlm_zoo_tokens_per_second gauge\n");
    s.push_str(&format!(
        "vlm_zoo_tokens_per_second {}\n",
        if secs > 0.0 { tokens as f64 / secs } else { 0.0 }
    ));
    s
}
