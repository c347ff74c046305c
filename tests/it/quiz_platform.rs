//! `examples/quiz-platform`, run by the real binary on its own config (only
//! addresses moved): signed sync calls to the quiz app, each fallback when
//! the app fails, and async analytics with three attempts.

use std::time::{Duration, Instant, SystemTime};

use hookgate::verify::{Verifier, VerifyConfig};
use hookgate_tests::receiver::{Behaviour, Received, TestReceiver};
use serde_json::{Value, json};

use crate::support::{GatewayProcess, example_file, host_port};

const SECRET: &str = "quiz-platform-test-secret";
const SLACK: Duration = Duration::from_millis(250);
const WAIT: Duration = Duration::from_secs(20);

fn payload(name: &str) -> String {
    example_file(&format!("quiz-platform/payloads/{name}"))
}

struct Platform {
    gw: GatewayProcess,
    app: TestReceiver,
    review: TestReceiver,
}

async fn start() -> Platform {
    let app = TestReceiver::start().await;
    let review = TestReceiver::start().await;
    let gw = GatewayProcess::start_example(
        "quiz-platform",
        &[
            ("127.0.0.1:9100", host_port(&app)),
            ("127.0.0.1:9101", host_port(&review)),
        ],
        &[("QUIZ_PLATFORM_SECRET", SECRET)],
    );
    Platform { gw, app, review }
}

/// Posts `payload` to `path`; the status, the JSON body and the wall time.
async fn post(gw: &GatewayProcess, path: &str, payload: &str) -> (u16, Value, Duration) {
    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(gw.url(path))
        .header("content-type", "application/json")
        .body(payload.to_string())
        .send()
        .await
        .expect("the gateway answers");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body, started.elapsed())
}

/// What the quiz app can check on every request it gets.
fn assert_platform_headers(request: &Received) {
    let config = VerifyConfig::HmacSha256 {
        secret_env: "S".into(),
        header: http::HeaderName::from_static("x-platform-signature"),
        prefix: "sha256=".into(),
        encoding: Default::default(),
    };
    let verifier = Verifier::from_config(&config, |_| Some(SECRET.to_string())).expect("secret");
    verifier
        .verify(&request.headers, &request.body, SystemTime::now())
        .expect("the app can verify x-platform-signature");
    assert!(request.headers.contains_key("x-timeout-ms"));
    assert!(request.id().is_some_and(|id| id.starts_with("msg_")));
    assert_eq!(
        request.headers["x-request-id"],
        request.headers["webhook-id"]
    );
}

fn app_answers(body: Value) -> Behaviour {
    Behaviour::StatusWithBody {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string(),
    }
}

#[tokio::test]
async fn a_healthy_app_answers_the_player_through_signed_requests() {
    let p = start().await;
    p.app
        .respond_with(app_answers(json!({"accepted": true, "correct": true})));
    let (status, body, _) = post(&p.gw, "/quiz/answers", &payload("answer.json")).await;
    assert_eq!(
        (status, body),
        (200, json!({"accepted": true, "correct": true}))
    );
    let request = &p.app.wait_for(1, WAIT).await[0];
    assert_eq!(request.path_and_query, "/answers");
    assert_platform_headers(request);
    // The x-timeout-ms the app sees is what is left of the route's 2 s.
    let budget: u64 = request.headers["x-timeout-ms"]
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("a number");
    assert!(budget <= 2000 && budget > 0, "{budget}");

    let (status, body, _) = post(&p.gw, "/quiz/answers", r#"{"quiz_id":"q"}"#).await;
    assert_eq!(status, 422, "{body}");
}

#[tokio::test]
async fn when_the_app_hangs_each_route_falls_back_within_its_timeout() {
    let p = start().await;
    // A good answer for the rules first: it is what the cache serves later.
    let rules = json!({"quiz_id": "q-2026-11", "correct": {"3": "b"}});
    p.app.respond_with(app_answers(rules.clone()));
    let (status, body, _) = post(&p.gw, "/quiz/rules", &payload("rules.json")).await;
    assert_eq!((status, &body), (200, &rules));

    p.app.respond_with(Behaviour::Hang);
    let two = Duration::from_secs(2) + SLACK;
    let (status, body, took) = post(&p.gw, "/quiz/answers", &payload("answer.json")).await;
    assert_eq!(status, 200);
    assert_eq!(body["accepted"], false, "a plain rejection: {body}");
    assert!(took < two, "{took:?}");

    let (status, body, took) = post(&p.gw, "/quiz/rules", &payload("rules.json")).await;
    assert_eq!((status, body), (200, rules), "the cached rules");
    assert!(took < two, "{took:?}");

    let (status, body, took) =
        post(&p.gw, "/quiz/registration", &payload("registration.json")).await;
    assert_eq!((status, body), (202, json!({"status": "pending approval"})));
    assert!(took < two, "{took:?}");
    let queued = &p.review.wait_for(1, WAIT).await[0];
    assert_eq!(queued.path_and_query, "/review");
    assert_eq!(queued.body, payload("registration.json").into_bytes());

    let (status, body, took) = post(&p.gw, "/quiz/winner", &payload("winner.json")).await;
    assert_eq!(status, 200);
    let winner = body["winner"].as_str().unwrap_or_default();
    assert!(["p_481", "p_112", "p_907"].contains(&winner), "{body}");
    assert!(took < Duration::from_secs(5) + SLACK, "{took:?}");
}

#[tokio::test]
async fn analytics_are_acknowledged_at_once_and_tried_three_times() {
    let p = start().await;
    p.app.respond_with(Behaviour::Status(503));
    let (status, body, _) = post(&p.gw, "/quiz/analytics", &payload("analytics.json")).await;
    assert_eq!(status, 200, "{body}");
    let id = body["id"].as_str().expect("an id").to_string();
    let tries = p.app.wait_for(3, WAIT).await;
    assert!(tries.iter().all(|r| r.id().as_deref() == Some(id.as_str())));
    assert_platform_headers(&tries[0]);
    // The third failure was the last: wait until the gateway has written it,
    // then make sure no fourth attempt comes.
    p.gw.wait_for_log("attempts exhausted (3 of 3)", WAIT);
    assert_eq!(p.app.count(), 3);
}
