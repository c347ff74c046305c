//! The journal's ceiling: how many 1 KB messages per second the journal
//! accepts durably with no HTTP in front, in this process, 64 callers at
//! once. Once with a transaction per message (`accept`, then the shared
//! flush of `durable`), once through the journal rounds (`accept_durable`:
//! the round's messages in one transaction, one flush), which is what the
//! gateway does. The first is the ceiling the gateway had before the rounds;
//! the gap between them is what sled charges per transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hookgate::store::{InboundMessage, SledStore};

use crate::report::Row;
use crate::scenarios::Bench;

/// Callers journaling at once.
const CALLERS: usize = 64;

impl Bench {
    pub async fn journal_ceiling(&mut self, clock: Instant) {
        let mut per_message = None;
        for batched in [false, true] {
            let label = if batched {
                "journal alone: accept_durable (rounds: one transaction per round)"
            } else {
                "journal alone: accept + durable (one transaction per message)"
            };
            self.say(label, clock);
            let rate = journal_rate(batched, self.settings.probe).await;
            let mut row = Row::new(label, format!("{CALLERS} callers, closed loop"));
            row.throughput = rate;
            match per_message {
                None => {
                    per_message = Some(rate);
                    row.versus = "1.00× (baseline)".into();
                }
                Some(base) if base > 0.0 => row.versus = format!("{:.2}×", rate / base),
                Some(_) => {}
            }
            self.report.rows.push(row);
        }
    }
}

/// Messages per second `CALLERS` tasks journal durably in `run`.
async fn journal_rate(batched: bool, run: Duration) -> f64 {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SledStore::open(dir.path()).expect("journal opens");
    let done = Arc::new(AtomicU64::new(0));
    let body = hookgate_tests::payload_1k().into_bytes();
    let started = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let (store, done, body) = (store.clone(), done.clone(), body.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while started.elapsed() < run {
                    let message = message(format!("msg_{caller}_{n}"), body.clone());
                    let accepted = if batched {
                        store.accept_durable(message, None, 1).await.map(|_| ())
                    } else {
                        match store.accept(message, None, 1) {
                            Ok(_) => store.durable().await,
                            Err(err) => Err(err),
                        }
                    };
                    accepted.expect("journal write");
                    done.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.expect("journal caller");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn message(id: String, body: Vec<u8>) -> InboundMessage {
    InboundMessage {
        id,
        app: "bench".into(),
        route: "journal".into(),
        method: "POST".into(),
        path: "/hooks/journal".into(),
        query: String::new(),
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        body,
        received_at: 1,
        validate_hash: None,
    }
}
