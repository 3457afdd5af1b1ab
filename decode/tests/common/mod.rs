//! Fixture generation for the decode tests: every file is made here, with ffmpeg, into a
//! temporary directory (no binaries in the repository).

#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::{Path, PathBuf};
use std::process::Command;

/// Fails the test loudly when ffmpeg is missing: these tests must not pass by skipping.
pub fn require_ffmpeg() {
    let found = Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "ffmpeg is required by the decode tests (it makes the fixtures and is the reference \
         decoder): install it, e.g. `apt-get install ffmpeg`"
    );
}

/// Runs ffmpeg with `args` (after `-y -hide_banner -loglevel error`), panicking with its
/// stderr on failure.
pub fn ffmpeg(args: &[&str]) -> Vec<u8> {
    let output = Command::new("ffmpeg")
        .args(["-y", "-hide_banner", "-loglevel", "error"])
        .args(args)
        .output()
        .expect("ffmpeg runs");
    assert!(
        output.status.success(),
        "ffmpeg {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A two-tone test signal per channel (distinct per channel, so swapped or mixed channels
/// show), as an ffmpeg `aevalsrc` source.
pub fn tone_source(rate: u32, channels: usize, secs: f64) -> String {
    let freqs = [440.0, 660.0, 550.0, 110.0, 880.0, 990.0, 330.0, 770.0];
    let exprs: Vec<String> = (0..channels)
        .map(|c| {
            format!(
                "0.4*sin(2*PI*{}*t)+0.15*sin(2*PI*{}*t)",
                freqs[c % freqs.len()],
                freqs[c % freqs.len()] * 5.5
            )
        })
        .collect();
    let layout = match channels {
        1 => "mono",
        2 => "stereo",
        6 => "5.1",
        8 => "7.1",
        _ => panic!("no layout for {channels} channels"),
    };
    format!("aevalsrc={}:s={rate}:d={secs}:c={layout}", exprs.join("|"))
}

/// Makes `name` in `dir` from the tone signal, encoded with `codec_args`.
pub fn make_tone(
    dir: &Path,
    name: &str,
    rate: u32,
    channels: usize,
    secs: f64,
    codec_args: &[&str],
) -> PathBuf {
    let path = dir.join(name);
    let source = tone_source(rate, channels, secs);
    let mut args = vec!["-f", "lavfi", "-i", source.as_str()];
    args.extend_from_slice(codec_args);
    let path_str = path.to_str().expect("utf-8 temp path");
    args.push(path_str);
    ffmpeg(&args);
    path
}

/// ffmpeg's own decode of `path` as planar f32 at the file's native rate and channels.
pub fn ffmpeg_decode_native(path: &Path, channels: usize) -> Vec<Vec<f32>> {
    let raw = ffmpeg(&["-i", path.to_str().expect("utf-8"), "-f", "f32le", "-"]);
    deinterleave(&raw, channels)
}

/// ffmpeg's decode of `path` resampled / downmixed to 44.1 kHz stereo.
pub fn ffmpeg_decode_model(path: &Path) -> Vec<Vec<f32>> {
    let raw = ffmpeg(&[
        "-i",
        path.to_str().expect("utf-8"),
        "-f",
        "f32le",
        "-ac",
        "2",
        "-ar",
        "44100",
        "-",
    ]);
    deinterleave(&raw, 2)
}

pub fn deinterleave(raw: &[u8], channels: usize) -> Vec<Vec<f32>> {
    let samples: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (0..channels)
        .map(|c| samples.iter().skip(c).step_by(channels).copied().collect())
        .collect()
}

/// Largest absolute difference over the common length.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Root-mean-square difference over the common length.
pub fn rms_diff(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len()).max(1);
    let sum: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    (sum / n as f64).sqrt() as f32
}

/// Deterministic pseudo-random bytes (no RNG dependency; a test must be reproducible).
pub fn pseudo_random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as u8
        })
        .collect()
}
