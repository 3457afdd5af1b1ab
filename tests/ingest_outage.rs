//! Issue 17: `msaas ingest` started while Redis is down stays up — its API address live, not
//! ready — and serves once Redis is back, instead of exiting into a CrashLoopBackOff. (Its own
//! file: test binaries run one after another, and three private clusters starting at once on
//! a 2-core machine made SeaweedFS refuse the third one's bucket.)

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod support;

use std::time::Duration;

use support::{Cluster, Msaas, http_get_status, wait_for, write_song_at};

/// `msaas ingest` started with Redis down does not exit either: its API address answers
/// `/healthz` 200 and `/readyz` 503 while it waits, and once Redis is back the API serves there
/// (ready, uploads accepted).
#[test]
fn ingest_started_with_redis_down_waits_live_and_then_serves() {
    let mut cluster = Cluster::start(&["outage"]);
    let port = support::free_port();
    cluster.set("MSAAS_SERVER__LISTEN", format!("127.0.0.1:{port}"));
    cluster.redis.kill();
    let mut ingest: Msaas = cluster.spawn(&["ingest", "--no-janitor"]);
    let base = format!("http://127.0.0.1:{port}");
    wait_for("the stand-in answers", Duration::from_secs(30), || {
        http_get_status(&format!("{base}/healthz")) == Some(200)
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        http_get_status(&format!("{base}/readyz")),
        Some(503),
        "not ready while Redis is down"
    );
    assert!(
        ingest.child.try_wait().unwrap().is_none(),
        "ingest exited: {}",
        ingest.log_text()
    );

    cluster.redis.restart();
    let url = ingest.api_url();
    assert_eq!(url, base, "the API took the address over");
    wait_for("ready once Redis is back", Duration::from_secs(30), || {
        http_get_status(&format!("{base}/readyz")) == Some(200)
    });
    let song = cluster.dir.path().join("song.wav");
    write_song_at(&song, 1.0, 2, 44_100);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let answer = runtime.block_on(async {
        reqwest::Client::new()
            .post(format!("{base}/v1/jobs?filename=song.wav"))
            .bearer_auth(cluster.key_of("outage"))
            .header("content-type", "audio/wav")
            .body(std::fs::read(&song).unwrap())
            .send()
            .await
            .expect("POST /v1/jobs")
            .status()
    });
    assert_eq!(answer, 202);
    let exit = ingest.terminate(Duration::from_secs(20));
    assert!(exit.success(), "SIGTERM: exit 0, got {exit:?}");
}
