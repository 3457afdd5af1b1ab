//! Issue 5, reliability: SIGKILL a worker process in the middle of each stage, at randomized
//! points, against private Redis (AOF), SeaweedFS and NATS. Every job must still reach `done`,
//! with each result object present exactly once, and no job lost.
//!
//! The separate worker holds two jobs in flight (`--concurrency 2`), and its rounds submit two
//! songs, so its kills interrupt both. `MSAAS_KILL_POINTS` (default 21) sets how many confirmed
//! mid-stage kills to make.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use pipeline::{Job, JobId, JobOptions, JobState, Stage};
use support::{Cluster, Msaas, random_between, require_default_model, wav_frames, write_song_at};

const TENANT: &str = "killer";
const CLIP_SECONDS: f32 = 4.0;
const CLIP_RATE: u32 = 48_000;

/// One SIGKILL and what the record said about it.
#[derive(Debug)]
struct KillPoint {
    stage: Stage,
    delay_ms: u64,
    #[allow(dead_code)] // Shown in failure messages.
    job: JobId,
    /// The record still showed the stage running (unfinished) after the process died: the kill
    /// interrupted it.
    mid_stage: bool,
    /// Jobs whose records showed the stage running just before the kill.
    running: usize,
}

/// Jobs a separate worker holds at once here: a kill interrupts two in flight.
const SEPARATE_IN_FLIGHT: usize = 2;

/// A worker process, once its `/readyz` answers 200 (its queue is reachable). The separate
/// worker holds [`SEPARATE_IN_FLIGHT`] jobs at once.
fn spawn_worker(cluster: &Cluster, stage: Stage) -> Msaas {
    let in_flight = SEPARATE_IN_FLIGHT.to_string();
    let mut args = vec!["worker", stage.as_str()];
    if stage == Stage::Separate {
        args.extend(["--concurrency", in_flight.as_str()]);
    }
    let mut worker = cluster.spawn(&args);
    let metrics = worker.wait_for_line("metrics ", Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(30);
    while support::http_get_status(&format!("{metrics}/readyz")) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "{stage} worker never ready; log:\n{}",
            worker.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    worker
}

/// Jobs of ours whose records show `stage` running and unfinished.
async fn all_running_in(backends: &pipeline::Backends, ids: &[JobId], stage: Stage) -> Vec<Job> {
    let mut running = Vec::new();
    for id in ids {
        if let Ok(Some(job)) = backends.jobs.get(id).await
            && job.state == stage.running_state()
            && job
                .stages
                .get(&stage)
                .is_none_or(|t| t.finished_ms.is_none())
        {
            running.push(job);
        }
    }
    running
}

/// A job of ours whose record shows `stage` running and unfinished.
async fn running_in(backends: &pipeline::Backends, ids: &[JobId], stage: Stage) -> Option<Job> {
    all_running_in(backends, ids, stage)
        .await
        .into_iter()
        .next()
}

/// Random delay after a stage was seen starting, within its typical length on this machine.
fn kill_delay(stage: Stage) -> u64 {
    match stage {
        Stage::Decode => random_between(0, 40),
        Stage::Separate => random_between(0, 400),
        Stage::Encode => random_between(0, 40),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_workers_lose_no_job_and_write_each_result_once() {
    require_default_model();
    let wanted: usize = std::env::var("MSAAS_KILL_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(21);
    let mut cluster = Cluster::start(&[TENANT]);
    cluster.set("MSAAS_OBSERVE__METRICS_LISTEN", "127.0.0.1:0");
    let backends = cluster.backends().await;
    let audio = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();

    let mut workers: BTreeMap<Stage, Msaas> = Stage::ALL
        .into_iter()
        .map(|stage| (stage, spawn_worker(&cluster, stage)))
        .collect();
    let mut ids: Vec<JobId> = Vec::new();
    let mut kills: Vec<KillPoint> = Vec::new();
    let budget = Duration::from_secs(420);
    let mut round = 0usize;
    while kills.iter().filter(|k| k.mid_stage).count() < wanted {
        assert!(
            started.elapsed() < budget,
            "only {} mid-stage kills in {budget:?}: {kills:#?}",
            kills.iter().filter(|k| k.mid_stage).count()
        );
        // Stages in turn, each with the fewest confirmed kills first.
        let stage = Stage::ALL[round % 3];
        round += 1;
        // Separate rounds submit as many songs as the worker holds, so the kill lands on
        // jobs in flight together.
        let songs = if stage == Stage::Separate {
            SEPARATE_IN_FLIGHT
        } else {
            1
        };
        for song in 0..songs {
            let name = format!("song-{round}-{song}.wav");
            let path = audio.path().join(&name);
            write_song_at(&path, CLIP_SECONDS, (round * 10 + song) as u32, CLIP_RATE);
            let options = JobOptions {
                model: "spleeter-2stems".to_owned(),
                ..JobOptions::default()
            };
            let job = Job::new(TENANT, name, options);
            let job = pipeline::submit_file(&backends, job, &path, None)
                .await
                .expect("submit");
            ids.push(job.id.clone());
        }

        // Wait for the stage to start on one of our jobs.
        let seen = Instant::now();
        let target = loop {
            if let Some(job) = running_in(&backends, &ids, stage).await {
                break Some(job);
            }
            if seen.elapsed() > Duration::from_secs(60) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        };
        let Some(target) = target else {
            panic!(
                "no job reached {stage} within 60 s; worker log:\n{}",
                workers[&stage].log_text()
            );
        };
        let delay_ms = kill_delay(stage);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let running = all_running_in(&backends, &ids, stage).await.len();
        let worker = workers.get_mut(&stage).expect("a worker per stage");
        worker.kill9();
        let after = backends
            .jobs
            .get(&target.id)
            .await
            .expect("read record")
            .expect("record exists");
        let mid_stage = after.state == stage.running_state()
            && after.attempt == target.attempt
            && after
                .stages
                .get(&stage)
                .is_none_or(|t| t.finished_ms.is_none());
        kills.push(KillPoint {
            stage,
            delay_ms,
            job: target.id.clone(),
            mid_stage,
            running,
        });
        workers.insert(stage, spawn_worker(&cluster, stage));
    }

    // Every job finishes: the replacements reclaim what the dead workers held.
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut finished: BTreeMap<JobId, Job> = BTreeMap::new();
    while finished.len() < ids.len() {
        for id in &ids {
            if finished.contains_key(id) {
                continue;
            }
            let job = backends
                .jobs
                .get(id)
                .await
                .expect("read")
                .expect("no job lost");
            if job.state.is_terminal() {
                finished.insert(id.clone(), job);
            }
        }
        if Instant::now() > deadline {
            let stuck: Vec<_> = ids
                .iter()
                .filter(|id| !finished.contains_key(*id))
                .collect();
            panic!(
                "jobs not finished after 240 s: {stuck:?}; logs:\n{}",
                workers
                    .values()
                    .map(Msaas::log_text)
                    .collect::<Vec<_>>()
                    .join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed();

    let source_frames = (CLIP_SECONDS * 44_100.0).round() as u32;
    for (id, job) in &finished {
        assert_eq!(job.state, JobState::Done, "{id}: {:?}", job.error);
        assert_eq!(job.stems, ["vocals", "accompaniment"], "{id}");
        // Each result exactly once: the objects under the job's result prefix are exactly the
        // stems' keys (no duplicates under other names, no partial uploads left visible).
        let listed: BTreeSet<String> = cluster
            .weed
            .list(&cluster.bucket, &format!("results/{id}/"))
            .into_iter()
            .collect();
        let expected: BTreeSet<String> = job.results.values().cloned().collect();
        assert_eq!(listed, expected, "{id}");
        assert_eq!(listed.len(), job.stems.len(), "{id}");
        for key in &listed {
            let frames = wav_frames(&cluster.weed.get(&cluster.bucket, key));
            // 48 kHz in, 44.1 kHz out: allow the resampler's rounding of the length.
            assert!(
                frames.abs_diff(source_frames) <= 2,
                "{key}: {frames} frames, expected about {source_frames}"
            );
        }
    }

    // The survivors shut down gracefully on SIGTERM, and served /readyz while they ran.
    for (stage, worker) in &mut workers {
        let status = worker.terminate(Duration::from_secs(30));
        assert_eq!(
            status.code(),
            Some(0),
            "{stage} worker: {}",
            worker.log_text()
        );
    }

    let confirmed: Vec<&KillPoint> = kills.iter().filter(|k| k.mid_stage).collect();
    let per_stage: BTreeMap<Stage, usize> = Stage::ALL
        .into_iter()
        .map(|s| (s, confirmed.iter().filter(|k| k.stage == s).count()))
        .collect();
    eprintln!(
        "kill test: {} jobs, {} kills ({} mid-stage: {per_stage:?}), all done in {elapsed:.1?}; delays (ms) {:?}",
        ids.len(),
        kills.len(),
        confirmed.len(),
        confirmed
            .iter()
            .map(|k| (k.stage.as_str(), k.delay_ms))
            .collect::<Vec<_>>()
    );
    for stage in Stage::ALL {
        assert!(
            per_stage[&stage] > 0,
            "no kill landed inside {stage}: {kills:#?}"
        );
    }
    assert!(
        kills
            .iter()
            .any(|k| k.stage == Stage::Separate && k.running >= SEPARATE_IN_FLIGHT),
        "no separate kill found {SEPARATE_IN_FLIGHT} jobs in flight: {kills:#?}"
    );
}
