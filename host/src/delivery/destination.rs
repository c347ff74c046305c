//! The running state of each destination: its breaker, its concurrency
//! limit, its signing secret and headers, and whether a 410 disabled it.
//!
//! Destinations are per route (`app/route/name`): two routes pointing at the
//! same URL still get separate breakers, so one app's failures never stop
//! another app's deliveries.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::breaker::{BreakerState, CircuitBreaker, Permit};
use crate::config::{Config, DestinationConfig};
use crate::delivery::retry::RetryPolicy;
use crate::verify::{BodySigner, StandardSecret};

/// Everything a dispatcher needs to send to one destination.
pub struct Destination {
    pub name: String,
    pub config: DestinationConfig,
    pub retry: RetryPolicy,
    pub breaker: CircuitBreaker,
    /// One permit per request in flight.
    pub slots: Semaphore,
    /// Set when the destination answered 410 Gone; cleared by an operator.
    pub disabled: AtomicBool,
    pub secret: Option<StandardSecret>,
    /// Body signature in a header of the receiver's choosing.
    pub body_signer: Option<BodySigner>,
    /// Headers from config, values from the file or the environment.
    pub headers: Vec<(String, String)>,
}

impl Destination {
    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    /// Reports an attempt's outcome to the breaker, and logs the state
    /// change it caused, if any: an operator wants to see a destination's
    /// breaker open and close.
    pub fn report(&self, permit: Permit, failed: bool) {
        let transition = if failed {
            permit.failure()
        } else {
            permit.success()
        };
        match transition.map(|t| t.to) {
            Some(BreakerState::Open { .. }) => {
                tracing::warn!(destination = %self.name, "circuit breaker opened: nothing is sent until the cool-down ends")
            }
            Some(BreakerState::Closed) => {
                tracing::info!(destination = %self.name, "circuit breaker closed: the destination recovered")
            }
            Some(BreakerState::HalfOpen) | None => {}
        }
    }

    /// The per-attempt timeout: the destination's own, else the policy's.
    pub fn attempt_timeout(&self, attempt: u32) -> Duration {
        self.config
            .timeout
            .unwrap_or_else(|| self.retry.attempt_timeout(attempt))
    }
}

/// Destinations keyed by app, route and name.
#[derive(Default)]
pub struct Destinations {
    by_key: HashMap<(String, String, String), Arc<Destination>>,
}

impl Destinations {
    /// Builds every route's destinations. Secrets and header variables were
    /// checked by config validation; a variable that vanished since is
    /// reported here.
    pub fn build(config: &Config) -> Result<Destinations, Vec<String>> {
        let mut problems = Vec::new();
        let mut by_key = HashMap::new();
        for (app, route_name, route) in config.routes() {
            let retry = route
                .retry
                .clone()
                .unwrap_or_else(|| config.defaults.retry.clone());
            let breaker = route
                .breaker
                .clone()
                .unwrap_or_else(|| config.defaults.breaker.clone());
            for (name, dest) in &route.destinations {
                let key = format!("apps.{app}.routes.{route_name}.destinations.{name}");
                let secret = match &dest.secret_env {
                    None => None,
                    Some(var) => {
                        match std::env::var(var).map(|s| StandardSecret::parse(s.trim())) {
                            Ok(Ok(secret)) => Some(secret),
                            Ok(Err(err)) => {
                                problems.push(format!(
                                    "{key}.secret_env: {var:?} does not hold a whsec_ secret: {err}"
                                ));
                                None
                            }
                            Err(_) => {
                                problems.push(format!(
                                    "{key}.secret_env: environment variable {var:?} is not set"
                                ));
                                None
                            }
                        }
                    }
                };
                let mut headers: Vec<(String, String)> = dest
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for (header, var) in &dest.headers_env {
                    match std::env::var(var) {
                        Ok(value) => headers.push((header.clone(), value)),
                        Err(_) => problems.push(format!(
                            "{key}.headers_env.{header}: environment variable {var:?} is not set"
                        )),
                    }
                }
                let body_signer = dest.signature.as_ref().and_then(|config| {
                    BodySigner::from_config(config, |var| std::env::var(var).ok())
                        .map_err(|err| problems.push(format!("{key}.signature.secret_env: {err}")))
                        .ok()
                });
                let destination = Destination {
                    name: name.clone(),
                    config: dest.clone(),
                    retry: retry.clone(),
                    breaker: CircuitBreaker::new(breaker.clone()),
                    slots: Semaphore::new(dest.concurrency),
                    disabled: AtomicBool::new(false),
                    secret,
                    body_signer,
                    headers,
                };
                by_key.insert(
                    (app.to_string(), route_name.to_string(), name.clone()),
                    Arc::new(destination),
                );
            }
        }
        if problems.is_empty() {
            Ok(Destinations { by_key })
        } else {
            Err(problems)
        }
    }

    /// Every destination with its app and route, sorted, for the admin API,
    /// `/health` and metrics.
    pub fn iter(&self) -> Vec<(&str, &str, &Arc<Destination>)> {
        let mut all: Vec<_> = self
            .by_key
            .iter()
            .map(|((app, route, _), dest)| (app.as_str(), route.as_str(), dest))
            .collect();
        all.sort_by(|a, b| (a.0, a.1, &a.2.name).cmp(&(b.0, b.1, &b.2.name)));
        all
    }

    pub fn get(&self, app: &str, route: &str, name: &str) -> Option<&Arc<Destination>> {
        self.by_key
            .get(&(app.to_string(), route.to_string(), name.to_string()))
    }
}
