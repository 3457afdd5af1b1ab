//! Over-limit inputs are refused before they are fully decoded, with limit and measured value
//! in the message.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod common;

use std::io::Cursor;

use audio::ErrorCode;
use common::*;
use decode::{DecodeError, Limits, Target, decode, decode_file};

#[test]
fn too_large_is_refused_before_reading() {
    let limits = Limits {
        max_input_bytes: 1000,
        ..Limits::default()
    };
    // Not even audio: the size alone refuses it.
    let err = decode(Cursor::new(vec![0u8; 1001]), &limits).unwrap_err();
    assert_eq!(err.code(), ErrorCode::TooLarge);
    let message = err.to_string();
    assert!(
        message.contains("1001") && message.contains("1000"),
        "{message}"
    );
}

#[test]
fn too_long_from_the_header_is_refused_before_decoding() {
    require_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = make_tone(dir.path(), "a.flac", 44_100, 2, 3.0, &["-c:a", "flac"]);
    let limits = Limits {
        max_duration_secs: 2.0,
        ..Limits::default()
    };
    let err = decode_file(&path, &limits, Target::Model).unwrap_err();
    assert!(
        matches!(err, DecodeError::TooLong { partial: false, .. }),
        "the header tells the length: {err:?}"
    );
    assert_eq!(err.code(), ErrorCode::TooLong);
    let message = err.to_string();
    assert!(
        message.contains("3.0 s") && message.contains("2.0 s"),
        "{message}"
    );
}

#[test]
fn too_long_without_a_header_duration_stops_while_decoding() {
    require_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    // FLAC written to a pipe cannot go back to fill in its length: STREAMINFO says "unknown",
    // so only decoding can tell.
    let source = tone_source(44_100, 2, 5.0);
    let bytes = ffmpeg(&[
        "-f", "lavfi", "-i", &source, "-c:a", "flac", "-f", "flac", "pipe:1",
    ]);
    let path = dir.path().join("streamed.flac");
    std::fs::write(&path, bytes).expect("write");
    let limits = Limits {
        max_duration_secs: 2.0,
        ..Limits::default()
    };
    let err = decode_file(&path, &limits, Target::Model).unwrap_err();
    match err {
        DecodeError::TooLong {
            limit,
            measured,
            partial,
        } => {
            assert!(partial);
            assert_eq!(limit, 2.0);
            // Stopped right after the limit, not at the end of the file.
            assert!(measured > 2.0 && measured < 2.1, "{measured}");
        }
        other => panic!("expected too_long, got {other:?}"),
    }
}

#[test]
fn too_short_reports_both_durations() {
    require_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = make_tone(dir.path(), "a.wav", 44_100, 2, 0.2, &["-c:a", "pcm_s16le"]);
    let err = decode_file(&path, &Limits::default(), Target::Model).unwrap_err();
    assert_eq!(err.code(), ErrorCode::TooShort);
    let message = err.to_string();
    assert!(
        message.contains("0.200 s") && message.contains("0.500 s"),
        "{message}"
    );
    let lenient = Limits {
        min_duration_secs: 0.1,
        ..Limits::default()
    };
    assert!(decode_file(&path, &lenient, Target::Model).is_ok());
}

#[test]
fn too_many_channels_is_refused_from_the_header() {
    require_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = make_tone(dir.path(), "a.flac", 44_100, 6, 1.0, &["-c:a", "flac"]);
    let limits = Limits {
        max_channels: 2,
        ..Limits::default()
    };
    let err = decode_file(&path, &limits, Target::Model).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::TooManyChannels {
                limit: 2,
                measured: 6
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), ErrorCode::TooManyChannels);
}

#[test]
fn the_skipped_fraction_limit_is_applied() {
    require_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = make_tone(dir.path(), "a.flac", 44_100, 2, 10.0, &["-c:a", "flac"]);
    let mut bytes = std::fs::read(&path).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle..middle + 64].copy_from_slice(&pseudo_random_bytes(64, 3));
    let decoded =
        decode(Cursor::new(bytes.clone()), &Limits::default()).expect("one bad spot is fine");
    assert!(decoded.info.skipped_packets >= 1);
    let strict = Limits {
        max_skipped_fraction: 0.0,
        ..Limits::default()
    };
    let err = decode(Cursor::new(bytes), &strict).unwrap_err();
    assert_eq!(err.code(), ErrorCode::CorruptAudio);
}
