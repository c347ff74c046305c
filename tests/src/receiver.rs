//! A scripted HTTP receiver for integration tests and benchmarks: a real
//! HTTP/1.1 server on 127.0.0.1 that records every request and answers as the
//! test says (a status, a delay, never, or a dropped connection).
//!
//! Waiting is event-driven: [`TestReceiver::wait_for`] resolves as soon as the
//! n-th request has arrived, with a deadline, so no test sleeps to pass.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// This status, empty body.
    Status(u16),
    /// This status, headers and body.
    StatusWithBody {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Answer as the inner behaviour after a delay (a slow receiver).
    Delay(Duration, Box<Behaviour>),
    /// Never answer; the connection stays open until the client gives up.
    Hang,
    /// Drop the connection without answering.
    Reset,
    /// 200 with the request's own body and content type: a sync route's
    /// caller then sees exactly what the gateway delivered.
    Echo,
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub received_at: Instant,
}

impl Received {
    /// The message id: `webhook-id`, else `x-request-id`.
    pub fn id(&self) -> Option<String> {
        ["webhook-id", "x-request-id"]
            .iter()
            .find_map(|h| self.headers.get(*h)?.to_str().ok().map(str::to_string))
    }
}

struct Script {
    queue: VecDeque<Behaviour>,
    default: Behaviour,
}

struct State {
    script: Mutex<Script>,
    received: Mutex<Vec<Received>>,
    count: watch::Sender<usize>,
    /// Requests being answered now, and the most there ever were at once.
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
}

/// Counts one request in flight until it is answered (or dropped).
struct Answering<'a>(&'a State);

impl<'a> Answering<'a> {
    fn begin(state: &'a State) -> Self {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        Answering(state)
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The receiver; stops (and drops its connections) when dropped.
pub struct TestReceiver {
    addr: SocketAddr,
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TestReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Marks a request to be answered by dropping the connection.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for DropConnection {}

impl TestReceiver {
    /// Binds 127.0.0.1 on a free port and starts serving.
    pub async fn start() -> TestReceiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let state = Arc::new(State {
            script: Mutex::new(Script {
                queue: VecDeque::new(),
                default: Behaviour::Status(200),
            }),
            received: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
        });
        let server = tokio::spawn(serve(listener, state.clone()));
        TestReceiver {
            addr,
            state,
            server,
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The most requests this receiver was answering at once.
    pub fn peak_in_flight(&self) -> usize {
        self.state.peak_in_flight.load(Ordering::SeqCst)
    }

    /// How every request after the queued ones is answered.
    pub fn respond_with(&self, behaviour: Behaviour) {
        self.state.script.lock().expect("script").default = behaviour;
    }

    /// Answers the next requests with these, in order, before the default.
    pub fn enqueue(&self, behaviours: impl IntoIterator<Item = Behaviour>) {
        self.state
            .script
            .lock()
            .expect("script")
            .queue
            .extend(behaviours);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("received").clone()
    }

    pub fn count(&self) -> usize {
        *self.state.count.borrow()
    }

    /// Message ids of every request, in arrival order (repeats included).
    pub fn ids(&self) -> Vec<String> {
        self.received().iter().filter_map(Received::id).collect()
    }

    pub fn unique_ids(&self) -> BTreeSet<String> {
        self.ids().into_iter().collect()
    }

    /// The expected ids that never arrived.
    pub fn missing(&self, expected: &[String]) -> Vec<String> {
        let seen = self.unique_ids();
        expected
            .iter()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect()
    }

    /// Resolves once at least `n` requests have arrived; panics with what did
    /// arrive if that takes longer than `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let mut count = self.state.count.subscribe();
        let reached = tokio::time::timeout(timeout, count.wait_for(|c| *c >= n)).await;
        if !matches!(reached, Ok(Ok(_))) {
            panic!(
                "receiver got {} of {n} requests within {timeout:?}; ids: {:?}",
                self.count(),
                self.ids()
            );
        }
        self.received()
    }
}

impl TestReceiver {
    /// Resolves once `done` holds for the requests received so far
    /// (checked at every arrival); panics with what arrived after `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[Received]) -> bool,
    ) -> Vec<Received> {
        let mut count = self.state.count.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let received = self.received();
            if done(&received) {
                return received;
            }
            if !matches!(
                tokio::time::timeout_at(deadline, count.changed()).await,
                Ok(Ok(()))
            ) {
                panic!(
                    "condition not met within {timeout:?}; receiver got {} requests",
                    received.len()
                );
            }
        }
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    // Connections live in this set, so aborting the server drops them all.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { answer(&state, req).await }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn answer(
    state: &State,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, DropConnection> {
    let _answering = Answering::begin(state);
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let content_type = parts
        .headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    let echo = (content_type, body.clone());
    let behaviour = {
        let mut script = state.script.lock().expect("script");
        script
            .queue
            .pop_front()
            .unwrap_or_else(|| script.default.clone())
    };
    state.received.lock().expect("received").push(Received {
        method: parts.method.to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers,
        // A copy: the collected body may be a slice of the connection's read
        // buffer, and keeping thousands of those would pin their memory.
        body: Bytes::copy_from_slice(&body),
        received_at: Instant::now(),
    });
    state.count.send_modify(|c| *c += 1);
    respond(behaviour, echo).await
}

async fn respond(
    mut behaviour: Behaviour,
    (content_type, body): (String, Bytes),
) -> Result<Response<Full<Bytes>>, DropConnection> {
    loop {
        match behaviour {
            Behaviour::Delay(delay, inner) => {
                tokio::time::sleep(delay).await;
                behaviour = *inner;
            }
            Behaviour::Hang => std::future::pending::<()>().await,
            Behaviour::Reset => return Err(DropConnection),
            Behaviour::Status(status) => return Ok(build(status, &[], String::new())),
            Behaviour::StatusWithBody {
                status,
                headers,
                body,
            } => {
                return Ok(build(status, &headers, body));
            }
            Behaviour::Echo => {
                let mut response = Response::new(Full::new(body));
                if let Ok(value) = hyper::header::HeaderValue::from_str(&content_type) {
                    response
                        .headers_mut()
                        .insert(hyper::header::CONTENT_TYPE, value);
                }
                return Ok(response);
            }
        }
    }
}

fn build(status: u16, headers: &[(String, String)], body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).expect("valid status");
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}
