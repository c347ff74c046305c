//! One plugin call: an instance (a fresh `Store` from the version's
//! `InstancePre`, or a warm one from the route's pool), the route's limits
//! installed, the role's function called, the outcome classified.
//!
//! A fresh store per call means nothing a guest does survives the call: no
//! state leaks between messages or apps, and a trap leaves nothing behind.
//! With the pooling allocator this costs microseconds for compiled guests
//! (see BENCHMARKS.md); the big interpreted guests reuse warm instances
//! within the bounds `pool.rs` sets, and only after a clean call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, SemaphorePermit};
use wasmtime::component::Instance;
use wasmtime::{Store, Trap, UpdateDeadline};

use super::answer::{check_outgoing, check_respond, normalize_verdict};
use super::component::{Plugin, one_line};
use super::host::{CallState, MemoryCapExceeded, install_limiter};
use super::pool::{InstancePool, WarmInstance};
use super::{
    Decision, Failure, Outgoing, PluginError, PluginLimits, PluginSetup, Role, UpstreamResponse,
    Verdict, Webhook,
};

/// A plugin's answer with what it cost.
#[derive(Debug, Clone)]
pub struct CallReport<T> {
    pub value: T,
    /// Fuel burned by the call (instantiation included).
    pub fuel_used: u64,
    /// Wall time from taking a pool slot to the answer.
    pub elapsed: Duration,
    /// Whether the call started an instance: every call under `fresh`; under
    /// a warm pool, only when no idle instance was there to reuse.
    pub new_instance: bool,
}

/// A call in progress: the store, the instance, and where they go after.
pub(super) struct Call<'a> {
    pub(super) store: Store<CallState>,
    pub(super) instance: Instance,
    limits: PluginLimits,
    started: Instant,
    lease: Lease<'a>,
    /// The route's turn for this plugin, given back when the call ends.
    _turn: OwnedSemaphorePermit,
}

/// Where a call's instance came from, and where it goes after the call.
enum Lease<'a> {
    /// A fresh instance on one of the engine's call slots (held until the
    /// call ends); dropped after.
    Fresh { _slot: SemaphorePermit<'a> },
    /// A warm instance, back to `pool` after a clean call.
    Warm {
        pool: Arc<InstancePool>,
        permit: OwnedSemaphorePermit,
        version: Arc<str>,
        calls: u32,
    },
}

impl Plugin {
    /// Runs the `validate` role on an inbound webhook.
    pub async fn validate(
        &self,
        setup: &Arc<PluginSetup>,
        hook: &Webhook,
    ) -> Result<CallReport<Verdict>, PluginError> {
        let indices = self
            .inner
            .validate
            .as_ref()
            .ok_or_else(|| self.missing_role(Role::Validate))?;
        let visible = setup.visible(hook);
        let hook = &*visible;
        let mut call = self.start(setup, &hook.id).await?;
        let result = async {
            let guest = indices.load(&mut call.store, &call.instance)?;
            guest.call_validate(&mut call.store, hook).await
        }
        .await;
        call.finish(result).map(|report| CallReport {
            value: normalize_verdict(report.value, &self.info().name),
            ..report
        })
    }

    /// Runs the `transform` role: the requests to send for this message.
    pub async fn transform(
        &self,
        setup: &Arc<PluginSetup>,
        hook: &Webhook,
    ) -> Result<CallReport<Vec<Outgoing>>, PluginError> {
        let indices = self
            .inner
            .transform
            .as_ref()
            .ok_or_else(|| self.missing_role(Role::Transform))?;
        let visible = setup.visible(hook);
        let hook = &*visible;
        let mut call = self.start(setup, &hook.id).await?;
        let result = async {
            let guest = indices.load(&mut call.store, &call.instance)?;
            guest.call_transform(&mut call.store, hook).await
        }
        .await;
        let report = call.finish(result)?;
        check_outgoing(&report.value, &hook.body, setup.answer_cap)?;
        Ok(report)
    }

    /// Runs the `fallback` role after a failed delivery.
    pub async fn fallback(
        &self,
        setup: &Arc<PluginSetup>,
        hook: &Webhook,
        failure: &Failure,
    ) -> Result<CallReport<Decision>, PluginError> {
        let indices = self
            .inner
            .fallback
            .as_ref()
            .ok_or_else(|| self.missing_role(Role::Fallback))?;
        let visible = setup.visible(hook);
        let hook = &*visible;
        let mut call = self.start(setup, &hook.id).await?;
        let result = async {
            let guest = indices.load(&mut call.store, &call.instance)?;
            guest.call_fallback(&mut call.store, hook, failure).await
        }
        .await;
        let report = call.finish(result)?;
        // A malformed decision: the route's safe default replaces it.
        check_respond(report.value.respond.as_ref(), setup.answer_cap)?;
        Ok(report)
    }

    /// Shows the `success` companion of a fallback a good upstream answer
    /// on a sync route.
    pub async fn success(
        &self,
        setup: &Arc<PluginSetup>,
        hook: &Webhook,
        response: &UpstreamResponse,
    ) -> Result<CallReport<()>, PluginError> {
        let indices = self
            .inner
            .success
            .as_ref()
            .ok_or_else(|| self.missing_role(Role::Success))?;
        let visible = setup.visible(hook);
        let hook = &*visible;
        let mut call = self.start(setup, &hook.id).await?;
        let result = async {
            let guest = indices.load(&mut call.store, &call.instance)?;
            guest.call_success(&mut call.store, hook, response).await
        }
        .await;
        call.finish(result)
    }

    /// An instance for one call under the route's limits: a warm one from
    /// the route's pool when its policy has one (reused, or made and kept if
    /// a warm slot is free), else a fresh one on a call slot. The deadline
    /// covers instantiation too.
    pub(super) async fn start(
        &self,
        setup: &Arc<PluginSetup>,
        message_id: &str,
    ) -> Result<Call<'_>, PluginError> {
        let inner = &self.inner;
        let limits = setup.limits;
        // Before anything else: a route waiting for a turn takes no call
        // slot and no warm instance from the others.
        let turn = setup
            .turns
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PluginError::Host("plugin turns closed".into()))?;
        if let Some(pool) = setup.instances.pool(|p| inner.engine.pools().register(p)) {
            let started = Instant::now();
            if let Some(warm) = pool.take(&inner.version) {
                let (mut store, instance, permit, version, calls) = warm.into_parts();
                store.data_mut().begin_call(message_id);
                arm(&mut store, limits, started)?;
                let lease = Lease::Warm {
                    pool: pool.clone(),
                    permit,
                    version,
                    calls,
                };
                return Ok(Call {
                    store,
                    instance,
                    limits,
                    started,
                    lease,
                    _turn: turn,
                });
            }
            if let Some(permit) = inner.engine.try_warm_slot() {
                let (store, instance) = self.instantiate(setup, message_id, started).await?;
                let lease = Lease::Warm {
                    pool: pool.clone(),
                    permit,
                    version: inner.version.clone(),
                    calls: 0,
                };
                return Ok(Call {
                    store,
                    instance,
                    limits,
                    started,
                    lease,
                    _turn: turn,
                });
            }
        }
        let slot = inner
            .engine
            .call_slots()
            .acquire()
            .await
            .map_err(|_| PluginError::Host("plugin engine is shutting down".into()))?;
        let started = Instant::now();
        let (store, instance) = self.instantiate(setup, message_id, started).await?;
        Ok(Call {
            store,
            instance,
            limits,
            started,
            lease: Lease::Fresh { _slot: slot },
            _turn: turn,
        })
    }

    /// A new store with the route's limits armed, and the instance in it.
    async fn instantiate(
        &self,
        setup: &Arc<PluginSetup>,
        message_id: &str,
        started: Instant,
    ) -> Result<(Store<CallState>, Instance), PluginError> {
        let inner = &self.inner;
        let state = CallState::new(setup.clone(), inner.info.clone(), message_id.to_string());
        let mut store = Store::new(inner.engine.engine(), state);
        install_limiter(&mut store);
        arm(&mut store, setup.limits, started)?;
        match inner.pre.instantiate_async(&mut store).await {
            Ok(instance) => Ok((store, instance)),
            Err(err) => {
                store.data_mut().flush_stdio();
                Err(classify(err, setup.limits))
            }
        }
    }
}

/// Gives a store one call's budget: full fuel, and a deadline `limits`
/// after `started`. The epoch callback runs at every tick while the guest
/// runs: past the deadline it interrupts the guest with a trap; before it,
/// a call that has run through a whole tick yields to tokio at each tick
/// (a long call never pins a worker thread for more than a tick or two).
///
/// A call interrupted by its first tick has not run a tick yet, only
/// happened to be running when it came, so it carries on: calls take tens
/// to hundreds of microseconds, and parking one at a yield would keep its
/// instance busy while every request queued on that worker runs first. On
/// a warm pool those requests then find no idle instance and start fresh
/// ones (measured with `--only languages`: the JavaScript validator's
/// ingest went from 2.7-3.2k to 3.9-4.0k msg/s, its peak RSS from 347 to
/// ~210 MiB; BENCHMARKS.md, *What session 5 changed*).
fn arm(
    store: &mut Store<CallState>,
    limits: PluginLimits,
    started: Instant,
) -> Result<(), PluginError> {
    store
        .set_fuel(limits.fuel)
        .map_err(|err| PluginError::Host(one_line(&err)))?;
    let deadline = started + limits.deadline;
    let mut ticks_seen = 0u32;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        ticks_seen = ticks_seen.saturating_add(1);
        Ok(if Instant::now() >= deadline {
            UpdateDeadline::Interrupt
        } else if ticks_seen < 2 {
            UpdateDeadline::Continue(1)
        } else {
            UpdateDeadline::Yield(1)
        })
    });
    Ok(())
}

impl Call<'_> {
    /// Turns the raw outcome into a report or a typed error, copies the
    /// guest's stdout/stderr to the log, and gives a warm instance back to
    /// its pool when the call ended cleanly (an answer, or a deliberate
    /// `err`); after a trap or a limit hit it is dropped.
    pub(super) fn finish<T>(
        self,
        result: wasmtime::Result<Result<T, String>>,
    ) -> Result<CallReport<T>, PluginError> {
        let Call {
            mut store,
            instance,
            limits,
            started,
            lease,
            _turn,
        } = self;
        store.data_mut().flush_stdio();
        let fuel_used = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let new_instance = match &lease {
            Lease::Fresh { .. } => true,
            Lease::Warm { calls, .. } => *calls == 0,
        };
        let outcome = match result {
            Ok(Ok(value)) => Ok(CallReport {
                value,
                fuel_used,
                elapsed: started.elapsed(),
                new_instance,
            }),
            Ok(Err(reason)) => Err(PluginError::Guest(reason)),
            Err(err) => Err(classify(err, limits)),
        };
        let clean = matches!(outcome, Ok(_) | Err(PluginError::Guest(_)));
        if let Lease::Warm {
            pool,
            permit,
            version,
            calls,
        } = lease
            && clean
        {
            pool.put(WarmInstance::from_parts(
                store, instance, permit, version, calls,
            ));
        }
        outcome
    }
}

/// Maps a wasmtime failure to the limit or trap behind it.
fn classify(err: wasmtime::Error, limits: PluginLimits) -> PluginError {
    if let Some(cap) = err.downcast_ref::<MemoryCapExceeded>() {
        return PluginError::MemoryCap { cap: cap.cap };
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => PluginError::OutOfFuel {
            budget: limits.fuel,
        },
        Some(Trap::Interrupt) => PluginError::Deadline {
            deadline: limits.deadline,
        },
        Some(Trap::StackOverflow) => PluginError::StackOverflow,
        Some(trap) => PluginError::Trap(trap.to_string()),
        None => PluginError::Trap(one_line(&err)),
    }
}
