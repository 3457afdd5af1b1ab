//! The malformed-input corpus: each case yields its typed error with the right stable code
//! (or, for damage that ffmpeg also decodes through, a result that says what was skipped).
//! None may panic.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod common;

use std::io::Cursor;
use std::path::Path;

use audio::ErrorCode;
use common::*;
use decode::{DecodeError, Limits, Target, decode, decode_file};

fn decode_bytes(bytes: Vec<u8>) -> Result<decode::Decoded, DecodeError> {
    decode(Cursor::new(bytes), &Limits::default())
}

fn code_of(result: Result<decode::Decoded, DecodeError>) -> ErrorCode {
    match result {
        Ok(decoded) => panic!("expected an error, decoded {:?}", decoded.info),
        Err(err) => {
            eprintln!("{}: {err}", err.code());
            err.code()
        }
    }
}

fn mp3(dir: &Path, secs: f64) -> Vec<u8> {
    let path = make_tone(
        dir,
        "song.mp3",
        44_100,
        2,
        secs,
        &["-c:a", "libmp3lame", "-b:a", "128k"],
    );
    std::fs::read(path).expect("read mp3")
}

fn wav(dir: &Path, secs: f64) -> Vec<u8> {
    let path = make_tone(dir, "song.wav", 44_100, 2, secs, &["-c:a", "pcm_s16le"]);
    std::fs::read(path).expect("read wav")
}

/// Offset of the `data` chunk's size field in a canonical WAV.
fn wav_chunk(bytes: &[u8], id: &[u8; 4]) -> usize {
    bytes
        .windows(4)
        .position(|w| w == id)
        .unwrap_or_else(|| panic!("no {id:?} chunk"))
}

#[test]
fn zero_bytes_is_empty_input() {
    assert_eq!(code_of(decode_bytes(Vec::new())), ErrorCode::EmptyInput);
}

#[test]
fn random_bytes_are_unsupported() {
    for seed in [1, 2, 3] {
        let bytes = pseudo_random_bytes(64 * 1024, seed);
        assert_eq!(code_of(decode_bytes(bytes)), ErrorCode::UnsupportedFormat);
    }
}

#[test]
fn a_text_file_named_mp3_is_unsupported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("song.mp3");
    std::fs::write(&path, "This is not music.\n".repeat(200)).expect("write");
    let result = decode_file(&path, &Limits::default(), Target::Model);
    assert_eq!(code_of(result), ErrorCode::UnsupportedFormat);
}

#[test]
fn an_mp3_cut_inside_its_first_frame_is_refused() {
    require_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    let bytes = mp3(dir.path(), 2.0);
    let code = code_of(decode_bytes(bytes[..700].to_vec()));
    assert!(
        matches!(
            code,
            ErrorCode::TooShort | ErrorCode::CorruptAudio | ErrorCode::UnsupportedFormat
        ),
        "{code}"
    );
}

#[test]
fn an_mp3_cut_in_half_decodes_what_is_there() {
    require_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    let bytes = mp3(dir.path(), 4.0);
    let half = bytes[..bytes.len() / 2].to_vec();
    let decoded = decode_bytes(half).expect("the first half decodes, as with ffmpeg");
    let secs = decoded.info.duration_secs;
    assert!(
        (1.5..2.5).contains(&secs),
        "decoded {secs} s of a 4 s file cut in half"
    );
    // And with a minimum above what is left, it is too short.
    let limits = Limits {
        min_duration_secs: 3.0,
        ..Limits::default()
    };
    let err = decode(Cursor::new(bytes[..bytes.len() / 2].to_vec()), &limits).unwrap_err();
    assert_eq!(err.code(), ErrorCode::TooShort);
}

#[test]
fn a_wav_whose_header_claims_more_data_decodes_what_is_there() {
    // As ffmpeg does: the sizes a recorder never filled in (or a truncated download kept)
    // overrun the file; decode up to its real end.
    require_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    let good = wav(dir.path(), 1.0);
    for (riff, data) in [(None, 0x7fff_0000_u32), (Some(u32::MAX), u32::MAX)] {
        let mut bytes = good.clone();
        let at = wav_chunk(&bytes, b"data");
        bytes[at + 4..at + 8].copy_from_slice(&data.to_le_bytes());
        if let Some(riff) = riff {
            bytes[4..8].copy_from_slice(&riff.to_le_bytes());
        }
        let decoded = decode_bytes(bytes).expect("decoded up to the real end");
        assert!(
            (decoded.info.duration_secs - 1.0).abs() < 0.01,
            "{:?}",
            decoded.info
        );
        assert_eq!(
            decoded.pcm.channels[0],
            decode_bytes(good.clone()).expect("good").pcm.channels[0]
        );
    }
}

#[test]
fn a_wav_whose_header_claims_less_data_decodes_what_it_declares() {
    require_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut bytes = wav(dir.path(), 2.0);
    let data = wav_chunk(&bytes, b"data");
    // 1 s of 16-bit stereo at 44.1 kHz.
    bytes[data + 4..data + 8].copy_from_slice(&(44_100_u32 * 4).to_le_bytes());
    let decoded = decode_bytes(bytes).expect("decodes");
    assert!(
        (decoded.info.duration_secs - 1.0).abs() < 0.01,
        "{:?}",
        decoded.info
    );
}

#[test]
fn a_wav_with_impossible_format_fields_is_refused() {
    require_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    let good = wav(dir.path(), 1.0);
    let fmt = wav_chunk(&good, b"fmt ");
    // fmt chunk body: format(2) channels(2) rate(4) byte_rate(4) align(2) bits(2)
    let body = fmt + 8;
    let cases: [(&str, usize, Vec<u8>); 4] = [
        ("0 channels", body + 2, 0u16.to_le_bytes().to_vec()),
        ("0 Hz", body + 4, 0u32.to_le_bytes().to_vec()),
        ("3 bits per sample", body + 14, 3u16.to_le_bytes().to_vec()),
        ("format tag 0x1234", body, 0x1234u16.to_le_bytes().to_vec()),
    ];
    for (what, offset, value) in cases {
        let mut bytes = good.clone();
        bytes[offset..offset + value.len()].copy_from_slice(&value);
        let code = code_of(decode_bytes(bytes));
        assert!(
            matches!(code, ErrorCode::UnsupportedFormat | ErrorCode::CorruptAudio),
            "{what}: {code}"
        );
    }
}

#[test]
fn a_wav_claiming_1000_channels_is_refused() {
    require_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut bytes = wav(dir.path(), 1.0);
    let body = wav_chunk(&bytes, b"fmt ") + 8;
    bytes[body + 2..body + 4].copy_from_slice(&1000u16.to_le_bytes());
    let code = code_of(decode_bytes(bytes));
    assert!(
        matches!(
            code,
            ErrorCode::TooManyChannels | ErrorCode::UnsupportedFormat | ErrorCode::CorruptAudio
        ),
        "{code}"
    );
}

#[test]
fn a_file_without_an_audio_track_is_no_audio_track() {
    require_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("video.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "color=c=black:s=32x32:d=1",
        "-c:v",
        "mpeg4",
        path.to_str().expect("utf-8"),
    ]);
    let result = decode_file(&path, &Limits::default(), Target::Model);
    assert_eq!(code_of(result), ErrorCode::NoAudioTrack);
}

/// Overwrites `count` stretches of `len` bytes, evenly spread over the middle of `bytes`.
fn damage(bytes: &mut [u8], count: usize, len: usize, seed: u64) {
    let (start, end) = (bytes.len() / 4, bytes.len() * 3 / 4);
    for i in 0..count {
        let at = start + (end - start) * i / count;
        let garbage = pseudo_random_bytes(len, seed + i as u64);
        bytes[at..at + len].copy_from_slice(&garbage);
    }
}

#[test]
fn corrupt_flac_frames_mid_file_are_skipped_and_counted() {
    require_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = make_tone(dir.path(), "song.flac", 44_100, 2, 10.0, &["-c:a", "flac"]);
    let mut bytes = std::fs::read(&path).expect("read");
    damage(&mut bytes, 5, 64, 7);
    let decoded = decode_bytes(bytes).expect("a few bad frames do not fail the file");
    let info = &decoded.info;
    assert!(info.skipped_packets >= 1, "{info:?}");
    assert!(info.skipped_packets <= 20, "{info:?}");
    assert!(info.duration_secs > 8.0, "{info:?}");
}

#[test]
fn corrupt_mp3_frames_mid_file_do_not_fail_the_file() {
    require_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut bytes = mp3(dir.path(), 10.0);
    damage(&mut bytes, 5, 200, 11);
    let decoded = decode_bytes(bytes).expect("a few bad frames do not fail the file");
    assert!(decoded.info.duration_secs > 8.0, "{:?}", decoded.info);
    eprintln!("mp3 skipped {}", decoded.info.skipped_packets);
}

#[test]
fn a_mostly_corrupt_file_is_corrupt_audio() {
    require_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = make_tone(dir.path(), "song.flac", 44_100, 2, 10.0, &["-c:a", "flac"]);
    let mut bytes = std::fs::read(&path).expect("read");
    // Garbage over nearly every frame, keeping the stream header intact.
    let (start, end) = (8 * 1024, bytes.len());
    let mut at = start;
    let mut seed = 1;
    while at + 256 < end {
        bytes[at..at + 256].copy_from_slice(&pseudo_random_bytes(256, seed));
        at += 1024;
        seed += 1;
    }
    assert_eq!(code_of(decode_bytes(bytes)), ErrorCode::CorruptAudio);
}

#[test]
fn truncated_and_flipped_files_of_every_format_never_panic() {
    require_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    let files = [
        make_tone(dir.path(), "a.mp3", 44_100, 2, 1.0, &["-c:a", "libmp3lame"]),
        make_tone(dir.path(), "a.flac", 44_100, 2, 1.0, &["-c:a", "flac"]),
        make_tone(dir.path(), "a.ogg", 44_100, 2, 1.0, &["-c:a", "libvorbis"]),
        make_tone(dir.path(), "a.m4a", 44_100, 2, 1.0, &["-c:a", "aac"]),
        make_tone(dir.path(), "b.m4a", 44_100, 2, 1.0, &["-c:a", "alac"]),
        make_tone(dir.path(), "a.aiff", 44_100, 2, 1.0, &["-c:a", "pcm_s16be"]),
        make_tone(dir.path(), "a.wav", 44_100, 2, 1.0, &["-c:a", "pcm_f32le"]),
    ];
    for path in files {
        let good = std::fs::read(&path).expect("read");
        for cut in [1, 4, 12, 44, 100, 1000, good.len() / 3, good.len() - 1] {
            let _ = decode_bytes(good[..cut.min(good.len())].to_vec());
        }
        for seed in 0..20 {
            let mut bytes = good.clone();
            let flips = pseudo_random_bytes(16, seed);
            for pair in flips.chunks(2) {
                let at =
                    (usize::from(pair[0]) * 251 + usize::from(pair[1]) * 7 + seed as usize * 13)
                        % bytes.len();
                bytes[at] ^= pair[1] | 1;
            }
            let _ = decode_bytes(bytes);
        }
    }
}

/// Inputs the fuzzer found panicking inside symphonia 0.5.5 (see README "Fuzzing"); `decode`
/// must turn each into a typed error.
#[test]
fn fuzzer_findings_are_typed_errors() {
    // ADTS probe on a 42-byte input: `step_by(0)` assertion in adts.rs (approximate_frame_count).
    let adts_step_zero: Vec<u8> = vec![
        0x00, 0x00, 0x00, 0x1c, 0x66, 0x74, 0x79, 0xf6, 0x36, 0xdb, 0x30, 0xf3, 0x15, 0xdc, 0x60,
        0xf0, 0x01, 0xdd, 0xe1, 0xec, 0xfd, 0xff, 0xf1, 0x46, 0x4f, 0x52, 0x4d, 0x00, 0x00, 0x22,
        0xa2, 0x41, 0x49, 0x46, 0x46, 0x43, 0xdf, 0x4f, 0xaf, 0xea, 0x0c, 0x4d,
    ];
    let code = code_of(decode_bytes(adts_step_zero));
    assert!(
        matches!(code, ErrorCode::CorruptAudio | ErrorCode::UnsupportedFormat),
        "{code}"
    );
}

#[test]
fn a_flac_comment_claiming_gigabytes_is_refused_before_allocating() {
    require_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = make_tone(
        dir.path(),
        "a.flac",
        44_100,
        2,
        1.0,
        &["-c:a", "flac", "-metadata", "title=x"],
    );
    let mut bytes = std::fs::read(&path).expect("read");
    // Walk to the VORBIS_COMMENT block (type 4) and make its vendor length 4 GiB - 1.
    let mut offset = 4;
    loop {
        let kind = bytes[offset] & 0x7f;
        let size = u32::from_be_bytes([0, bytes[offset + 1], bytes[offset + 2], bytes[offset + 3]])
            as usize;
        if kind == 4 {
            bytes[offset + 4..offset + 8].copy_from_slice(&u32::MAX.to_le_bytes());
            break;
        }
        assert!(bytes[offset] & 0x80 == 0, "no comment block");
        offset += 4 + size;
    }
    let err = decode_bytes(bytes).unwrap_err();
    assert_eq!(err.code(), ErrorCode::CorruptAudio);
    assert!(err.to_string().contains("comment"), "{err}");
}

#[test]
fn a_flac_with_cover_art_and_tags_passes_the_metadata_checks() {
    require_ffmpeg();
    let dir = tempfile::tempdir().expect("temp dir");
    let cover = dir.path().join("cover.png");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "color=c=red:s=64x64:d=1",
        "-frames:v",
        "1",
        cover.to_str().expect("utf-8"),
    ]);
    let path = dir.path().join("art.flac");
    let source = tone_source(44_100, 2, 1.0);
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &source,
        "-i",
        cover.to_str().expect("utf-8"),
        "-map",
        "0:a",
        "-map",
        "1:v",
        "-c:a",
        "flac",
        "-c:v",
        "png",
        "-disposition:v",
        "attached_pic",
        "-metadata",
        "artist=Cover Artist",
        path.to_str().expect("utf-8"),
    ]);
    let bytes = std::fs::read(&path).expect("read");
    assert!(
        bytes.windows(9).any(|w| w == b"image/png"),
        "ffmpeg wrote a picture block"
    );
    let decoded = decode_bytes(bytes).expect("decodes");
    assert_eq!(decoded.info.artist.as_deref(), Some("Cover Artist"));
}
