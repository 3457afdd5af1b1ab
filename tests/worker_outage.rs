//! Issue 17: a worker started while Redis or the S3 server is down stays up — live, not
//! ready — and starts working when the dependency comes back, instead of exiting (which on
//! Kubernetes is a CrashLoopBackOff whose delay outgrows the outage).

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod support;

use std::time::Duration;

use pipeline::{Job, JobOptions, JobState};
use support::{Cluster, Msaas, http_get_status, require_default_model, wait_for, write_song_at};

/// Starts `msaas worker decode` with a metrics listener while `stop` has one dependency down,
/// checks it stays up and unready, brings the dependency back with `start`, and has it decode
/// a job submitted afterwards.
fn worker_waits_out(
    mut cluster: Cluster,
    down: impl FnOnce(&mut Cluster),
    up: impl FnOnce(&mut Cluster),
) {
    require_default_model();
    cluster.set("MSAAS_OBSERVE__METRICS_LISTEN", "127.0.0.1:0");
    down(&mut cluster);
    let mut worker: Msaas = cluster.spawn(&["worker", "decode"]);
    let address = worker.wait_for_line("metrics http://", Duration::from_secs(30));
    let base = format!("http://{address}");
    assert_eq!(
        http_get_status(&format!("{base}/healthz")),
        Some(200),
        "live while waiting"
    );
    // Several connection attempts pass; it neither exits nor claims to be ready.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        http_get_status(&format!("{base}/readyz")),
        Some(503),
        "not ready while a dependency is down"
    );
    assert_eq!(
        http_get_status(&format!("{base}/healthz")),
        Some(200),
        "still up: {}",
        worker.log_text()
    );

    up(&mut cluster);
    wait_for(
        "ready after the dependency is back",
        Duration::from_secs(60),
        || http_get_status(&format!("{base}/readyz")) == Some(200),
    );
    let log = worker.log_text();
    assert_eq!(
        log.matches("a dependency is down").count(),
        1,
        "one line for the outage, not one per attempt:\n{log}"
    );

    // And it works: a job submitted now is decoded.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let backends = runtime.block_on(cluster.backends());
    let song = cluster.dir.path().join("song.wav");
    write_song_at(&song, 2.0, 1, 44_100);
    let job = Job::new(
        "outage",
        "song.wav",
        JobOptions {
            model: "spleeter-2stems".to_owned(),
            ..JobOptions::default()
        },
    );
    let id = runtime
        .block_on(pipeline::submit_file(&backends, job, &song, None))
        .expect("submit")
        .id;
    wait_for("the job decoded", Duration::from_secs(60), || {
        runtime
            .block_on(backends.jobs.get(&id))
            .ok()
            .flatten()
            .is_some_and(|job| {
                job.stages
                    .get(&pipeline::Stage::Decode)
                    .is_some_and(|t| t.finished_ms.is_some())
                    || job.state == JobState::Separating
            })
    });
    let exit = worker.terminate(Duration::from_secs(20));
    assert!(exit.success(), "SIGTERM: exit 0, got {exit:?}");
}

#[test]
fn a_worker_started_with_redis_down_waits_and_then_works() {
    worker_waits_out(
        Cluster::start(&["outage"]),
        |cluster| cluster.redis.kill(),
        |cluster| cluster.redis.restart(),
    );
}

#[test]
fn a_worker_started_with_the_s3_server_down_waits_and_then_works() {
    worker_waits_out(
        Cluster::start(&["outage"]),
        |cluster| cluster.weed.kill(),
        |cluster| cluster.weed.restart(),
    );
}
