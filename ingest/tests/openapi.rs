//! The OpenAPI document names exactly the routes the server has, and each of them answers
//! (neither 404 nor 405) when called as documented.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod common;

use std::collections::BTreeSet;

use base64::Engine;
use common::*;

#[tokio::test]
async fn every_documented_route_answers_and_every_route_is_documented() {
    let server = start().await;
    server.run_workers();
    let (_, job) = upload(&server, "", wav_body(1000)).await;
    let id = job["id"].as_str().unwrap().to_owned();
    server.wait_terminal(&id).await;

    let served: serde_json::Value = server
        .client
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, ingest::openapi());
    assert!(served["openapi"].as_str().unwrap().starts_with("3.0"));
    let mut documented = BTreeSet::new();
    for (path, item) in served["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "delete", "patch"] {
            if item.get(method).is_some() {
                documented.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    let known: BTreeSet<(String, String)> = ingest::ROUTES
        .iter()
        .map(|(method, path)| ((*method).to_owned(), (*path).to_owned()))
        .collect();
    assert_eq!(documented, known, "the document and ROUTES differ");

    // Calls that delete go last, each on its own stem, the job itself at the very end.
    let mut calls: Vec<&(String, String)> = documented.iter().collect();
    calls.sort_by_key(|(method, path)| {
        let deletes_job = method == "DELETE" && path == "/v1/jobs/{id}";
        (
            deletes_job,
            path.contains("remove"),
            method == "DELETE",
            path.clone(),
        )
    });
    for (method, template) in calls {
        let track = if method == "DELETE" {
            "drums"
        } else {
            "vocals"
        };
        let path = template
            .replace("{id}", &id)
            .replace("{hash}", &id)
            .replace("{stem}", "vocals")
            .replace("{file}", "app.js")
            .replace("{track}", track);
        let url = server.url(&path);
        let request = match method.as_str() {
            "GET" => server.client.get(&url),
            "DELETE" => server.client.delete(&url),
            "POST" if path == "/apiv1/separate" => {
                server.client.post(&url).json(&serde_json::json!({
                    "mp3": base64::engine::general_purpose::STANDARD.encode(wav_body(100)),
                }))
            }
            "POST" => server.client.post(&url).body(wav_body(100)),
            other => panic!("undocumented method {other}"),
        };
        let response = request
            .header("authorization", bearer(ACME_KEY))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert!(
            status != 404 && status != 405 && status < 500,
            "{method} {template} answered {status}"
        );
        assert!(
            served["paths"][template.as_str()][method.to_ascii_lowercase()]["responses"]
                .get(status.to_string())
                .is_some(),
            "{method} {template}: status {status} is not documented"
        );
    }
    assert!(
        server.job(&id).await.is_none(),
        "the final DELETE removed the job"
    );
    server.stop().await;
}
