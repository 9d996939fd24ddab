//! `WarmCache` with `dry_run`: the plan of a warm, streamed like a warm's
//! progress (the listing as it goes) and ended by one message that carries
//! the plan and its prices. No operation is recorded, nothing is claimed,
//! copied or leased; a caller that goes away stops the listing.

use std::sync::Arc;

use expresscache::proto::v1 as pb;
use expresscache::WarmSpec;
use tokio::sync::mpsc;
use tonic::Status;

use super::{convert, Api, ApiError, ProgressStream};
use crate::auth::Principal;
use crate::core::operation::Outcome;
use crate::pricing::{Estimate, PriceTable};
use crate::progress::Progress;
use crate::stop::StopSignal;
use crate::warm::dry_run::DryPlan;

/// Dry runs at once on one server: each lists a source as a warm does.
pub const MAX_DRY_RUNS: usize = 8;

/// How long the final message waits for a caller that stopped reading.
const FINAL_SEND: std::time::Duration = std::time::Duration::from_secs(30);

/// How often a dry run's listing progress is sent.
const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

impl Api {
    /// Validates, checks the policy and the buckets as for a warm, and
    /// starts the plan.
    pub(super) async fn dry_run(
        &self,
        who: &Principal,
        req: &pb::WarmCacheRequest,
    ) -> Result<ProgressStream, ApiError> {
        let spec = WarmSpec::parse(req, &self.limits)?;
        let mut draining = self.ops.draining();
        if *draining.borrow() {
            return Err(crate::fleet::SubmitError::Draining.into());
        }
        if let Some(p) = &self.policy {
            p.check_warm(who, &spec)
                .map_err(|d| ApiError::Denied(who.clone(), d))?;
        }
        self.check_bucket("bucket", spec.source.as_str()).await?;
        self.check_bucket("directory_bucket", spec.directory_bucket.as_str())
            .await?;
        let permit = Arc::clone(&self.dry_runs)
            .try_acquire_owned()
            .map_err(|_| ApiError::DryRunsBusy {
                limit: MAX_DRY_RUNS,
            })?;
        let warmer = Arc::clone(self.ops.warmer());
        let prices = Arc::clone(&self.prices);
        let (tx, rx) = mpsc::channel::<Result<pb::WarmProgress, Status>>(4);
        tokio::spawn(
            async move {
                let _permit = permit;
                let (progress, _) = Progress::new(String::new(), Arc::clone(&warmer.clock));
                let stop = StopSignal::default();
                let plan = warmer.dry_run(&spec, &progress, &stop);
                tokio::pin!(plan);
                let mut tick = tokio::time::interval(PUBLISH_EVERY);
                let result = loop {
                    tokio::select! {
                        r = &mut plan => break r,
                        _ = tick.tick() => {
                            // Never waits for a slow reader: the plan goes
                            // on, and the reader gets a later update.
                            let update = Ok(convert::progress(progress.snapshot()));
                            if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(update) {
                                // The caller left: stop listing for nobody.
                                stop.cancel();
                            }
                        }
                        Ok(()) = draining.changed(), if !stop.is_set() => {
                            if *draining.borrow() {
                                stop.interrupt();
                            }
                        }
                    }
                };
                if *draining.borrow() {
                    let _ = tx.try_send(Err(Status::unavailable(
                        "the server is shutting down; run the dry run again against another replica or after the restart",
                    )));
                    return;
                }
                let last = match result {
                    Ok(plan) => {
                        let mut last =
                            convert::progress(progress.final_state(Outcome::Succeeded, None));
                        last.plan = Some(plan_message(&plan, &prices));
                        last
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "dry run failed");
                        convert::progress(
                            progress.final_state(Outcome::Failed, Some(e.to_string())),
                        )
                    }
                };
                // A caller that stopped reading does not keep the place.
                let _ = tokio::time::timeout(FINAL_SEND, tx.send(Ok(last))).await;
            }
            .in_current_span(),
        );
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

use tracing::Instrument as _;

fn estimate(e: &Estimate) -> pb::CostEstimate {
    pb::CostEstimate {
        usd: e.usd(),
        lines: e
            .lines
            .iter()
            .map(|l| pb::CostLine {
                item: l.item.to_owned(),
                quantity: l.quantity,
                unit: l.unit.to_owned(),
                usd_per_unit: l.usd_per_unit,
                usd: l.usd(),
            })
            .collect(),
    }
}

/// The plan as sent, priced by `prices`.
pub fn plan_message(plan: &DryPlan, prices: &PriceTable) -> pb::WarmPlan {
    pb::WarmPlan {
        prefixes: plan
            .prefixes
            .iter()
            .map(|(prefix, t)| pb::PrefixPlan {
                prefix: prefix.clone(),
                objects_to_copy: t.objects_to_copy,
                bytes_to_copy: t.bytes_to_copy,
                objects_cached: t.objects_cached,
                bytes_cached: t.bytes_cached,
                objects_refused: t.objects_refused,
            })
            .collect(),
        list_requests: plan.work.list_requests,
        large_objects: plan.large_objects,
        engine: Some(estimate(&prices.engine(&plan.work))),
        batch: Some(estimate(&prices.batch(&plan.work))),
        storage: Some(estimate(&prices.storage(&plan.work))),
        estimated_duration: plan.copying.map(|c| convert::duration(plan.planning + c)),
        prices: prices.source.clone(),
    }
}
