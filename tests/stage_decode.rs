//! The stage adapter against the real embedded blob store.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

#[path = "../decode/tests/common/mod.rs"]
mod common;

use std::sync::Arc;

use backends::LocalDirStore;
use bytes::Bytes;
use common::*;
use decode::{DecodeStage, Limits, Target, decode_file};
use pipeline::job::keys;
use pipeline::stage::NoProgress;
use pipeline::{BlobStore, ErrorCode, Job, JobOptions, Stage, StageContext, StageHandler};
use tokio_util::sync::CancellationToken;

fn context(store: Arc<LocalDirStore>) -> StageContext {
    StageContext {
        store,
        progress: Arc::new(NoProgress),
        cancel: CancellationToken::new(),
    }
}

#[tokio::test]
async fn writes_mix_wav_and_reports_the_source() {
    require_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(LocalDirStore::new(dir.path().join("store")).expect("store"));
    let source = make_tone(
        dir.path(),
        "song.ogg",
        48_000,
        1,
        1.0,
        &["-c:a", "libvorbis", "-metadata", "artist=Someone"],
    );
    let job = Job::new("tenant", "My Song.ogg", JobOptions::default());
    store
        .put_bytes(
            &keys::source(&job.id),
            Bytes::from(std::fs::read(&source).expect("read")),
        )
        .await
        .expect("put source");

    let stage = DecodeStage::new(Limits::default());
    assert_eq!(stage.stage(), Stage::Decode);
    let output = stage
        .run(&job, &context(store.clone()))
        .await
        .expect("decode stage");

    let info = output.source.expect("source info");
    assert_eq!(
        (info.sample_rate, info.channels, info.codec.as_str()),
        (48_000, 1, "vorbis")
    );
    assert_eq!(info.artist.as_deref(), Some("Someone"));
    let mix_path = dir.path().join("mix.wav");
    store
        .get_to_file(&keys::mix(&job.id), &mix_path)
        .await
        .expect("mix stored");
    let mix = audio::read_wav_f32(std::fs::File::open(&mix_path).expect("open")).expect("f32 wav");
    let direct = decode_file(&source, &Limits::default(), Target::Model).expect("decode");
    assert_eq!(mix, direct.pcm, "the stored mix is exactly the decoded PCM");
    assert_eq!((mix.sample_rate, mix.num_channels()), (44_100, 2));
}

#[tokio::test]
async fn bad_input_fails_permanently_with_its_code() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(LocalDirStore::new(dir.path().join("store")).expect("store"));
    let job = Job::new("tenant", "notes.mp3", JobOptions::default());
    store
        .put_bytes(
            &keys::source(&job.id),
            Bytes::from_static(b"these are not the notes you want"),
        )
        .await
        .expect("put");
    let err = DecodeStage::default()
        .run(&job, &context(store.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnsupportedFormat);
    assert!(!err.is_transient());
    assert_eq!(
        store.size(&keys::mix(&job.id)).await.expect("size"),
        None,
        "no mix written"
    );

    let small = DecodeStage::new(Limits {
        max_input_bytes: 8,
        ..Limits::default()
    });
    let err = small.run(&job, &context(store)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::TooLarge);
}

#[tokio::test]
async fn a_missing_source_is_not_an_input_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(LocalDirStore::new(dir.path().join("store")).expect("store"));
    let job = Job::new("tenant", "gone.mp3", JobOptions::default());
    let err = DecodeStage::default()
        .run(&job, &context(store))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
}
