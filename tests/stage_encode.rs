//! The EncodeStage adapter on the embedded local-directory store: stems in at
//! `work/{job}/stems/{stem}.wav`, encoded stems out at `results/{job}/{stem}.{ext}`.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

#[path = "../encode/tests/common/mod.rs"]
mod common;

use std::sync::Arc;

use backends::LocalDirStore;
use common::{ffmpeg_decode, ffprobe, format_tag, music};
use encode::EncodeStage;
use pipeline::job::{AudioFormat, OutputFormat, keys};
use pipeline::stage::NoProgress;
use pipeline::{
    BlobStore, ErrorCode, Job, JobOptions, SourceInfo, Stage, StageContext, StageHandler,
};
use tokio_util::sync::CancellationToken;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<LocalDirStore>,
    ctx: StageContext,
    job: Job,
}

async fn fixture(format: AudioFormat, stems: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(LocalDirStore::new(dir.path().join("store")).expect("store"));
    let options = JobOptions {
        model: "htdemucs".into(),
        output: OutputFormat {
            format,
            ..OutputFormat::default()
        },
        ..JobOptions::default()
    };
    let mut job = Job::new("acme", "Band - Tune.mp3", options);
    job.source = Some(SourceInfo {
        sample_rate: 44_100,
        channels: 2,
        artist: Some("Band".into()),
        album: Some("Record".into()),
        ..SourceInfo::default()
    });
    job.stems = stems.iter().map(|s| s.to_string()).collect();
    for (i, stem) in stems.iter().enumerate() {
        let path = dir.path().join(format!("{stem}.wav"));
        let file = std::fs::File::create(&path).expect("create");
        audio::write_wav_f32(&music(1.0, 2, 0.7, 40 + i as u32), file).expect("write");
        store
            .put_file(&keys::stem(&job.id, stem), &path)
            .await
            .expect("put stem");
    }
    let ctx = StageContext {
        store: store.clone(),
        progress: Arc::new(NoProgress),
        cancel: CancellationToken::new(),
    };
    Fixture {
        _dir: dir,
        store,
        ctx,
        job,
    }
}

#[tokio::test]
async fn stems_are_encoded_and_stored_at_their_result_keys() {
    let stems = ["vocals", "drums", "bass", "other"];
    let fx = fixture(AudioFormat::Flac, &stems).await;
    let stage = EncodeStage::new();
    assert_eq!(stage.stage(), Stage::Encode);
    let output = stage.run(&fx.job, &fx.ctx).await.expect("encode stage");
    assert_eq!(output.results.len(), 4);
    for ((stem, key), expected) in output.results.iter().zip(stems) {
        assert_eq!(stem, expected);
        assert_eq!(key, &keys::result(&fx.job.id, stem, "flac"));
        let path = fx.store.path_of(key).expect("path");
        let probe = ffprobe(&path);
        assert_eq!(
            format_tag(&probe, "title"),
            Some(format!("Band - Tune ({stem})"))
        );
        assert_eq!(format_tag(&probe, "album").as_deref(), Some("Record"));
        assert_eq!(ffmpeg_decode(&path, 2)[0].len(), 44_100);
    }
    // Idempotent: a retried stage overwrites the same keys.
    let again = stage.run(&fx.job, &fx.ctx).await.expect("second run");
    assert_eq!(again.results, output.results);
}

#[tokio::test]
async fn a_missing_stem_fails_with_a_code() {
    let mut fx = fixture(AudioFormat::Mp3, &["vocals"]).await;
    fx.job.stems.push("ghost".into());
    let err = EncodeStage::new()
        .run(&fx.job, &fx.ctx)
        .await
        .expect_err("missing stem");
    assert_eq!(err.code(), ErrorCode::NotFound, "{err}");
}

#[tokio::test]
async fn bad_options_fail_before_any_work() {
    let mut fx = fixture(AudioFormat::Flac, &["vocals"]).await;
    fx.job.options.output.sample_format = pipeline::job::SampleFormat::F32;
    let err = EncodeStage::new()
        .run(&fx.job, &fx.ctx)
        .await
        .expect_err("f32 flac");
    assert_eq!(err.code(), ErrorCode::InvalidOption, "{err}");
}

#[tokio::test]
async fn a_corrupt_intermediate_is_an_error() {
    let fx = fixture(AudioFormat::Wav, &["vocals"]).await;
    fx.store
        .put_bytes(
            &keys::stem(&fx.job.id, "vocals"),
            bytes_of(b"RIFF....WAVEnot really"),
        )
        .await
        .expect("overwrite");
    let err = EncodeStage::new()
        .run(&fx.job, &fx.ctx)
        .await
        .expect_err("corrupt stem");
    assert_eq!(err.code(), ErrorCode::Internal, "{err}");
}

#[tokio::test]
async fn cancellation_is_reported() {
    let fx = fixture(AudioFormat::Wav, &["vocals", "drums"]).await;
    fx.ctx.cancel.cancel();
    let err = EncodeStage::new()
        .run(&fx.job, &fx.ctx)
        .await
        .expect_err("cancelled");
    assert_eq!(err.code(), ErrorCode::Cancelled);
}

fn bytes_of(data: &'static [u8]) -> bytes::Bytes {
    bytes::Bytes::from_static(data)
}
