//! What the models get: 44.1 kHz stereo, whatever came in.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod common;

use common::*;
use decode::{Limits, Target, decode_file};

#[test]
fn stereo_at_44k1_passes_through_unchanged() {
    require_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = make_tone(dir.path(), "a.flac", 44_100, 2, 1.0, &["-c:a", "flac"]);
    let model = decode_file(&path, &Limits::default(), Target::Model).expect("decode");
    let native = decode_file(&path, &Limits::default(), Target::Native).expect("decode");
    assert_eq!(model.pcm, native.pcm);
    assert_eq!(model.info, native.info);
}

#[test]
fn mono_is_duplicated_to_both_sides() {
    require_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = make_tone(
        dir.path(),
        "mono.wav",
        44_100,
        1,
        1.0,
        &["-c:a", "pcm_s16le"],
    );
    let decoded = decode_file(&path, &Limits::default(), Target::Model).expect("decode");
    let reference = ffmpeg_decode_native(&path, 1);
    assert_eq!(decoded.pcm.num_channels(), 2);
    assert_eq!(decoded.pcm.channels[0], reference[0]);
    assert_eq!(decoded.pcm.channels[1], reference[0]);
    assert_eq!(decoded.info.channels, 1);
}

#[test]
fn five_one_downmix_matches_ffmpeg() {
    // ffmpeg's default -ac 2 uses the same ITU matrix (LFE dropped).
    require_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, args) in [
        ("surround.flac", &["-c:a", "flac"][..]),
        ("surround.wav", &["-c:a", "pcm_s16le"][..]),
    ] {
        let path = make_tone(dir.path(), name, 44_100, 6, 1.0, args);
        let decoded = decode_file(&path, &Limits::default(), Target::Model).expect("decode");
        let reference = ffmpeg_decode_model(&path);
        assert_eq!(decoded.info.channels, 6);
        assert_eq!(decoded.pcm.num_channels(), 2);
        assert_eq!(decoded.pcm.frames(), reference[0].len());
        // ffmpeg leaves float output unnormalised (L = FL + 0.707 FC + 0.707 BL); ours is
        // divided by the row sum so that it cannot clip.
        let row_sum = 1.0 + 2.0 * std::f32::consts::FRAC_1_SQRT_2;
        for (ours, theirs) in decoded.pcm.channels.iter().zip(&reference) {
            let scaled: Vec<f32> = ours.iter().map(|s| s * row_sum).collect();
            let diff = max_diff(&scaled, theirs);
            assert!(diff < 1e-5, "{name}: downmix differs from ffmpeg by {diff}");
        }
    }
}

/// (amplitude, lag in frames) of the `freq` component of `signal`, by least squares.
fn fit_sine(signal: &[f32], rate: f64, freq: f64) -> (f64, f64) {
    let omega = 2.0 * std::f64::consts::PI * freq / rate;
    let (mut ss, mut sc, mut cc, mut ys, mut yc) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (i, &y) in signal
        .iter()
        .enumerate()
        .take(signal.len() * 9 / 10)
        .skip(signal.len() / 10)
    {
        let (s, c) = (omega * i as f64).sin_cos();
        let y = f64::from(y);
        ss += s * s;
        sc += s * c;
        cc += c * c;
        ys += y * s;
        yc += y * c;
    }
    let det = ss * cc - sc * sc;
    let (a, b) = ((ys * cc - yc * sc) / det, (yc * ss - ys * sc) / det);
    ((a * a + b * b).sqrt(), -b.atan2(a) / omega)
}

#[test]
fn other_rates_are_resampled_keeping_pitch_level_and_timing() {
    require_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    for rate in [48_000_u32, 32_000, 96_000, 22_050] {
        let name = format!("sine_{rate}.wav");
        let path = dir.path().join(&name);
        let source = format!("sine=frequency=1000:sample_rate={rate}:duration=2");
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            &source,
            "-c:a",
            "pcm_f32le",
            path.to_str().expect("utf-8"),
        ]);
        let decoded = decode_file(&path, &Limits::default(), Target::Model).expect("decode");
        assert_eq!(decoded.pcm.sample_rate, 44_100);
        assert_eq!(decoded.info.sample_rate, rate);
        assert_eq!(decoded.pcm.frames(), 88_200, "{rate}: 2 s at 44.1 kHz");
        // ffmpeg's sine source has amplitude 1/8.
        let (amplitude, lag) = fit_sine(&decoded.pcm.channels[0], 44_100.0, 1000.0);
        assert!(
            (amplitude - 0.125).abs() < 1e-4,
            "{rate}: amplitude {amplitude}"
        );
        assert!(lag.abs() < 0.05, "{rate}: lag {lag} frames");
        // The residual after removing the fitted sine is tiny: no distortion, no aliasing.
        let residual = rms_residual(&decoded.pcm.channels[0], 44_100.0, 1000.0, amplitude, lag);
        assert!(residual < 1e-4, "{rate}: residual rms {residual}");
        // (Not compared with ffmpeg sample by sample: its default resampler lags the ideal
        // signal by about two frames at 48 kHz; the fit against the ideal sine is stricter.)
    }
}

fn rms_residual(signal: &[f32], rate: f64, freq: f64, amplitude: f64, lag: f64) -> f64 {
    let omega = 2.0 * std::f64::consts::PI * freq / rate;
    let body = &signal[signal.len() / 10..signal.len() * 9 / 10];
    let offset = signal.len() / 10;
    let sum: f64 = body
        .iter()
        .enumerate()
        .map(|(i, &y)| {
            let ideal = amplitude * (omega * ((i + offset) as f64 - lag)).sin();
            (f64::from(y) - ideal).powi(2)
        })
        .sum();
    (sum / body.len() as f64).sqrt()
}

#[test]
fn tags_are_read() {
    require_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    for name in ["tagged.mp3", "tagged.flac", "tagged.ogg", "tagged.m4a"] {
        let codec: &[&str] = match name.rsplit('.').next() {
            Some("mp3") => &["-c:a", "libmp3lame"],
            Some("flac") => &["-c:a", "flac"],
            Some("ogg") => &["-c:a", "libvorbis"],
            _ => &["-c:a", "aac"],
        };
        let mut args = codec.to_vec();
        args.extend_from_slice(&[
            "-metadata",
            "title=Song Title",
            "-metadata",
            "artist=Some Artist",
            "-metadata",
            "album=An Album",
        ]);
        let path = make_tone(dir.path(), name, 44_100, 2, 1.0, &args);
        let info = decode_file(&path, &Limits::default(), Target::Model)
            .expect("decode")
            .info;
        assert_eq!(info.title.as_deref(), Some("Song Title"), "{name}");
        assert_eq!(info.artist.as_deref(), Some("Some Artist"), "{name}");
        assert_eq!(info.album.as_deref(), Some("An Album"), "{name}");
    }
}
