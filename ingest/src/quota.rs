//! Per-tenant caps (`tenants.*`), checked before an upload's body is read: jobs not yet
//! finished, and uploads per minute. Over a cap the answer is 429 `rate_limited` with
//! `Retry-After`, and `msaas_tenant_limited_total{limit}` counts it. The counts live with the
//! job records (Redis in distributed mode), so every ingest replica sees the same ones.
//!
//! Both caps are checked, not reserved: uploads arriving at the same moment may pass the
//! unfinished-jobs cap by as many as arrive together.

use pipeline::ErrorCode;

use crate::error::ApiError;
use crate::state::IngestState;

/// The upload-rate window.
const WINDOW_MS: u64 = 60_000;

/// What a client over the unfinished-jobs cap is told to wait: jobs take minutes.
const ACTIVE_RETRY_SECS: u64 = 30;

/// Admits one upload of `tenant`, or answers why not.
pub(crate) async fn admit_upload(state: &IngestState, tenant: &str) -> Result<(), ApiError> {
    let caps = &state.inner.tenants;
    let jobs = &state.backends().jobs;
    if caps.uploads_per_minute > 0 {
        let now_ms = pipeline::job::now_ms();
        let count = jobs.count_upload(tenant, now_ms, WINDOW_MS).await?;
        if count > caps.uploads_per_minute {
            observe::metrics::tenant_limited("uploads_per_minute");
            let window_left_ms = WINDOW_MS - now_ms % WINDOW_MS;
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "this tenant may upload {} songs a minute (tenants.uploads_per_minute)",
                    caps.uploads_per_minute
                ),
            )
            .with_retry_after(window_left_ms.div_ceil(1000)));
        }
    }
    if caps.max_active_jobs > 0 {
        let active = jobs.active_count(tenant).await?;
        if active >= caps.max_active_jobs {
            observe::metrics::tenant_limited("active_jobs");
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "this tenant has {active} jobs not finished, the most it may have \
                     (tenants.max_active_jobs = {}); retry when some are done",
                    caps.max_active_jobs
                ),
            )
            .with_retry_after(ACTIVE_RETRY_SECS));
        }
    }
    Ok(())
}
