//! End-to-end tests of `msaas run`: the real binary, the real default model (installed by
//! `tools/setup`), the embedded backends.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn msaas() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_msaas"));
    command
        .env_remove("MSAAS_CONFIG")
        .env("MSAAS_LOG", "warn,msaas=info");
    command
}

/// The default model must be installed; say how when it is not, rather than skip.
fn require_default_model() {
    let output = msaas().arg("models").output().expect("run msaas models");
    let listing = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && listing.contains("spleeter-2stems"),
        "the default model is not installed: run `tools/setup` first (stdout: {listing}, stderr: {})",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A stereo "song" of tones under 11 kHz (Spleeter drops everything above: its masks stop
/// at bin 1024), with a slow tremolo, peak well below 1.
fn write_song(path: &Path, seconds: f32) {
    let rate = 44_100;
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut wav = hound::WavWriter::create(path, spec).expect("create wav");
    let frames = (f64::from(seconds) * f64::from(rate)) as usize;
    // f64: in f32 the phase of a 2.6 kHz tone jitters after a second or two, and that
    // jitter is broadband noise the 11 kHz cut removes.
    let tone = |hz: f64, t: f64| (2.0 * std::f64::consts::PI * hz * t).sin();
    for i in 0..frames {
        let t = i as f64 / f64::from(rate);
        let tremolo = 0.75 + 0.25 * tone(2.0, t);
        let left = 0.2 * tone(220.0, t) + 0.1 * tremolo * tone(1_760.0, t);
        let right = 0.2 * tone(330.0, t) + 0.1 * tremolo * tone(2_637.0, t);
        wav.write_sample((left * 32_767.0) as i16).expect("sample");
        wav.write_sample((right * 32_767.0) as i16).expect("sample");
    }
    wav.finalize().expect("finalize");
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[test]
fn good_inputs_are_separated_and_each_bad_one_gets_one_error_line() {
    require_default_model();
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("song.wav");
    write_song(&good, 3.0);
    let missing = dir.path().join("missing.mp3");
    let folder = dir.path().join("a-folder");
    std::fs::create_dir(&folder).expect("mkdir");
    // Unreadable: no permissions for a normal user; garbage for root, who reads anyway.
    let unreadable = dir.path().join("unreadable.mp3");
    std::fs::write(&unreadable, b"this is not audio at all, just some text").expect("write");
    std::fs::set_permissions(
        &unreadable,
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .expect("chmod");
    let out = dir.path().join("out");

    let output = msaas()
        .arg("run")
        .args([&unreadable, &missing, &good, &folder])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run msaas");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");

    let error_lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(error_lines.len(), 3, "one line per bad input: {stderr}");
    for bad in [&unreadable, &missing, &folder] {
        let shown = bad.display().to_string();
        assert_eq!(
            error_lines.iter().filter(|l| l.contains(&shown)).count(),
            1,
            "{shown} must get exactly one error line: {stderr}"
        );
    }
    assert!(stderr.contains("no such file"), "{stderr}");
    assert!(stderr.contains("is a directory"), "{stderr}");

    // The good input was still separated, in full.
    let mut written = files_under(&out);
    written.sort();
    assert_eq!(
        written,
        vec![
            out.join("song/accompaniment.wav"),
            out.join("song/vocals.wav")
        ],
        "stderr: {stderr}"
    );
    let source_frames = hound::WavReader::open(&good).expect("open").duration();
    let mut sum = vec![0f64; 2 * source_frames as usize];
    for stem in &written {
        let mut reader = hound::WavReader::open(stem).expect("open stem");
        assert_eq!(reader.spec().channels, 2);
        assert_eq!(reader.spec().sample_rate, 44_100);
        assert_eq!(reader.duration(), source_frames, "{}", stem.display());
        for (acc, sample) in sum.iter_mut().zip(reader.samples::<i16>()) {
            *acc += f64::from(sample.expect("sample"));
        }
    }
    // Soft masks split the mix: away from the edges (where the abrupt start and end splatter
    // above Spleeter's 11 kHz cut) the stems add back up to it within 16-bit rounding.
    let mix: Vec<f64> = hound::WavReader::open(&good)
        .expect("open")
        .samples::<i16>()
        .map(|s| f64::from(s.expect("sample")))
        .collect();
    let edge = 2 * 8192; // interleaved samples: two frames of 4096 per channel
    let worst = mix[edge..mix.len() - edge]
        .iter()
        .zip(&sum[edge..])
        .map(|(m, s)| (m - s).abs())
        .fold(0.0, f64::max);
    assert!(
        worst <= 2.0,
        "stems differ from the mix by up to {worst} LSB"
    );
}

#[test]
fn options_are_checked_before_any_work() {
    require_default_model();
    let dir = tempfile::tempdir().expect("tempdir");
    let song = dir.path().join("song.wav");
    write_song(&song, 1.0);
    let out = dir.path().join("out");
    for (args, expected) in [
        (vec!["--stems", "drums"], "unknown stem"),
        (vec!["--model", "no-such-model"], "unknown_model"),
        (vec!["--format", "mp3", "--mp3-bitrate", "100"], "bitrate"),
        (vec!["--overlap", "1.5"], "overlap"),
    ] {
        let output = msaas()
            .arg("run")
            .arg(&song)
            .arg("--out")
            .arg(&out)
            .args(&args)
            .output()
            .expect("run msaas");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?} must not write anything");
    }
}

#[test]
fn ctrl_c_cancels_without_leaving_partial_stems() {
    require_default_model();
    let dir = tempfile::tempdir().expect("tempdir");
    let song = dir.path().join("long.wav");
    write_song(&song, 90.0);
    let out = dir.path().join("out");
    let mut child = msaas()
        .arg("run")
        .arg(&song)
        .arg("--out")
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn msaas");
    let stderr = child.stderr.take().expect("stderr piped");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = String::new();
    // Wait until separation is under way, then interrupt.
    loop {
        let line = lines
            .next()
            .expect("msaas ended before separating")
            .expect("read stderr");
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("stage started") && line.contains("separate") {
            break;
        }
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let started = Instant::now();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let exit = child.wait().expect("wait");
    seen.push_str(&rest.join("\n"));
    assert_eq!(exit.code(), Some(130), "{seen}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "cancellation took {:?}",
        started.elapsed()
    );
    assert!(
        files_under(&out).is_empty(),
        "no stems may be written after Ctrl-C: {:?}",
        files_under(&out)
    );
}
