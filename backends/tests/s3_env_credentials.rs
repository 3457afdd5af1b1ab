//! `S3Store::connect` (the constructor services use) takes its credentials from the standard
//! AWS chain: here `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`. A test binary of its own,
//! with one test, because it sets process environment variables.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

use backends::S3Store;
use bytes::Bytes;
use pipeline::config::S3Config;
use pipeline::traits::BlobStore;

#[tokio::test]
async fn connect_uses_the_standard_credential_chain() {
    // SAFETY: the only test in this binary, and no other thread reads the environment yet.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "msaas-dev");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "msaas-dev-secret");
        std::env::remove_var("AWS_SESSION_TOKEN");
        std::env::remove_var("AWS_PROFILE");
    }
    let endpoint = std::env::var("MSAAS_TEST_S3_ENDPOINT")
        .unwrap_or_else(|_| "http://127.0.0.1:8333".to_owned());
    let config = S3Config {
        endpoint: Some(endpoint.clone()),
        bucket: format!(
            "msaas-test-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        ),
        ..S3Config::default()
    };
    let store = S3Store::connect(&config).await.unwrap();
    if let Err(err) = store.ensure_bucket().await {
        panic!("no S3 server at {endpoint} ({err}); start one with `tools/dev-services start`");
    }
    store
        .put_bytes("k", Bytes::from_static(b"v"))
        .await
        .unwrap();
    assert_eq!(store.size("k").await.unwrap(), Some(1));
    store.delete("k").await.unwrap();
    store
        .client()
        .delete_bucket()
        .bucket(store.bucket())
        .send()
        .await
        .unwrap();
}
