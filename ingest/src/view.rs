//! The job as the API shows it: the record's public fields plus links.

use std::collections::BTreeMap;

use pipeline::{Job, JobState};
use serde_json::{Value, json};

pub(crate) fn job_path(job: &Job) -> String {
    format!("/v1/jobs/{}", job.id)
}

/// `GET /v1/jobs/{id}`'s body.
pub(crate) fn job_view(job: &Job) -> Value {
    let base = job_path(job);
    let stem_links: BTreeMap<&str, String> = if job.state == JobState::Done {
        job.results
            .keys()
            .map(|stem| (stem.as_str(), format!("{base}/stems/{stem}")))
            .collect()
    } else {
        BTreeMap::new()
    };
    let stages: BTreeMap<&str, Value> = job
        .stages
        .iter()
        .map(|(stage, times)| {
            (
                stage.as_str(),
                json!({"started_ms": times.started_ms, "finished_ms": times.finished_ms}),
            )
        })
        .collect();
    json!({
        "id": job.id,
        "state": job.state,
        "tenant": job.tenant,
        "model": job.options.model,
        "source_name": job.source_name,
        "options": job.options,
        "stems": job.stems,
        "created_ms": job.created_ms,
        "updated_ms": job.updated_ms,
        "stages": stages,
        "attempt": job.attempt,
        "error": job.error,
        "sha256": job.sha256,
        "source": job.source,
        "links": {
            "self": base,
            "events": format!("{base}/events"),
            "stems": stem_links,
        },
    })
}
