//! Decoded output checked against ffmpeg's decode of the same generated files, sample by
//! sample, at the source's own rate and channels (so only the decoders are compared), with a
//! tolerance suited to each codec: bit-exact for PCM and lossless codecs, small for lossy ones
//! (float decoders differ in rounding and in their inverse transforms).

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod common;

use common::*;
use decode::{Limits, Target, decode_file};

struct Case {
    file: &'static str,
    rate: u32,
    channels: usize,
    codec_args: &'static [&'static str],
    codec: &'static str,
    /// Largest allowed |symphonia - ffmpeg| per sample.
    max_diff: f32,
}

const EXACT: f32 = 1e-7;

const CASES: &[Case] = &[
    Case {
        file: "s16.wav",
        rate: 44_100,
        channels: 2,
        codec_args: &["-c:a", "pcm_s16le"],
        codec: "pcm_s16le",
        max_diff: EXACT,
    },
    Case {
        file: "s24.wav",
        rate: 44_100,
        channels: 2,
        codec_args: &["-c:a", "pcm_s24le"],
        codec: "pcm_s24le",
        max_diff: EXACT,
    },
    Case {
        file: "f32.wav",
        rate: 48_000,
        channels: 2,
        codec_args: &["-c:a", "pcm_f32le"],
        codec: "pcm_f32le",
        max_diff: EXACT,
    },
    Case {
        file: "mono.wav",
        rate: 22_050,
        channels: 1,
        codec_args: &["-c:a", "pcm_s16le"],
        codec: "pcm_s16le",
        max_diff: EXACT,
    },
    Case {
        file: "surround.wav",
        rate: 44_100,
        channels: 6,
        codec_args: &["-c:a", "pcm_s16le"],
        codec: "pcm_s16le",
        max_diff: EXACT,
    },
    Case {
        file: "s16.aiff",
        rate: 44_100,
        channels: 2,
        codec_args: &["-c:a", "pcm_s16be"],
        codec: "pcm_s16be",
        max_diff: EXACT,
    },
    Case {
        file: "s16.flac",
        rate: 44_100,
        channels: 2,
        codec_args: &["-c:a", "flac"],
        codec: "flac",
        max_diff: EXACT,
    },
    Case {
        file: "s24_48k.flac",
        rate: 48_000,
        channels: 2,
        codec_args: &["-c:a", "flac", "-sample_fmt", "s32"],
        codec: "flac",
        max_diff: EXACT,
    },
    Case {
        file: "surround.flac",
        rate: 48_000,
        channels: 6,
        codec_args: &["-c:a", "flac"],
        codec: "flac",
        max_diff: EXACT,
    },
    Case {
        file: "alac.m4a",
        rate: 44_100,
        channels: 2,
        codec_args: &["-c:a", "alac"],
        codec: "alac",
        max_diff: EXACT,
    },
    Case {
        file: "cbr.mp3",
        rate: 44_100,
        channels: 2,
        codec_args: &["-c:a", "libmp3lame", "-b:a", "192k"],
        codec: "mp3",
        max_diff: 1e-5,
    },
    Case {
        file: "mono_48k.mp3",
        rate: 48_000,
        channels: 1,
        codec_args: &["-c:a", "libmp3lame", "-q:a", "2"],
        codec: "mp3",
        max_diff: 1e-5,
    },
    Case {
        file: "vorbis.ogg",
        rate: 44_100,
        channels: 2,
        codec_args: &["-c:a", "libvorbis", "-q:a", "5"],
        codec: "vorbis",
        max_diff: 1e-5,
    },
    Case {
        file: "aac.m4a",
        rate: 44_100,
        channels: 2,
        codec_args: &["-c:a", "aac", "-b:a", "192k"],
        codec: "aac",
        max_diff: 1e-5,
    },
    Case {
        file: "aac_48k.m4a",
        rate: 48_000,
        channels: 2,
        codec_args: &["-c:a", "aac", "-b:a", "128k"],
        codec: "aac",
        max_diff: 1e-5,
    },
];

#[test]
fn every_format_matches_ffmpeg_at_the_source_rate() {
    require_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut failures = Vec::new();
    for case in CASES {
        let path = make_tone(
            dir.path(),
            case.file,
            case.rate,
            case.channels,
            1.5,
            case.codec_args,
        );
        let decoded = match decode_file(&path, &Limits::default(), Target::Native) {
            Ok(decoded) => decoded,
            Err(err) => {
                failures.push(format!("{}: {err}", case.file));
                continue;
            }
        };
        let reference = ffmpeg_decode_native(&path, case.channels);
        let info = &decoded.info;
        let ours = &decoded.pcm;
        let worst = ours
            .channels
            .iter()
            .zip(&reference)
            .map(|(a, b)| max_diff(a, b))
            .fold(0.0, f32::max);
        let rms = ours
            .channels
            .iter()
            .zip(&reference)
            .map(|(a, b)| rms_diff(a, b))
            .fold(0.0, f32::max);
        eprintln!(
            "{:<14} codec {:<10} {} Hz {} ch: {} frames (ffmpeg {}), max diff {worst:.2e}, rms {rms:.2e}, skipped {}",
            case.file,
            info.codec,
            info.sample_rate,
            info.channels,
            ours.frames(),
            reference[0].len(),
            info.skipped_packets
        );
        if info.codec != case.codec
            || info.sample_rate != case.rate
            || usize::from(info.channels) != case.channels
            || ours.num_channels() != case.channels
            || ours.frames() != reference[0].len()
            || worst > case.max_diff
            || info.skipped_packets != 0
        {
            failures.push(format!(
                "{}: codec {} rate {} channels {} frames {} vs ffmpeg {}, max diff {worst:e} (allowed {:e})",
                case.file,
                info.codec,
                info.sample_rate,
                info.channels,
                ours.frames(),
                reference[0].len(),
                case.max_diff
            ));
        }
    }
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
}
