//! The load generator: open-loop at a fixed rate, so a slow server cannot
//! slow the senders down and hide its own latency (no coordinated
//! omission). A pacer thread releases message `i` at `start + i / rate`;
//! a pool of keep-alive HTTP/1.1 connections takes them in order. Latency
//! is measured from that *intended* time, so a request that waited for a
//! free connection is charged for the wait. Histograms are hdrhistogram,
//! in microseconds.
//!
//! [`find_max`] searches for the highest rate a scenario sustains.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};

use crate::webhook::Webhooks;

/// A latency histogram: 1 µs to 5 min, three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 300_000_000, 3).expect("valid histogram bounds")
}

/// Sequence numbers are unique across the whole bench run, so a late
/// delivery from an earlier phase is never mistaken for a current one.
static NEXT_SEQ: AtomicU64 = AtomicU64::new(0);

/// Where the load goes.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub path: String,
    pub webhooks: Arc<Webhooks>,
}

/// One fixed-rate run.
#[derive(Debug, Clone, Copy)]
pub struct Shot {
    /// Messages per second.
    pub rate: f64,
    pub duration: Duration,
    /// Keep-alive connections, i.e. requests in flight at most.
    pub connections: usize,
}

/// What a run saw from the sender's side.
pub struct Outcome {
    /// Sequence numbers answered with a 2xx.
    pub acked: Vec<u64>,
    /// Failed requests by cause (`status 503`, `connect`, ...).
    pub failures: BTreeMap<String, u64>,
    /// Intended send time to complete answer, 2xx answers only, in µs.
    pub latency: Histogram<u64>,
    /// The first intended send time and the last answer.
    pub started: Instant,
    pub finished: Instant,
}

impl Outcome {
    /// 2xx answers per second, over the whole run.
    pub fn throughput(&self) -> f64 {
        let secs = self
            .finished
            .saturating_duration_since(self.started)
            .as_secs_f64();
        if secs > 0.0 {
            self.acked.len() as f64 / secs
        } else {
            0.0
        }
    }

    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}

/// Sends `shot.rate × shot.duration` webhooks to `target`, open-loop.
pub async fn fire(target: &Target, shot: Shot) -> Outcome {
    let total = (shot.rate * shot.duration.as_secs_f64()).round().max(1.0) as u64;
    let first_seq = NEXT_SEQ.fetch_add(total, Ordering::Relaxed);
    let target = Arc::new(target.clone());
    // Connect first, so the first messages do not pay for the handshakes.
    let mut connections = Vec::with_capacity(shot.connections);
    for _ in 0..shot.connections {
        connections.push(Conn::open(target.addr).await.ok());
    }
    let (tx, rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let rx = Arc::new(Mutex::new(rx));
    let workers: Vec<_> = connections
        .into_iter()
        .map(|conn| tokio::spawn(worker(conn, rx.clone(), target.clone())))
        .collect();
    let started = Instant::now() + Duration::from_millis(5);
    let nanos_per_msg = 1e9 / shot.rate;
    let pacer = std::thread::spawn(move || {
        for i in 0..total {
            let due = started + Duration::from_nanos((i as f64 * nanos_per_msg) as u64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if tx.send((first_seq + i, due)).is_err() {
                break;
            }
        }
    });
    let mut outcome = Outcome {
        acked: Vec::with_capacity(total as usize),
        failures: BTreeMap::new(),
        latency: histogram(),
        started,
        finished: started,
    };
    for worker in workers {
        let tally = worker.await.expect("load worker");
        outcome.acked.extend(tally.acked);
        for (cause, n) in tally.failures {
            *outcome.failures.entry(cause).or_default() += n;
        }
        outcome
            .latency
            .add(&tally.latency)
            .expect("histograms of one shape");
        outcome.finished = outcome.finished.max(tally.finished);
    }
    pacer.join().expect("pacer thread");
    outcome
}

struct Tally {
    acked: Vec<u64>,
    failures: BTreeMap<String, u64>,
    latency: Histogram<u64>,
    finished: Instant,
}

async fn worker(
    mut conn: Option<Conn>,
    jobs: Arc<Mutex<mpsc::UnboundedReceiver<(u64, Instant)>>>,
    target: Arc<Target>,
) -> Tally {
    let mut tally = Tally {
        acked: Vec::new(),
        failures: BTreeMap::new(),
        latency: histogram(),
        finished: Instant::now(),
    };
    loop {
        let job = jobs.lock().await.recv().await;
        let Some((seq, due)) = job else {
            return tally;
        };
        let signed = target.webhooks.render(seq, due);
        let result = match conn.as_mut() {
            Some(open) => open.post(&target, signed.body, &signed.headers).await,
            None => Err("connect".to_string()),
        };
        let done = Instant::now();
        tally.finished = done;
        match result {
            Ok(status) if (200..300).contains(&status) => {
                tally.acked.push(seq);
                let micros = done.saturating_duration_since(due).as_micros() as u64;
                tally.latency.saturating_record(micros);
            }
            Ok(status) => {
                *tally
                    .failures
                    .entry(format!("status {status}"))
                    .or_default() += 1
            }
            Err(cause) => {
                *tally.failures.entry(cause).or_default() += 1;
                conn = Conn::open(target.addr).await.ok();
            }
        }
    }
}

/// One keep-alive HTTP/1.1 client connection.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|_| "connect".to_string())?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| "handshake".to_string())?;
        tokio::spawn(connection);
        Ok(Conn {
            sender,
            host: addr.to_string(),
        })
    }

    /// POSTs a JSON body; the answer's status once its body is read.
    async fn post(
        &mut self,
        target: &Target,
        body: Bytes,
        headers: &[(&'static str, String)],
    ) -> Result<u16, String> {
        let mut request = hyper::Request::post(target.path.as_str())
            .header("host", &self.host)
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|_| "request".to_string())?;
        self.sender
            .ready()
            .await
            .map_err(|_| "closed".to_string())?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|_| "send".to_string())?;
        let status = response.status().as_u16();
        response
            .into_body()
            .collect()
            .await
            .map_err(|_| "body".to_string())?;
        Ok(status)
    }
}

/// The highest rate a scenario sustains: `probe(rate)` runs the scenario
/// at that rate and `sustained` judges the result. Doubles from `start`
/// until a probe fails (or the rate passes `ceiling`), then bisects
/// `refine` times between the last pass and the first failure; a failing
/// rate is probed twice. Returns the
/// best passing rate with its probe's result (`None` when even `start`
/// fails) and every probe as `(rate, passed)`.
pub async fn find_max<T, F, Fut>(
    mut probe: F,
    sustained: impl Fn(f64, &T) -> bool,
    start: f64,
    ceiling: f64,
    refine: usize,
) -> (Option<(f64, T)>, Vec<(f64, bool)>)
where
    F: FnMut(f64) -> Fut,
    Fut: Future<Output = T>,
{
    let mut probes = Vec::new();
    let mut best = None;
    let mut failed_at = None;
    let mut rate = start;
    // On a shared machine one probe can fail for a neighbour's burst: a
    // rate fails only when a second probe at it fails too.
    let mut judged = async |rate: f64| {
        let first = probe(rate).await;
        if sustained(rate, &first) {
            return (true, first);
        }
        let second = probe(rate).await;
        (sustained(rate, &second), second)
    };
    while rate <= ceiling {
        let (passed, result) = judged(rate).await;
        probes.push((rate, passed));
        if !passed {
            failed_at = Some(rate);
            break;
        }
        best = Some((rate, result));
        rate *= 2.0;
    }
    let Some(mut high) = failed_at else {
        return (best, probes);
    };
    let mut low = best.as_ref().map_or(start / 4.0, |(rate, _)| *rate);
    for _ in 0..refine {
        let mid = ((low + high) / 2.0).round();
        let (passed, result) = judged(mid).await;
        probes.push((mid, passed));
        if passed {
            best = Some((mid, result));
            low = mid;
        } else {
            high = mid;
        }
    }
    (best, probes)
}
