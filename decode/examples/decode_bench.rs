//! `decode` against `ffmpeg -f f32le` on generated 4-minute MP3 / FLAC / AAC files: wall time
//! and peak memory of each, as separate processes measured by `/usr/bin/time`.
//!
//! ```text
//! cargo run --release -p decode --example decode_bench            # 240 s files, 3 runs each
//! cargo run --release -p decode --example decode_bench -- 60 5    # 60 s files, 5 runs each
//! ```
//!
//! Needs ffmpeg and GNU time (`apt-get install ffmpeg time`). Prints a Markdown table.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Child mode: decode one file to 44.1 kHz stereo in memory, as the decode stage does.
    if args.get(1).map(String::as_str) == Some("--decode-one") {
        let path = PathBuf::from(&args[2]);
        match decode::decode_file(&path, &decode::Limits::default(), decode::Target::Model) {
            Ok(decoded) => println!("{} frames", decoded.pcm.frames()),
            Err(err) => {
                eprintln!("decode failed: {err}");
                std::process::exit(1);
            }
        }
        return;
    }
    let secs: u32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(240);
    let runs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let dir = tempfile::tempdir().expect("temp dir");
    let wav = dir.path().join("source.wav");
    // Music-like material: moving tones plus noise, different per side.
    let source = format!(
        "aevalsrc=0.25*sin(2*PI*220*t)*sin(2*PI*0.3*t)+0.15*sin(2*PI*1760*t+sin(2*PI*3*t))+0.08*(random(0)-0.5)\
         |0.25*sin(2*PI*330*t)*cos(2*PI*0.2*t)+0.12*sin(2*PI*2640*t)+0.08*(random(1)-0.5):s=44100:d={secs}"
    );
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &source,
        "-c:a",
        "pcm_s16le",
        path_str(&wav),
    ]);
    let inputs = [
        (
            "MP3 320k",
            "song.mp3",
            vec!["-c:a", "libmp3lame", "-b:a", "320k"],
        ),
        ("FLAC", "song.flac", vec!["-c:a", "flac"]),
        (
            "AAC 256k (m4a)",
            "song.m4a",
            vec!["-c:a", "aac", "-b:a", "256k"],
        ),
        // The resampling path: both sides convert 48 kHz to 44.1 kHz.
        (
            "FLAC 48 kHz -> 44.1",
            "song48.flac",
            vec!["-ar", "48000", "-c:a", "flac"],
        ),
    ];
    let exe = std::env::current_exe().expect("own path");
    println!("{secs} s stereo 44.1 kHz inputs, median of {runs} runs each, one process per run");
    println!();
    println!(
        "| input | msaas decode wall | ffmpeg wall | ratio (msaas / ffmpeg) | msaas peak RSS | ffmpeg peak RSS |"
    );
    println!("|---|---|---|---|---|---|");
    for (label, name, codec) in inputs {
        let path = dir.path().join(name);
        let mut encode = vec!["-i", path_str(&wav)];
        encode.extend(codec.iter().copied());
        encode.push(path_str(&path));
        ffmpeg(&encode);
        let ours = measure(runs, &[path_str(&exe), "--decode-one", path_str(&path)]);
        let theirs = measure(
            runs,
            &[
                "ffmpeg",
                "-v",
                "error",
                "-i",
                path_str(&path),
                "-f",
                "f32le",
                "-ac",
                "2",
                "-ar",
                "44100",
                "-y",
                "/dev/null",
            ],
        );
        println!(
            "| {label} | {:.2} s | {:.2} s | {:.2} | {:.0} MiB | {:.0} MiB |",
            ours.0,
            theirs.0,
            ours.0 / theirs.0,
            ours.1 as f64 / 1024.0,
            theirs.1 as f64 / 1024.0
        );
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

fn ffmpeg(args: &[&str]) {
    let status = Command::new("ffmpeg")
        .args(["-y", "-v", "error"])
        .args(args)
        .status()
        .expect("ffmpeg runs (apt-get install ffmpeg)");
    assert!(status.success(), "ffmpeg {args:?} failed");
}

/// Median wall seconds and the largest peak RSS (KiB) over `runs` runs of `command`.
fn measure(runs: usize, command: &[&str]) -> (f64, u64) {
    let report = tempfile::NamedTempFile::new().expect("temp file");
    let mut walls = Vec::new();
    let mut peak = 0;
    for _ in 0..runs {
        let status = Command::new("/usr/bin/time")
            .args(["-f", "%e %M", "-o", path_str(report.path())])
            .args(command)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("GNU time runs (apt-get install time)");
        assert!(status.success(), "{command:?} failed");
        let text = std::fs::read_to_string(report.path()).expect("time report");
        let mut fields = text.split_whitespace();
        let wall: f64 = fields
            .next()
            .and_then(|s| s.parse().ok())
            .expect("wall seconds");
        let rss: u64 = fields
            .next()
            .and_then(|s| s.parse().ok())
            .expect("peak rss");
        walls.push(wall);
        peak = peak.max(rss);
    }
    walls.sort_by(f64::total_cmp);
    (walls[walls.len() / 2], peak)
}
