//! A private SeaweedFS (`tools/dev-services weed-serve DIR PORT`) killed with SIGKILL and
//! started again on the same data directory: objects stored before are readable after, and
//! the store works again without being reconnected. Also shows how other tests start a
//! private S3 server.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backends::{S3Options, S3Store};
use bytes::Bytes;
use futures::StreamExt;
use pipeline::config::S3Config;
use pipeline::traits::BlobStore;

/// A port P with P..P+3 and P+10000..P+10003 free (what `weed-serve` listens on).
fn free_weed_port() -> u16 {
    for _ in 0..200 {
        let base = 20_000 + (uuid::Uuid::new_v4().as_u128() % 20_000) as u16;
        let free = (0..4)
            .flat_map(|i| [base + i, base + 10_000 + i])
            .all(|port| TcpListener::bind(("127.0.0.1", port)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free port range for SeaweedFS");
}

/// The server process, killed when dropped (also when a test fails midway).
struct Weed(Child);

impl Drop for Weed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_weed(dir: &Path, port: u16) -> Weed {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/dev-services");
    let child = Command::new(script)
        .arg("weed-serve")
        .arg(dir)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot run tools/dev-services (needs weed: tools/install.d/10-seaweedfs)");
    Weed(child)
}

/// Waits (bounded) until the server answers and the bucket exists.
async fn wait_ready(store: &S3Store, weed: &mut Weed) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = weed.0.try_wait().unwrap() {
            panic!(
                "weed-serve exited with {status}; is weed installed (tools/install.d/10-seaweedfs)?"
            );
        }
        match store.ensure_bucket().await {
            Ok(()) => return,
            Err(err) if Instant::now() > deadline => panic!("SeaweedFS did not come up: {err}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test]
async fn objects_survive_a_killed_and_restarted_server() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_weed_port();
    let config = S3Config {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        bucket: "restart".to_owned(),
        ..S3Config::default()
    };
    let options = S3Options {
        static_credentials: Some(("msaas-dev".to_owned(), "msaas-dev-secret".to_owned())),
        connect_timeout: Duration::from_secs(1),
        max_attempts: 1,
        ..S3Options::default()
    };
    let store = S3Store::connect_with(&config, options).await.unwrap();
    let mut weed = start_weed(dir.path(), port);
    wait_ready(&store, &mut weed).await;
    let body: Vec<u8> = (0..6 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    store
        .put_bytes("results/j/vocals.wav", Bytes::from(body.clone()))
        .await
        .unwrap();

    drop(weed); // SIGKILL
    let err = store.size("results/j/vocals.wav").await.unwrap_err();
    assert_eq!(err.code(), pipeline::ErrorCode::StorageUnavailable);

    let mut weed = start_weed(dir.path(), port);
    wait_ready(&store, &mut weed).await;
    // The volume server may register a moment after the gateway answers: retry (bounded).
    let deadline = Instant::now() + Duration::from_secs(60);
    let read_back = loop {
        let attempt = async {
            let mut stream = store.get_stream("results/j/vocals.wav", None).await?;
            let mut out = Vec::new();
            while let Some(chunk) = stream.next().await {
                out.extend_from_slice(&chunk?);
            }
            Ok::<_, pipeline::BackendError>(out)
        };
        match attempt.await {
            Ok(bytes) => break bytes,
            Err(err) if Instant::now() > deadline => {
                panic!("object not readable after restart: {err}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert!(read_back == body, "object changed across the restart");
}
