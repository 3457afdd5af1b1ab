//! encode → decode with ffmpeg gives back the PCM: bit-exact for WAV and FLAC at the chosen
//! bit depth, within a codec's error for MP3 (gapless: no offset, same length).

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod common;

use std::fs::File;
use std::path::PathBuf;

use audio::format::{AudioFormat, Mp3Mode, OutputFormat, SampleFormat};
use audio::{ErrorCode, Pcm};
use common::{best_lag, ffmpeg_decode, music, snr_db};
use encode::{EncodeError, Tags, encode};

fn encode_to_file(pcm: &Pcm, format: &OutputFormat, dir: &tempfile::TempDir) -> PathBuf {
    let path = dir
        .path()
        .join(format!("stem.{}", format.format.extension()));
    let file = File::create(&path).expect("create output");
    encode(pcm, format, &Tags::default(), file).expect("encode");
    path
}

fn format(format: AudioFormat, sample_format: SampleFormat) -> OutputFormat {
    OutputFormat {
        format,
        sample_format,
        ..OutputFormat::default()
    }
}

/// The quantisation decoders invert (ffmpeg: int / 2^(bits-1)), written out independently
/// of the crate's own: round to nearest with ties to even (as ffmpeg's `lrintf`), saturate.
fn expected_int(sample: f32, bits: u32) -> i64 {
    let full_scale = f64::from(1_u32 << (bits - 1));
    (f64::from(sample) * full_scale)
        .round_ties_even()
        .clamp(-full_scale, full_scale - 1.0) as i64
}

/// Decoded integers (ffmpeg's float × full scale) must equal the quantised input exactly.
fn assert_bit_exact(pcm: &Pcm, format: &OutputFormat) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = encode_to_file(pcm, format, &dir);
    if format.format == AudioFormat::Flac {
        common::flac_test(&path);
    }
    let decoded = ffmpeg_decode(&path, pcm.num_channels());
    for (c, (original, back)) in pcm.channels.iter().zip(&decoded).enumerate() {
        assert_eq!(back.len(), original.len(), "channel {c}: length");
        for (i, (&o, &b)) in original.iter().zip(back).enumerate() {
            let (expected, got) = match format.sample_format {
                SampleFormat::I16 => (expected_int(o, 16), (b * 32_768.0) as i64),
                SampleFormat::I24 => (expected_int(o, 24), (b * 8_388_608.0) as i64),
                SampleFormat::F32 => {
                    assert_eq!(o.to_bits(), b.to_bits(), "channel {c} sample {i}");
                    continue;
                }
            };
            assert_eq!(got, expected, "channel {c} sample {i} ({o})");
        }
    }
}

#[test]
fn wav_16_bit_is_bit_exact() {
    assert_bit_exact(
        &music(1.5, 2, 0.9, 1),
        &format(AudioFormat::Wav, SampleFormat::I16),
    );
}

#[test]
fn wav_24_bit_is_bit_exact() {
    assert_bit_exact(
        &music(1.5, 2, 0.9, 2),
        &format(AudioFormat::Wav, SampleFormat::I24),
    );
}

#[test]
fn wav_float_is_bit_exact() {
    let mut pcm = music(1.5, 2, 0.9, 3);
    pcm.channels[0][10] = 1.75; // float WAV keeps over-full-scale samples
    assert_bit_exact(&pcm, &format(AudioFormat::Wav, SampleFormat::F32));
}

#[test]
fn flac_16_bit_is_bit_exact() {
    // An odd length, so the last frame is short.
    let mut pcm = music(2.0, 2, 0.95, 4);
    for channel in &mut pcm.channels {
        channel.truncate(88_200 - 1234);
    }
    assert_bit_exact(&pcm, &format(AudioFormat::Flac, SampleFormat::I16));
}

#[test]
fn flac_24_bit_is_bit_exact() {
    assert_bit_exact(
        &music(1.5, 2, 0.95, 5),
        &format(AudioFormat::Flac, SampleFormat::I24),
    );
}

#[test]
fn flac_mono_and_mono_wav_are_bit_exact() {
    let pcm = music(1.0, 1, 0.5, 6);
    assert_bit_exact(&pcm, &format(AudioFormat::Flac, SampleFormat::I16));
    assert_bit_exact(&pcm, &format(AudioFormat::Wav, SampleFormat::I24));
}

#[test]
fn flac_stream_info_is_complete() {
    // Total samples and sample width in STREAMINFO; flac's own tester checks its MD5.
    let pcm = music(1.0, 2, 0.9, 7);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = encode_to_file(&pcm, &format(AudioFormat::Flac, SampleFormat::I16), &dir);
    let probe = common::ffprobe(&path);
    let stream = &probe["streams"][0];
    assert_eq!(stream["duration_ts"].as_u64(), Some(pcm.frames() as u64));
    assert_eq!(stream["bits_per_raw_sample"].as_str(), Some("16"));
    common::flac_test(&path);
}

fn assert_mp3_close(pcm: &Pcm, mode: Mp3Mode, min_snr_db: f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let format = OutputFormat {
        format: AudioFormat::Mp3,
        mp3: mode,
        ..OutputFormat::default()
    };
    let path = encode_to_file(pcm, &format, &dir);
    let decoded = ffmpeg_decode(&path, pcm.num_channels());
    for (c, (original, back)) in pcm.channels.iter().zip(&decoded).enumerate() {
        // The LAME tag tells ffmpeg the encoder delay and padding: gapless, so the stem
        // lines up with the others and has the same length.
        assert_eq!(back.len(), original.len(), "{mode:?} channel {c}: length");
        let lag = best_lag(original, back, 2_000);
        assert_eq!(lag, 0, "{mode:?} channel {c}: decoded stem is shifted");
        let snr = snr_db(original, back);
        eprintln!("{mode:?} channel {c}: SNR {snr:.1} dB");
        assert!(snr > min_snr_db, "{mode:?} channel {c}: SNR {snr:.1} dB");
    }
}

#[test]
fn mp3_320_cbr_is_close_and_gapless() {
    assert_mp3_close(&music(3.0, 2, 0.9, 8), Mp3Mode::Cbr(320), 30.0);
}

#[test]
fn mp3_128_cbr_and_vbr_are_close() {
    let pcm = music(2.0, 2, 0.9, 9);
    assert_mp3_close(&pcm, Mp3Mode::Cbr(128), 20.0);
    assert_mp3_close(&pcm, Mp3Mode::Vbr(2), 25.0);
}

#[test]
fn mp3_mono_is_close() {
    assert_mp3_close(&music(2.0, 1, 0.8, 10), Mp3Mode::Cbr(192), 25.0);
}

#[test]
fn mp3_bit_rate_is_what_was_asked() {
    let pcm = music(3.0, 2, 0.9, 11);
    let dir = tempfile::tempdir().expect("tempdir");
    for kbps in [128_u16, 320] {
        let format = OutputFormat {
            format: AudioFormat::Mp3,
            mp3: Mp3Mode::Cbr(kbps),
            ..OutputFormat::default()
        };
        let path = dir.path().join(format!("{kbps}.mp3"));
        encode(
            &pcm,
            &format,
            &Tags::default(),
            File::create(&path).expect("create"),
        )
        .expect("encode");
        let probe = common::ffprobe(&path);
        let bit_rate: u64 = probe["streams"][0]["bit_rate"]
            .as_str()
            .and_then(|b| b.parse().ok())
            .expect("bit_rate");
        assert_eq!(bit_rate, u64::from(kbps) * 1000, "{probe}");
    }
}

#[test]
fn default_mp3_is_320_cbr_like_demucs() {
    assert_eq!(OutputFormat::default().mp3, Mp3Mode::Cbr(320));
}

fn encode_error(pcm: &Pcm, format: &OutputFormat) -> EncodeError {
    let mut sink = std::io::Cursor::new(Vec::new());
    encode(pcm, format, &Tags::default(), &mut sink).expect_err("must be refused")
}

#[test]
fn impossible_outputs_are_invalid_options() {
    let stereo = music(0.1, 2, 0.5, 12);
    let cases = [
        format(AudioFormat::Flac, SampleFormat::F32),
        format(AudioFormat::Mp3, SampleFormat::F32),
        OutputFormat {
            format: AudioFormat::Mp3,
            mp3: Mp3Mode::Cbr(100),
            ..OutputFormat::default()
        },
        OutputFormat {
            format: AudioFormat::Mp3,
            mp3: Mp3Mode::Cbr(64),
            ..OutputFormat::default()
        },
        OutputFormat {
            format: AudioFormat::Mp3,
            mp3: Mp3Mode::Vbr(10),
            ..OutputFormat::default()
        },
    ];
    for case in cases {
        let err = encode_error(&stereo, &case);
        assert_eq!(err.code(), ErrorCode::InvalidOption, "{case:?}: {err}");
    }
    let surround = music(0.1, 3, 0.5, 13);
    let err = encode_error(&surround, &format(AudioFormat::Mp3, SampleFormat::I16));
    assert_eq!(err.code(), ErrorCode::InvalidOption, "{err}");
    let nine = music(0.1, 9, 0.5, 14);
    let err = encode_error(&nine, &format(AudioFormat::Flac, SampleFormat::I16));
    assert_eq!(err.code(), ErrorCode::InvalidOption, "{err}");
}

#[test]
fn broken_pcm_is_an_error_not_a_panic() {
    let ragged = Pcm {
        sample_rate: 44_100,
        channels: vec![vec![0.0; 10], vec![0.0; 9]],
    };
    let empty = Pcm {
        sample_rate: 44_100,
        channels: vec![],
    };
    let no_rate = Pcm {
        sample_rate: 0,
        channels: vec![vec![0.0; 10]],
    };
    for pcm in [ragged, empty, no_rate] {
        for f in [AudioFormat::Wav, AudioFormat::Flac, AudioFormat::Mp3] {
            let err = encode_error(&pcm, &format(f, SampleFormat::I16));
            assert!(matches!(err, EncodeError::InvalidPcm(_)), "{err}");
        }
    }
}

#[test]
fn silence_and_empty_stems_encode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = Pcm::new(44_100, vec![vec![], vec![]]).expect("valid");
    let silence = Pcm::new(44_100, vec![vec![0.0; 5000], vec![0.0; 5000]]).expect("valid");
    for f in [AudioFormat::Wav, AudioFormat::Flac, AudioFormat::Mp3] {
        for (name, pcm) in [("empty", &empty), ("silence", &silence)] {
            let path = dir.path().join(format!("{name}.{}", f.extension()));
            encode(
                pcm,
                &format(f, SampleFormat::I16),
                &Tags::default(),
                File::create(&path).expect("create"),
            )
            .unwrap_or_else(|err| panic!("{f:?} {name}: {err}"));
        }
    }
    let decoded = ffmpeg_decode(&dir.path().join("silence.flac"), 2);
    assert_eq!(decoded[0].len(), 5000);
    assert!(decoded.iter().flatten().all(|&s| s == 0.0));
}
