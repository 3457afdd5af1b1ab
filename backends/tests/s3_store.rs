//! `S3Store` against a real S3 server on loopback (SeaweedFS from `tools/dev-services start`;
//! `MSAAS_TEST_S3_ENDPOINT` overrides the endpoint). Each test uses a bucket of its own, created
//! with `ensure_bucket` and removed at the end.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

use std::path::Path;
use std::time::Duration;

use backends::{LocalDirStore, S3Options, S3Store};
use bytes::Bytes;
use futures::StreamExt;
use pipeline::ErrorCode;
use pipeline::config::S3Config;
use pipeline::traits::{BackendError, BlobStore, ByteStream, Location, PutOutcome};

const ACCESS_KEY: &str = "msaas-dev";
const SECRET_KEY: &str = "msaas-dev-secret";
const MIB: usize = 1024 * 1024;

fn endpoint() -> String {
    std::env::var("MSAAS_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:8333".to_owned())
}

fn dev_options() -> S3Options {
    S3Options {
        static_credentials: Some((ACCESS_KEY.to_owned(), SECRET_KEY.to_owned())),
        ..S3Options::default()
    }
}

/// A store on a fresh bucket (keys under prefix `t/`).
async fn fresh_store() -> S3Store {
    let config = S3Config {
        endpoint: Some(endpoint()),
        bucket: format!(
            "msaas-test-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        ),
        region: "us-east-1".to_owned(),
        prefix: "/t/".to_owned(),
        path_style: true,
    };
    let store = S3Store::connect_with(&config, dev_options()).await.unwrap();
    if let Err(err) = store.ensure_bucket().await {
        panic!(
            "no S3 server at {} ({err}); start one with `tools/dev-services start` \
             (SeaweedFS from tools/install.d/10-seaweedfs) or set MSAAS_TEST_S3_ENDPOINT",
            endpoint()
        );
    }
    store
}

/// Removes the test bucket and everything in it.
async fn remove_bucket(store: &S3Store) {
    let client = store.client();
    loop {
        let page = client
            .list_objects_v2()
            .bucket(store.bucket())
            .send()
            .await
            .unwrap();
        if page.contents().is_empty() {
            break;
        }
        for object in page.contents() {
            client
                .delete_object()
                .bucket(store.bucket())
                .key(object.key().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    client
        .delete_bucket()
        .bucket(store.bucket())
        .send()
        .await
        .unwrap();
}

/// Every object key in the bucket (prefix included).
async fn object_keys(store: &S3Store) -> Vec<String> {
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let page = store
            .client()
            .list_objects_v2()
            .bucket(store.bucket())
            .set_continuation_token(token)
            .send()
            .await
            .unwrap();
        keys.extend(page.contents().iter().map(|o| o.key().unwrap().to_owned()));
        match page.next_continuation_token() {
            Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
            _ => break,
        }
    }
    keys.sort();
    keys
}

async fn open_multipart_uploads(store: &S3Store) -> usize {
    store
        .client()
        .list_multipart_uploads()
        .bucket(store.bucket())
        .send()
        .await
        .unwrap()
        .uploads()
        .len()
}

async fn read_all(stream: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stream = stream;
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

/// Deterministic pseudo-random bytes (so a misplaced part shows up as a mismatch).
fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| {
            let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            (x >> 56) as u8 ^ (i >> 13) as u8
        })
        .collect()
}

/// A body of `total` bytes in `chunk`-sized pieces, generated as it is read; `pulled` counts
/// what the store has taken from it.
fn generated_body(
    total: usize,
    chunk: usize,
    pulled: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> ByteStream {
    futures::stream::iter((0..total).step_by(chunk))
        .map(move |offset| {
            let len = chunk.min(total - offset);
            pulled.fetch_add(len, std::sync::atomic::Ordering::SeqCst);
            Ok(Bytes::from(pattern(offset, len)))
        })
        .boxed()
}

fn counter() -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0))
}

#[tokio::test]
async fn small_objects_round_trip_under_the_prefix() {
    let store = fresh_store().await;
    let key = "results/job-1/vocals.wav";
    assert_eq!(store.size(key).await.unwrap(), None);
    store
        .put_bytes(key, Bytes::from_static(b"hello stems"))
        .await
        .unwrap();
    assert_eq!(store.size(key).await.unwrap(), Some(11));
    assert_eq!(
        read_all(store.get_stream(key, None).await.unwrap()).await,
        b"hello stems"
    );
    // Stored under the configured prefix, normalised to `t/`.
    assert_eq!(object_keys(&store).await, vec![format!("t/{key}")]);

    // A stream within its limit is stored whole; overwriting replaces the object.
    let outcome = store
        .put_stream(
            key,
            futures::stream::iter([
                Ok(Bytes::from_static(b"new ")),
                Ok(Bytes::from_static(b"body")),
            ])
            .boxed(),
            Some(8),
        )
        .await
        .unwrap();
    assert_eq!(outcome, PutOutcome::Stored { bytes: 8 });
    assert_eq!(
        read_all(store.get_stream(key, None).await.unwrap()).await,
        b"new body"
    );
    // An empty body is an empty object.
    store
        .put_stream("empty", futures::stream::empty().boxed(), None)
        .await
        .unwrap();
    assert_eq!(store.size("empty").await.unwrap(), Some(0));
    remove_bucket(&store).await;
}

#[tokio::test]
async fn large_bodies_stream_as_multipart_uploads() {
    let store = fresh_store().await;
    // Just over two parts, in chunks that do not divide the part size.
    let total = 2 * MIB * 5 + 12_345;
    let pulled = counter();
    let outcome = store
        .put_stream(
            "uploads/big/source",
            generated_body(total, 100_000, pulled.clone()),
            Some(total as u64),
        )
        .await
        .unwrap();
    assert_eq!(
        outcome,
        PutOutcome::Stored {
            bytes: total as u64
        }
    );
    assert_eq!(
        store.size("uploads/big/source").await.unwrap(),
        Some(total as u64)
    );
    let head = store
        .client()
        .head_object()
        .bucket(store.bucket())
        .key("t/uploads/big/source")
        .send()
        .await
        .unwrap();
    // A multipart object's ETag ends in `-{parts}`.
    let etag = head
        .e_tag()
        .unwrap_or_default()
        .trim_matches('"')
        .to_owned();
    assert!(
        etag.ends_with("-3"),
        "ETag {etag:?} is not of a 3-part upload"
    );
    let back = read_all(store.get_stream("uploads/big/source", None).await.unwrap()).await;
    assert_eq!(back.len(), total);
    assert!(
        back == pattern(0, total),
        "multipart object differs from what was sent"
    );

    // Exactly one part is a single PutObject (no empty last part).
    store
        .put_stream("one-part", generated_body(5 * MIB, MIB, counter()), None)
        .await
        .unwrap();
    let one = store
        .client()
        .head_object()
        .bucket(store.bucket())
        .key("t/one-part")
        .send()
        .await
        .unwrap();
    assert!(!one.e_tag().unwrap_or_default().contains('-'));
    assert_eq!(store.size("one-part").await.unwrap(), Some(5 * MIB as u64));

    // put_file and put_bytes take the same path for large bodies.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mix.wav");
    std::fs::write(&file, pattern(7, 6 * MIB)).unwrap();
    assert_eq!(
        store.put_file("work/j/mix.wav", &file).await.unwrap(),
        6 * MIB as u64
    );
    store
        .put_bytes("work/j/bytes", Bytes::from(pattern(3, 5 * MIB + 1)))
        .await
        .unwrap();
    assert!(
        read_all(store.get_stream("work/j/mix.wav", None).await.unwrap()).await
            == pattern(7, 6 * MIB)
    );
    assert!(
        read_all(store.get_stream("work/j/bytes", None).await.unwrap()).await
            == pattern(3, 5 * MIB + 1)
    );
    assert_eq!(open_multipart_uploads(&store).await, 0);
    remove_bucket(&store).await;
}

#[tokio::test]
async fn over_limit_bodies_leave_nothing_and_stop_being_read() {
    let store = fresh_store().await;
    // Past the limit within the first part: nothing was sent at all.
    let pulled = counter();
    let outcome = store
        .put_stream(
            "small",
            generated_body(1000, 100, pulled.clone()),
            Some(250),
        )
        .await
        .unwrap();
    assert_eq!(outcome, PutOutcome::OverLimit { limit: 250 });
    assert_eq!(pulled.load(std::sync::atomic::Ordering::SeqCst), 300);

    // Past the limit after parts were uploaded: the multipart upload is aborted.
    let limit = 11 * MIB as u64;
    let pulled = counter();
    let outcome = store
        .put_stream(
            "big",
            generated_body(40 * MIB, MIB, pulled.clone()),
            Some(limit),
        )
        .await
        .unwrap();
    assert_eq!(outcome, PutOutcome::OverLimit { limit });
    assert_eq!(pulled.load(std::sync::atomic::Ordering::SeqCst), 12 * MIB);
    assert_eq!(store.size("small").await.unwrap(), None);
    assert_eq!(store.size("big").await.unwrap(), None);
    assert_eq!(object_keys(&store).await, Vec::<String>::new());
    assert_eq!(open_multipart_uploads(&store).await, 0);

    // A body that fails midway stores nothing either and reports the body's error.
    let failing = futures::stream::iter((0..8).map(|i| {
        if i < 7 {
            Ok(Bytes::from(vec![1u8; MIB]))
        } else {
            Err(BackendError::Storage("client went away".to_owned()))
        }
    }))
    .boxed();
    let err = store.put_stream("broken", failing, None).await.unwrap_err();
    assert!(err.to_string().contains("client went away"), "{err}");
    assert_eq!(object_keys(&store).await, Vec::<String>::new());
    assert_eq!(open_multipart_uploads(&store).await, 0);
    remove_bucket(&store).await;
}

#[tokio::test]
async fn a_dropped_upload_is_aborted() {
    let store = fresh_store().await;
    // Two parts' worth, then the client stalls forever; the upload future is dropped.
    let stalled = futures::stream::iter((0..11).map(|_| Ok(Bytes::from(vec![2u8; MIB]))))
        .chain(futures::stream::pending())
        .boxed();
    let upload = store.put_stream("stalled", stalled, None);
    assert!(
        tokio::time::timeout(Duration::from_secs(3), upload)
            .await
            .is_err()
    );
    // The abort runs in a spawned task: wait for it (bounded).
    let mut open = usize::MAX;
    for _ in 0..50 {
        open = open_multipart_uploads(&store).await;
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(open, 0, "the dropped multipart upload was not aborted");
    assert_eq!(store.size("stalled").await.unwrap(), None);
    remove_bucket(&store).await;
}

#[tokio::test]
async fn ranged_gets_match_the_local_store_semantics() {
    let store = fresh_store().await;
    let body = pattern(0, 1000);
    store
        .put_bytes("obj", Bytes::from(body.clone()))
        .await
        .unwrap();
    for (start, end) in [(0, 10), (10, 11), (990, 1000), (990, 5000), (0, 1000)] {
        let got = read_all(store.get_stream("obj", Some((start, end))).await.unwrap()).await;
        let end = end.min(1000) as usize;
        assert_eq!(got, body[start as usize..end], "range {start}..{end}");
    }
    for empty in [(500, 500), (1000, 1000), (1000, 2000)] {
        let got = read_all(store.get_stream("obj", Some(empty)).await.unwrap()).await;
        assert!(got.is_empty(), "range {empty:?} gave {} bytes", got.len());
    }
    for bad in [(1001, 1002), (10, 5), (2000, 2000)] {
        match store.get_stream("obj", Some(bad)).await {
            Err(BackendError::InvalidRange { size: 1000, .. }) => {}
            other => panic!("range {bad:?}: {:?}", other.map(|_| "a stream")),
        }
    }
    for range in [None, Some((0, 10)), Some((5, 5))] {
        match store.get_stream("missing", range).await {
            Err(BackendError::NotFound(key)) => assert_eq!(key, "missing"),
            other => panic!("{range:?}: {:?}", other.map(|_| "a stream")),
        }
    }
    remove_bucket(&store).await;
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn get_to_file_writes_the_whole_object_or_nothing() {
    let store = fresh_store().await;
    let body = pattern(1, 6 * MIB + 7);
    store
        .put_bytes("work/j/mix.wav", Bytes::from(body.clone()))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("sub").join("mix.wav");
    assert_eq!(
        store.get_to_file("work/j/mix.wav", &target).await.unwrap(),
        body.len() as u64
    );
    assert!(std::fs::read(&target).unwrap() == body);
    assert_eq!(files_in(&dir.path().join("sub")), vec!["mix.wav"]);

    // A missing object leaves the existing file as it was, and no temporary file.
    std::fs::write(&target, b"old").unwrap();
    assert!(matches!(
        store.get_to_file("work/j/none.wav", &target).await,
        Err(BackendError::NotFound(_))
    ));
    assert_eq!(std::fs::read(&target).unwrap(), b"old");
    assert_eq!(files_in(&dir.path().join("sub")), vec!["mix.wav"]);
    remove_bucket(&store).await;
}

#[tokio::test]
async fn delete_is_idempotent_and_delete_prefix_removes_only_its_keys() {
    let store = fresh_store().await;
    assert_eq!(store.size("absent").await.unwrap(), None);
    store.delete("absent").await.unwrap();
    store
        .put_bytes("one", Bytes::from_static(b"1"))
        .await
        .unwrap();
    store.delete("one").await.unwrap();
    assert_eq!(store.size("one").await.unwrap(), None);
    store.delete("one").await.unwrap();

    for key in ["work/a/1", "work/a/2", "work/ab", "work/b/1", "results/a/1"] {
        store
            .put_bytes(key, Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    store.delete_prefix("work/a/").await.unwrap();
    assert_eq!(
        object_keys(&store).await,
        vec!["t/results/a/1", "t/work/ab", "t/work/b/1"]
    );
    store.delete_prefix("work/a").await.unwrap();
    assert_eq!(
        object_keys(&store).await,
        vec!["t/results/a/1", "t/work/b/1"]
    );
    store.delete_prefix("nothing/here/").await.unwrap();

    // More keys than one list page / one DeleteObjects batch.
    let keys: Vec<String> = (0..1050).map(|i| format!("many/{i:04}")).collect();
    futures::stream::iter(keys.iter())
        .for_each_concurrent(32, |key| {
            let store = &store;
            async move {
                store
                    .put_bytes(key, Bytes::from_static(b"m"))
                    .await
                    .unwrap()
            }
        })
        .await;
    assert_eq!(object_keys(&store).await.len(), 1052);
    store.delete_prefix("many/").await.unwrap();
    assert_eq!(
        object_keys(&store).await,
        vec!["t/results/a/1", "t/work/b/1"]
    );
    remove_bucket(&store).await;
}

/// What the janitor pages through: keys under a prefix, in order, after a cursor, with the
/// time each was written — the same on S3 and on the local store.
async fn lists_in_key_order_after_a_cursor(store: &dyn BlobStore) {
    let before = pipeline::job::now_ms().saturating_sub(5_000);
    let keys = [
        "results/b/1",
        "uploads/a/source",
        "uploads/b/source",
        "work/a/mix.wav",
    ];
    for key in keys.iter().rev() {
        store
            .put_bytes(key, Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    let all = store.list("", None, 100).await.unwrap();
    let listed: Vec<&str> = all.iter().map(|object| object.key.as_str()).collect();
    assert_eq!(listed, keys);
    let after = pipeline::job::now_ms() + 5_000;
    for object in &all {
        assert!(
            (before..after).contains(&object.modified_ms),
            "{object:?} not written just now"
        );
    }
    let uploads = store.list("uploads/", None, 100).await.unwrap();
    assert_eq!(uploads.len(), 2);
    let page: Vec<String> = store
        .list("", Some("uploads/a/source"), 2)
        .await
        .unwrap()
        .into_iter()
        .map(|object| object.key)
        .collect();
    assert_eq!(page, ["uploads/b/source", "work/a/mix.wav"]);
    assert!(
        store
            .list("", Some("work/a/mix.wav"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.list("nothing/", None, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn listing_pages_through_keys_on_s3_and_locally() {
    let store = fresh_store().await;
    lists_in_key_order_after_a_cursor(&store).await;
    remove_bucket(&store).await;
    let dir = tempfile::tempdir().unwrap();
    let local = LocalDirStore::new(dir.path()).unwrap();
    lists_in_key_order_after_a_cursor(&local).await;
}

#[tokio::test]
async fn locate_gives_a_presigned_url_that_fetches_the_object() {
    let store = fresh_store().await;
    let body = pattern(9, 4096);
    store
        .put_bytes("results/j/vocals.mp3", Bytes::from(body.clone()))
        .await
        .unwrap();
    let Location::Url(url) = store
        .locate("results/j/vocals.mp3", Duration::from_secs(300))
        .await
        .unwrap()
    else {
        panic!("S3 locate gave a path");
    };
    assert!(url.starts_with(&endpoint()), "{url}");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let http = reqwest::Client::new();
    let response = http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.unwrap() == body);

    // Without its signature the URL is refused.
    let unsigned = url.split('?').next().unwrap();
    let refused = http.get(unsigned).send().await.unwrap();
    assert_eq!(refused.status(), 403);

    assert!(matches!(
        store
            .locate("results/j/none.mp3", Duration::from_secs(60))
            .await,
        Err(BackendError::NotFound(_))
    ));
    remove_bucket(&store).await;
}

#[tokio::test]
async fn invalid_keys_are_refused_before_any_request() {
    // No server needed: validation comes first. An endpoint nothing listens on proves it.
    let config = S3Config {
        endpoint: Some("http://127.0.0.1:9".to_owned()),
        bucket: "unused".to_owned(),
        ..S3Config::default()
    };
    let store = S3Store::connect_with(&config, dev_options()).await.unwrap();
    for key in [
        "",
        "/abs",
        "../up",
        "a/../b",
        "a//b",
        "a/b/",
        "a\\b",
        "x/.y.msaas-tmp.1",
    ] {
        let results = [
            store.put_bytes(key, Bytes::from_static(b"x")).await.err(),
            store
                .put_stream(key, futures::stream::empty().boxed(), None)
                .await
                .err(),
            store.get_stream(key, None).await.err(),
            store.size(key).await.err(),
            store.delete(key).await.err(),
            store.locate(key, Duration::from_secs(1)).await.err(),
        ];
        for result in results {
            let err = result.unwrap_or_else(|| panic!("{key:?} was accepted"));
            assert!(matches!(err, BackendError::InvalidKey(_)), "{key:?}: {err}");
            assert_eq!(err.code(), ErrorCode::BadRequest);
        }
    }
    for prefix in ["", "/", "../", "a//"] {
        assert!(
            matches!(
                store.delete_prefix(prefix).await,
                Err(BackendError::InvalidKey(_))
            ),
            "{prefix:?}"
        );
    }
    // A bucket must be configured.
    let err = S3Store::connect_with(&S3Config::default(), dev_options())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::StorageUnavailable);
}

#[tokio::test]
async fn an_unreachable_server_is_a_storage_unavailable_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = S3Config {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        bucket: "nowhere".to_owned(),
        ..S3Config::default()
    };
    let options = S3Options {
        connect_timeout: Duration::from_millis(500),
        max_attempts: 2,
        initial_backoff: Duration::from_millis(10),
        ..dev_options()
    };
    let store = S3Store::connect_with(&config, options).await.unwrap();
    // A guard against hanging, not a timing assertion.
    let guard = Duration::from_secs(20);
    let size = tokio::time::timeout(guard, store.size("k")).await.unwrap();
    let put = tokio::time::timeout(guard, store.put_bytes("k", Bytes::from_static(b"x")))
        .await
        .unwrap();
    let ensure = tokio::time::timeout(guard, store.ensure_bucket())
        .await
        .unwrap();
    for err in [size.unwrap_err(), put.unwrap_err(), ensure.unwrap_err()] {
        assert!(matches!(err, BackendError::Storage(_)), "{err}");
        assert_eq!(err.code(), ErrorCode::StorageUnavailable);
        assert_eq!(err.code().as_str(), "storage_unavailable");
    }
}

/// On demand (`cargo test -p pipeline --release --test s3_store -- --ignored --nocapture`):
/// upload and download throughput of a 256 MiB body through the store.
#[tokio::test]
#[ignore = "a measurement, not a check; run on demand"]
async fn measure_throughput() {
    let store = fresh_store().await;
    let total = 256 * MIB;
    let body = Bytes::from(pattern(0, MIB));
    let chunks = futures::stream::iter((0..total / MIB).map(move |_| Ok(body.clone()))).boxed();
    let started = std::time::Instant::now();
    store.put_stream("big", chunks, None).await.unwrap();
    let upload = started.elapsed();
    let started = std::time::Instant::now();
    let mut stream = store.get_stream("big", None).await.unwrap();
    let mut received = 0;
    while let Some(chunk) = stream.next().await {
        received += chunk.unwrap().len();
    }
    let download = started.elapsed();
    assert_eq!(received, total);
    let mib_per_s = |d: Duration| total as f64 / MIB as f64 / d.as_secs_f64();
    eprintln!(
        "S3Store, 256 MiB: upload {:.0} MiB/s ({upload:?}), download {:.0} MiB/s ({download:?})",
        mib_per_s(upload),
        mib_per_s(download)
    );
    remove_bucket(&store).await;
}
