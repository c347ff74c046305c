//! The sink: a minimal hyper server standing in for a destination. It counts
//! deliveries by the sequence number in the body, records how long after its
//! intended send time each one arrived, and can be told to fail (503), to
//! fail slowly, or to recover, so the breaker and backlog scenarios can
//! script an outage.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::webhook::{at_nanos, parse_marks};

/// How the sink answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200 with a small JSON body: a delivery.
    Ok = 0,
    /// 503 at once.
    Fail = 1,
    /// 503 after [`SLOW_FAIL`].
    SlowFail = 2,
}

/// How long a slowly failing sink takes to say 503: long enough to hold a
/// delivery slot, short of the bench destinations' attempt timeout.
pub const SLOW_FAIL: Duration = Duration::from_millis(200);

/// What arrived since the last [`Sink::take`].
pub struct Window {
    /// Deliveries per sequence number (more than 1: a redelivery).
    pub seen: HashMap<u64, u32>,
    /// Delivery latency: arrival minus intended send time, microseconds.
    pub latency: Histogram<u64>,
    pub first: Option<Instant>,
    pub last: Option<Instant>,
    /// Requests answered with a failure.
    pub refused: u64,
    /// Requests whose body carried no sequence number.
    pub foreign: u64,
}

impl Window {
    fn new() -> Window {
        Window {
            seen: HashMap::new(),
            latency: crate::load::histogram(),
            first: None,
            last: None,
            refused: 0,
            foreign: 0,
        }
    }

    /// Deliveries beyond the first of each message.
    pub fn duplicates(&self) -> u64 {
        self.seen.values().map(|n| u64::from(n - 1)).sum()
    }

    /// The expected sequence numbers that never arrived.
    pub fn missing(&self, expected: &[u64]) -> usize {
        expected
            .iter()
            .filter(|seq| !self.seen.contains_key(seq))
            .count()
    }
}

struct State {
    answer: AtomicU8,
    window: Mutex<Window>,
}

/// A running sink; stops when dropped.
pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Sink {
    /// Binds 127.0.0.1 on a free port, answering 200.
    pub async fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let addr = listener.local_addr().expect("sink address");
        let state = Arc::new(State {
            answer: AtomicU8::new(Answer::Ok as u8),
            window: Mutex::new(Window::new()),
        });
        let server = tokio::spawn(serve(listener, state.clone()));
        Sink {
            addr,
            state,
            server,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn answer_with(&self, answer: Answer) {
        self.state.answer.store(answer as u8, Ordering::SeqCst);
    }

    /// What arrived so far; starts a new window.
    pub fn take(&self) -> Window {
        std::mem::replace(&mut *self.state.window.lock().expect("sink"), Window::new())
    }

    /// Waits until every sequence number in `expected` has arrived, or the
    /// timeout; `true` when all did.
    pub async fn wait_for(&self, expected: &[u64], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let window = self.state.window.lock().expect("sink");
                if window.seen.len() >= expected.len()
                    && expected.iter().all(|seq| window.seen.contains_key(seq))
                {
                    return true;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(&state, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let arrived = Instant::now();
    let status = match state.answer.load(Ordering::SeqCst) {
        0 => {
            record(state, &body, arrived);
            return respond(StatusCode::OK, r#"{"ok":true}"#);
        }
        1 => StatusCode::SERVICE_UNAVAILABLE,
        _ => {
            tokio::time::sleep(SLOW_FAIL).await;
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    state.window.lock().expect("sink").refused += 1;
    respond(status, "")
}

fn record(state: &State, body: &[u8], arrived: Instant) {
    let marks = parse_marks(body);
    let mut window = state.window.lock().expect("sink");
    let Some((seq, due)) = marks else {
        window.foreign += 1;
        return;
    };
    *window.seen.entry(seq).or_default() += 1;
    let micros = arrived.saturating_duration_since(at_nanos(due)).as_micros() as u64;
    window.latency.saturating_record(micros);
    window.first.get_or_insert(arrived);
    window.last = Some(arrived);
}

fn respond(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}
