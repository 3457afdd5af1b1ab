//! The separate stage adapter on the embedded local-directory store, with the tiny identity
//! MDX model of `separate/tests/fixtures/mdx/` (needs the ONNX Runtime library from `tools/setup`).

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use backends::LocalDirStore;
use pipeline::job::keys;
use pipeline::traits::Progress;
use pipeline::{
    BlobStore, ErrorCode, Job, JobOptions, Pcm, ProgressSink, StageContext, StageHandler,
};
use separate::{RuntimeOptions, SeparateStage};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Reports(Mutex<Vec<Progress>>);

impl ProgressSink for Reports {
    fn report(&self, progress: Progress) {
        self.0.lock().expect("lock").push(progress);
    }
}

fn identity_model() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("separate/tests/fixtures/mdx/identity.toml")
        .display()
        .to_string()
}

fn mix() -> Pcm {
    let channel = |f: f32| (0..9_000).map(|i| 0.3 * (i as f32 * f).sin()).collect();
    Pcm::new(44_100, vec![channel(0.01), channel(0.023)]).expect("pcm")
}

async fn setup(options: JobOptions) -> (tempfile::TempDir, Arc<LocalDirStore>, Job) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(LocalDirStore::new(dir.path().join("store")).expect("store"));
    let job = Job::new("tenant", "song.wav", options);
    let mut wav = std::io::Cursor::new(Vec::new());
    audio::write_wav_f32(&mix(), &mut wav).expect("wav");
    store
        .put_bytes(&keys::mix(&job.id), bytes::Bytes::from(wav.into_inner()))
        .await
        .expect("put mix");
    (dir, store, job)
}

fn context(
    store: Arc<LocalDirStore>,
    reports: Arc<Reports>,
    cancel: CancellationToken,
) -> StageContext {
    StageContext {
        store,
        progress: reports,
        cancel,
    }
}

#[tokio::test]
async fn writes_each_stem_and_reports_progress() {
    let options = JobOptions {
        model: identity_model(),
        ..JobOptions::default()
    };
    let (_dir, store, job) = setup(options).await;
    let reports = Arc::new(Reports::default());
    let stage = SeparateStage::new(PathBuf::from("/nonexistent"), RuntimeOptions::default());
    let output = stage
        .run(
            &job,
            &context(store.clone(), reports.clone(), CancellationToken::new()),
        )
        .await
        .expect("stage runs");
    assert_eq!(output.stems, ["vocals", "instrumental"]);
    let vocals_path = store.path_of(&keys::stem(&job.id, "vocals")).expect("key");
    let vocals =
        audio::read_wav_f32(std::fs::File::open(vocals_path).expect("stem")).expect("f32 wav");
    let expected = mix();
    for (got, want) in vocals.channels.iter().zip(&expected.channels) {
        assert!(got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5));
    }
    assert!(
        store
            .size(&keys::stem(&job.id, "instrumental"))
            .await
            .expect("size")
            .is_some()
    );
    let reports = reports.0.lock().expect("lock");
    // 13 chunks of the MDX fixture, one per graph run on a CPU.
    assert_eq!(
        reports.last(),
        Some(&Progress {
            done: 13,
            total: 13
        })
    );
}

#[tokio::test]
async fn bad_stems_and_cancellation_are_typed_errors() {
    let options = JobOptions {
        model: identity_model(),
        stems: Some(vec!["drums".into()]),
        ..JobOptions::default()
    };
    let (_dir, store, job) = setup(options).await;
    let stage = SeparateStage::new(PathBuf::from("/nonexistent"), RuntimeOptions::default());
    let reports = Arc::new(Reports::default());
    let err = stage
        .run(
            &job,
            &context(store.clone(), reports.clone(), CancellationToken::new()),
        )
        .await
        .expect_err("unknown stem");
    assert_eq!(err.code(), ErrorCode::UnknownStem);

    let mut job = job;
    job.options.stems = None;
    let cancel = CancellationToken::new();
    cancel.cancel();
    let err = stage
        .run(&job, &context(store.clone(), reports, cancel))
        .await
        .expect_err("cancelled");
    assert_eq!(err.code(), ErrorCode::Cancelled);

    job.options.model = "no-such-model".into();
    let err = stage
        .run(
            &job,
            &context(
                store,
                Arc::new(Reports::default()),
                CancellationToken::new(),
            ),
        )
        .await
        .expect_err("unknown model");
    assert_eq!(err.code(), ErrorCode::UnknownModel);
}
