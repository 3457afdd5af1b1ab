//! Stem downloads (whole and ranged), the tenant wall, and the `/apiv1` routes of the
//! replaced service end to end.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod common;

use base64::Engine;
use common::*;

#[tokio::test]
async fn stems_download_when_done() {
    let server = start().await;
    let (_, job) = upload(&server, "?filename=My%20Song.mp3", wav_body(1000)).await;
    let id = job["id"].as_str().unwrap().to_owned();

    let early = get(&server, &format!("/v1/jobs/{id}/stems/vocals"), ACME_KEY).await;
    assert_eq!(early.status(), 409);
    let error: serde_json::Value = early.json().await.unwrap();
    assert_eq!(code(&error), "conflict");

    server.run_workers();
    let done = server.wait_terminal(&id).await;
    assert_eq!(done.state, pipeline::JobState::Done);
    let view: serde_json::Value = get(&server, &format!("/v1/jobs/{id}"), ACME_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        view["links"]["stems"]["vocals"],
        format!("/v1/jobs/{id}/stems/vocals")
    );

    let response = get(&server, &format!("/v1/jobs/{id}/stems/vocals"), ACME_KEY).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "audio/wav");
    let disposition = response.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        disposition.contains("My Song - vocals.wav"),
        "{disposition}"
    );
    let expected = fake_stem_bytes(&done, "vocals");
    assert_eq!(response.bytes().await.unwrap().to_vec(), expected);

    let ranged = server
        .client
        .get(server.url(&format!("/v1/jobs/{id}/stems/vocals")))
        .header("authorization", bearer(ACME_KEY))
        .header("range", "bytes=5-9")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(
        ranged.headers()["content-range"].to_str().unwrap(),
        format!("bytes 5-9/{}", expected.len())
    );
    assert_eq!(
        ranged.bytes().await.unwrap().to_vec(),
        expected[5..10].to_vec()
    );

    let missing = get(&server, &format!("/v1/jobs/{id}/stems/bass"), ACME_KEY).await;
    assert_eq!(missing.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn another_tenants_job_is_not_found_everywhere() {
    let server = start().await;
    server.run_workers();
    let (_, job) = upload(&server, "", wav_body(1000)).await;
    let id = job["id"].as_str().unwrap().to_owned();
    server.wait_terminal(&id).await;

    for path in [
        format!("/v1/jobs/{id}"),
        format!("/v1/jobs/{id}/stems/vocals"),
        format!("/v1/jobs/{id}/events"),
        format!("/apiv1/track/{id}/vocals"),
        format!("/apiv1/remove/{id}/vocals"),
    ] {
        let response = get(&server, &path, BETA_KEY).await;
        assert_eq!(response.status(), 404, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(code(&body), "not_found", "{path}");
    }
    for path in [format!("/v1/jobs/{id}"), format!("/apiv1/remove/{id}/all")] {
        let response = server
            .client
            .delete(server.url(&path))
            .header("authorization", bearer(BETA_KEY))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "DELETE {path}");
    }
    let list: serde_json::Value = get(&server, "/v1/jobs", BETA_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["jobs"], serde_json::json!([]));
    let queue: serde_json::Value = get(&server, "/apiv1/queue", BETA_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(queue["jobs"], serde_json::json!([]));

    // Still there, whole, for its owner.
    let record = server.job(&id).await.expect("record survives");
    assert_eq!(record.results.len(), 2);
    assert_eq!(
        get(&server, &format!("/v1/jobs/{id}/stems/vocals"), ACME_KEY)
            .await
            .status(),
        200
    );
    server.stop().await;
}

#[tokio::test]
async fn legacy_client_round_trip() {
    let server = start().await;
    server.run_workers();
    let audio = wav_body(3000);
    let response = server
        .client
        .post(server.url("/apiv1/separate"))
        .header("authorization", bearer(ACME_KEY))
        .json(&serde_json::json!({
            "mp3": base64::engine::general_purpose::STANDARD.encode(&audio),
            "model": "duo",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let queued: serde_json::Value = response.json().await.unwrap();
    let hash = queued["hash"].as_str().expect("hash").to_owned();
    assert_eq!(server.source_bytes(&hash).await, audio);

    let done = server.wait_terminal(&hash).await;
    assert_eq!(done.state, pipeline::JobState::Done);
    let queue: serde_json::Value = get(&server, "/apiv1/queue", ACME_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(queue["jobs"][0]["hash"], hash.as_str());
    assert_eq!(queue["jobs"][0]["status"], "done");

    for track in ["vocals", "vocals.wav"] {
        let response = get(&server, &format!("/apiv1/track/{hash}/{track}"), ACME_KEY).await;
        assert_eq!(response.status(), 200, "{track}");
        assert_eq!(
            response.bytes().await.unwrap().to_vec(),
            fake_stem_bytes(&done, "vocals")
        );
    }
    let removed = get(&server, &format!("/apiv1/remove/{hash}/vocals"), ACME_KEY).await;
    assert_eq!(removed.status(), 200);
    assert_eq!(
        get(&server, &format!("/apiv1/track/{hash}/vocals"), ACME_KEY)
            .await
            .status(),
        404
    );
    assert_eq!(
        get(&server, &format!("/apiv1/track/{hash}/drums"), ACME_KEY)
            .await
            .status(),
        200
    );

    let removed = server
        .client
        .delete(server.url(&format!("/apiv1/remove/{hash}/all")))
        .header("authorization", bearer(ACME_KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 200);
    assert!(server.job(&hash).await.is_none());
    assert!(server.objects().is_empty(), "{:?}", server.objects());
    server.stop().await;
}
