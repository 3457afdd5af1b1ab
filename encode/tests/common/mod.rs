//! Shared by the encode tests: a musical test signal and ffmpeg as the independent decoder.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use audio::Pcm;

pub const RATE: u32 = 44_100;

/// Fails the test with a clear message when a tool is missing (CI installs them).
pub fn require_tool(tool: &str) {
    let version_flag = if tool == "flac" {
        "--version"
    } else {
        "-version"
    };
    let found = Command::new(tool)
        .arg(version_flag)
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        found,
        "`{tool}` is required by the encode tests but was not found on PATH: install it \
         (`apt-get install ffmpeg flac`, or `tools/install-test-deps`)"
    );
}

/// A few seconds of something music-like: a chord of harmonic tones with note envelopes,
/// a bass line and a little noise, different on each channel; peak `peak`.
pub fn music(seconds: f32, channels: usize, peak: f32, seed: u32) -> Pcm {
    let frames = (seconds * RATE as f32) as usize;
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state as f32 / u32::MAX as f32) * 2.0 - 1.0
    };
    let mut out = vec![Vec::with_capacity(frames); channels];
    let notes = [220.0_f32, 277.18, 329.63, 440.0];
    for i in 0..frames {
        let t = i as f32 / RATE as f32;
        let beat = (t * 2.0).fract();
        let envelope = (-beat * 3.0).exp();
        for (c, channel) in out.iter_mut().enumerate() {
            let detune = 1.0 + c as f32 * 0.003 + seed as f32 * 0.001;
            let mut v = 0.0;
            for (n, f) in notes.iter().enumerate() {
                for h in 1..=4 {
                    let phase = 2.0 * std::f32::consts::PI * f * detune * h as f32 * t;
                    v += (phase + n as f32).sin() / (h * h) as f32;
                }
            }
            let bass = (2.0 * std::f32::consts::PI * 55.0 * t).sin() * 1.5;
            channel.push((v * envelope + bass) * 0.2 + noise() * 0.01);
        }
    }
    let current = out.iter().flatten().fold(0.0_f32, |m, s| m.max(s.abs()));
    for s in out.iter_mut().flatten() {
        *s *= peak / current;
    }
    Pcm::new(RATE, out).expect("valid pcm")
}

/// Decodes `path` with ffmpeg to planar f32 (`ffmpeg -i X -f f32le -`).
pub fn ffmpeg_decode(path: &Path, channels: usize) -> Vec<Vec<f32>> {
    require_tool("ffmpeg");
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "f32le", "-"])
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg could not decode {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<f32> = out
        .stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(
        samples.len() % channels,
        0,
        "ffmpeg output not whole frames"
    );
    let mut planar = vec![Vec::with_capacity(samples.len() / channels); channels];
    for (i, s) in samples.into_iter().enumerate() {
        planar[i % channels].push(s);
    }
    planar
}

/// `ffprobe -show_format -show_streams` as JSON.
pub fn ffprobe(path: &Path) -> serde_json::Value {
    require_tool("ffprobe");
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_format",
            "-show_streams",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(
        out.status.success(),
        "ffprobe failed on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ffprobe JSON")
}

/// A tag of the container as ffprobe reports it (keys compared case-insensitively).
pub fn format_tag(probe: &serde_json::Value, key: &str) -> Option<String> {
    let tags = probe["format"]["tags"].as_object()?;
    tags.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .and_then(|(_, v)| v.as_str().map(str::to_owned))
}

/// Signal-to-noise ratio of `decoded` against `reference` in dB, over the common length.
pub fn snr_db(reference: &[f32], decoded: &[f32]) -> f64 {
    let n = reference.len().min(decoded.len());
    let (mut signal, mut noise) = (0.0_f64, 0.0_f64);
    for i in 0..n {
        let r = f64::from(reference[i]);
        let e = f64::from(decoded[i]) - r;
        signal += r * r;
        noise += e * e;
    }
    10.0 * (signal / noise.max(1e-30)).log10()
}

/// The lag (decoded shifted by `lag` samples) in `-max..=max` that best matches, by
/// correlation over a window in the middle.
pub fn best_lag(reference: &[f32], decoded: &[f32], max: i64) -> i64 {
    let start = reference.len() / 4;
    let len = (reference.len() / 2).min(20_000);
    let mut best = (0, f64::MIN);
    for lag in -max..=max {
        let mut dot = 0.0_f64;
        for (i, &r) in reference.iter().enumerate().skip(start).take(len) {
            let j = i as i64 + lag;
            if j >= 0 && (j as usize) < decoded.len() {
                dot += f64::from(r) * f64::from(decoded[j as usize]);
            }
        }
        if dot > best.1 {
            best = (lag, dot);
        }
    }
    best.0
}

/// `flac --test`: decodes with the reference decoder and checks the STREAMINFO MD5.
pub fn flac_test(path: &Path) {
    require_tool("flac");
    let out = Command::new("flac")
        .args(["--test", "--silent"])
        .arg(path)
        .output()
        .expect("run flac --test");
    assert!(
        out.status.success(),
        "flac --test {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
