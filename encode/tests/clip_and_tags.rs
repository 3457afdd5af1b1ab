//! A song's stems through `encode_stems`: clip modes as demucs has them (checked on what
//! ffmpeg decodes), tags as ffprobe sees them, and `--output-rate source`.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod common;

use std::path::Path;

use audio::format::{AudioFormat, ClipMode, Mp3Mode, OutputFormat, OutputRate, SampleFormat};
use audio::{ErrorCode, Pcm, SourceInfo};
use common::{ffmpeg_decode, ffprobe, format_tag, music};
use encode::{CLAMP_LIMIT, EncodedStem, RESCALE_HEADROOM, Song, encode_stems};

const STEMS: [&str; 4] = ["drums", "bass", "other", "vocals"];

/// Four loud stems whose mix peaks well above full scale; the first stem peaks at `first_peak`.
fn song_with_peak(first_peak: f32) -> Vec<(String, Pcm)> {
    STEMS
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let peak = if i == 0 { first_peak } else { 0.8 };
            (name.to_string(), music(1.0, 2, peak, 20 + i as u32))
        })
        .collect()
}

fn loud_song() -> Vec<(String, Pcm)> {
    song_with_peak(0.8)
}

fn mix(stems: &[(String, Pcm)]) -> Vec<Vec<f32>> {
    let mut out = stems[0].1.channels.clone();
    for (_, pcm) in &stems[1..] {
        for (acc, channel) in out.iter_mut().zip(&pcm.channels) {
            for (a, s) in acc.iter_mut().zip(channel) {
                *a += s;
            }
        }
    }
    out
}

fn run(stems: Vec<(String, Pcm)>, format: &OutputFormat, dir: &Path) -> Vec<EncodedStem> {
    let song = Song {
        source_name: "song.wav",
        source: None,
    };
    encode_stems(stems, format, song, dir, &|| false).expect("encode_stems")
}

fn decode_all(encoded: &[EncodedStem]) -> Vec<Vec<Vec<f32>>> {
    encoded.iter().map(|e| ffmpeg_decode(&e.path, 2)).collect()
}

fn peak(channels: &[Vec<f32>]) -> f32 {
    channels.iter().flatten().fold(0.0, |m, s| m.max(s.abs()))
}

#[test]
fn float_wav_without_clipping_adds_back_to_the_mix_exactly() {
    let stems = loud_song();
    let mix = mix(&stems);
    assert!(peak(&mix) > 1.5, "the test song must clip");
    let dir = tempfile::tempdir().expect("tempdir");
    let format = OutputFormat {
        format: AudioFormat::Wav,
        sample_format: SampleFormat::F32,
        clip: ClipMode::None,
        ..OutputFormat::default()
    };
    let encoded = run(stems, &format, dir.path());
    let names: Vec<_> = encoded.iter().map(|e| e.stem.as_str()).collect();
    assert_eq!(names, STEMS, "results come back in stem order");
    let decoded = decode_all(&encoded);
    let (first, rest) = decoded.split_first().expect("stems");
    for (c, mix_channel) in mix.iter().enumerate() {
        for (i, &expected) in mix_channel.iter().enumerate() {
            // Summed in the same order as `mix`, so equality is exact.
            let sum = rest.iter().fold(first[c][i], |acc, stem| acc + stem[c][i]);
            assert_eq!(sum.to_bits(), expected.to_bits(), "channel {c} frame {i}");
        }
    }
}

#[test]
fn rescale_scales_all_stems_together_so_they_still_sum_to_the_mix() {
    // The drums stem alone would clip (peak 1.2): every stem is scaled by the same factor.
    let stems = song_with_peak(1.2);
    let mix = mix(&stems);
    let loudest_stem = stems.iter().map(|(_, p)| p.peak()).fold(0.0_f32, f32::max);
    let scale = 1.0 / (RESCALE_HEADROOM * loudest_stem);
    let dir = tempfile::tempdir().expect("tempdir");
    for sample_format in [SampleFormat::F32, SampleFormat::I16] {
        let format = OutputFormat {
            format: AudioFormat::Wav,
            sample_format,
            clip: ClipMode::Rescale,
            ..OutputFormat::default()
        };
        let out_dir = dir.path().join(format!("{sample_format:?}"));
        std::fs::create_dir(&out_dir).expect("mkdir");
        let decoded = decode_all(&run(song_with_peak(1.2), &format, &out_dir));
        // One quantisation step per stem is the most the integer sum can be off by.
        let tolerance = match sample_format {
            SampleFormat::F32 => 1e-6,
            _ => 4.0 * 0.5 / 32_768.0 + 1e-6,
        };
        for stem in &decoded {
            assert!(
                peak(stem) <= 1.0 / RESCALE_HEADROOM + 1e-4,
                "a stem still clips"
            );
        }
        assert!((peak(&decoded[0]) - 1.0 / RESCALE_HEADROOM).abs() < 1e-4);
        assert!((peak(&decoded[1]) - 0.8 * scale).abs() < 1e-4);
        for (c, mix_channel) in mix.iter().enumerate() {
            for (i, &m) in mix_channel.iter().enumerate() {
                let sum: f32 = decoded.iter().map(|stem| stem[c][i]).sum();
                assert!(
                    (sum - m * scale).abs() <= tolerance,
                    "{sample_format:?} channel {c} frame {i}: {sum} vs {}",
                    m * scale
                );
            }
        }
    }
}

#[test]
fn clamp_limits_each_stem_to_demucs_bound() {
    let mut stems = loud_song();
    for (_, pcm) in &mut stems {
        for s in pcm.channels.iter_mut().flatten() {
            *s *= 1.5; // peaks at 1.2
        }
    }
    assert!(stems.iter().all(|(_, pcm)| pcm.peak() > 1.1));
    let originals = stems.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let format = OutputFormat {
        format: AudioFormat::Flac,
        sample_format: SampleFormat::I24,
        clip: ClipMode::Clamp,
        ..OutputFormat::default()
    };
    let decoded = decode_all(&run(stems, &format, dir.path()));
    let step = 1.0 / 8_388_608.0;
    for ((_, original), back) in originals.iter().zip(&decoded) {
        for (o, b) in original
            .channels
            .iter()
            .flatten()
            .zip(back.iter().flatten())
        {
            let expected = o.clamp(-CLAMP_LIMIT, CLAMP_LIMIT);
            assert!(
                (b - expected).abs() <= step,
                "{o} → {b}, expected {expected}"
            );
        }
        assert!(peak(back) <= CLAMP_LIMIT + step);
    }
}

#[test]
fn no_clip_handling_is_refused_for_integer_and_lossy_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (format, sample_format) in [
        (AudioFormat::Wav, SampleFormat::I16),
        (AudioFormat::Flac, SampleFormat::I24),
        (AudioFormat::Mp3, SampleFormat::I16),
    ] {
        let format = OutputFormat {
            format,
            sample_format,
            clip: ClipMode::None,
            ..OutputFormat::default()
        };
        let song = Song {
            source_name: "x.wav",
            source: None,
        };
        let err = encode_stems(loud_song(), &format, song, dir.path(), &|| false).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidOption, "{format:?}: {err}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
}

#[test]
fn tags_name_song_and_stem_and_carry_artist_and_album() {
    let source = SourceInfo {
        sample_rate: 44_100,
        channels: 2,
        artist: Some("Sigur Rós".into()),
        album: Some("Ágætis byrjun".into()),
        ..SourceInfo::default()
    };
    let song = Song {
        source_name: "uploads/Svefn-g-englar – live.mp3",
        source: Some(&source),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    for (format, sample_format) in [
        (AudioFormat::Wav, SampleFormat::I16),
        (AudioFormat::Wav, SampleFormat::F32),
        (AudioFormat::Flac, SampleFormat::I16),
        (AudioFormat::Mp3, SampleFormat::I16),
    ] {
        let out_dir = dir.path().join(format!("{format:?}{sample_format:?}"));
        std::fs::create_dir(&out_dir).expect("mkdir");
        let format = OutputFormat {
            format,
            sample_format,
            ..OutputFormat::default()
        };
        let stems = vec![("vocals".to_owned(), music(0.5, 2, 0.5, 30))];
        let encoded = encode_stems(stems, &format, song, &out_dir, &|| false).expect("encode");
        let probe = ffprobe(&encoded[0].path);
        assert_eq!(
            format_tag(&probe, "title").as_deref(),
            Some("Svefn-g-englar – live (vocals)"),
            "{format:?}: {probe}"
        );
        assert_eq!(
            format_tag(&probe, "artist").as_deref(),
            Some("Sigur Rós"),
            "{format:?}"
        );
        assert_eq!(
            format_tag(&probe, "album").as_deref(),
            Some("Ágætis byrjun"),
            "{format:?}"
        );
        // Tags must not cost a sample: the tagged file still decodes to the full length.
        assert_eq!(ffmpeg_decode(&encoded[0].path, 2)[0].len(), 22_050);
    }
}

#[test]
fn output_rate_source_restores_rate_and_mono() {
    let source = SourceInfo {
        sample_rate: 22_050,
        channels: 1,
        ..SourceInfo::default()
    };
    let song = Song {
        source_name: "mono.ogg",
        source: Some(&source),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    for format in [AudioFormat::Flac, AudioFormat::Mp3] {
        let out_dir = dir.path().join(format.extension());
        std::fs::create_dir(&out_dir).expect("mkdir");
        let format = OutputFormat {
            format,
            rate: OutputRate::Source,
            mp3: Mp3Mode::Cbr(128),
            ..OutputFormat::default()
        };
        let stems = vec![("bass".to_owned(), music(1.0, 2, 0.5, 31))];
        let encoded = encode_stems(stems, &format, song, &out_dir, &|| false).expect("encode");
        let probe = ffprobe(&encoded[0].path);
        let stream = &probe["streams"][0];
        assert_eq!(stream["sample_rate"].as_str(), Some("22050"), "{probe}");
        assert_eq!(stream["channels"].as_u64(), Some(1), "{probe}");
        let decoded = ffmpeg_decode(&encoded[0].path, 1);
        assert!((decoded[0].len() as i64 - 22_050).abs() <= 1);
    }
    // Without the source's rate in the record it is an error, not a guess.
    let format = OutputFormat {
        rate: OutputRate::Source,
        ..OutputFormat::default()
    };
    let song = Song {
        source_name: "x.wav",
        source: None,
    };
    let stems = vec![("bass".to_owned(), music(0.1, 2, 0.5, 32))];
    assert!(encode_stems(stems, &format, song, dir.path(), &|| false).is_err());
}

#[test]
fn cancellation_stops_the_song() {
    let dir = tempfile::tempdir().expect("tempdir");
    let song = Song {
        source_name: "x.wav",
        source: None,
    };
    let err = encode_stems(
        loud_song(),
        &OutputFormat::default(),
        song,
        dir.path(),
        &|| true,
    )
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Cancelled);
}
