//! `cargo run --release -p encode --example encode-bench [-- --minutes 4 --stems 4 --repeats 3 --only mp3|flac]`
//!
//! Encodes N stems × M minutes (stereo, 44.1 kHz, music-like synthetic signal) to MP3 320
//! and 16-bit FLAC with msaas (`encode::encode_stems`: one thread per stem) and, in the same
//! run on the same input, with the `lame` and `flac` command-line encoders (and ffmpeg's
//! FLAC encoder), the CLIs started all at once so they too use every core. Prints a
//! Markdown table of median wall times and the ratio msaas / CLI. Needs lame, flac, ffmpeg.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use audio::Pcm;
use audio::format::{AudioFormat, Mp3Mode, OutputFormat, SampleFormat};
use encode::{Song, encode_stems};

const RATE: u32 = 44_100;

struct Args {
    minutes: f32,
    stems: usize,
    repeats: usize,
    /// Only the cases of one codec ("mp3" or "flac").
    only: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        minutes: 4.0,
        stems: 4,
        repeats: 3,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = || format!("bad value {value:?} for {flag}");
        match flag.as_str() {
            "--minutes" => args.minutes = value.parse().map_err(|_| bad())?,
            "--stems" => args.stems = value.parse().map_err(|_| bad())?,
            "--repeats" => args.repeats = value.parse().map_err(|_| bad())?,
            "--only" => args.only = Some(value),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

/// Music-like test stem: harmonic notes with envelopes over a bass line, plus a little noise
/// (so FLAC has realistic work: neither silence nor white noise).
fn stem(seconds: f32, seed: u32) -> Pcm {
    let frames = (seconds * RATE as f32) as usize;
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    let mut channels = vec![Vec::with_capacity(frames), Vec::with_capacity(frames)];
    let base = 110.0 * (1.0 + seed as f32 * 0.25);
    for i in 0..frames {
        let t = i as f32 / RATE as f32;
        let note = (t * 2.0) as usize % 4;
        let f = base * [1.0, 1.25, 1.5, 2.0][note];
        let envelope = (-(t * 2.0).fract() * 4.0).exp();
        for (c, channel) in channels.iter_mut().enumerate() {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = (state as f32 / u32::MAX as f32) * 2.0 - 1.0;
            let phase = std::f32::consts::TAU * f * (1.0 + c as f32 * 0.002) * t;
            let tone = phase.sin() + 0.5 * (2.0 * phase).sin() + 0.25 * (3.0 * phase).sin();
            channel.push(0.3 * tone * envelope + 0.02 * noise);
        }
    }
    Pcm {
        sample_rate: RATE,
        channels,
    }
}

fn write_wav16(pcm: &Pcm, path: &Path) -> Result<(), String> {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut wav = hound::WavWriter::create(path, spec).map_err(|e| e.to_string())?;
    for i in 0..pcm.frames() {
        for channel in &pcm.channels {
            wav.write_sample(encode::quantize_i16(channel[i]))
                .map_err(|e| e.to_string())?;
        }
    }
    wav.finalize().map_err(|e| e.to_string())
}

/// `staged` holds a copy of the stems made before the clock starts (encode_stems consumes
/// its input; copying 4 stems is not encoding work).
fn msaas(
    staged: &RefCell<Option<Vec<(String, Pcm)>>>,
    format: &OutputFormat,
    out: &Path,
) -> Result<u64, String> {
    let song = Song {
        source_name: "bench.wav",
        source: None,
    };
    let stems = staged.take().ok_or("no stems staged")?;
    let encoded = encode_stems(stems, format, song, out, &|| false).map_err(|e| e.to_string())?;
    Ok(encoded.iter().map(|e| e.bytes).sum())
}

/// Runs one command per input, all at once, and waits for all; returns total output bytes.
fn cli(
    inputs: &[PathBuf],
    out: &Path,
    make: &dyn Fn(&Path, &Path) -> Command,
) -> Result<u64, String> {
    let mut children = Vec::new();
    let mut outputs = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let output = out.join(format!("cli{i}"));
        let child = make(input, &output)
            .spawn()
            .map_err(|e| format!("starting encoder CLI: {e}"))?;
        children.push(child);
        outputs.push(output);
    }
    for mut child in children {
        let status = child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("encoder CLI failed: {status}"));
        }
    }
    let mut bytes = 0;
    for output in outputs {
        bytes += std::fs::metadata(&output).map_err(|e| e.to_string())?.len();
    }
    Ok(bytes)
}

/// Wall time and CPU time (user + system, of this process and of the children it waited
/// for) of `f`. CPU time barely moves with other load on a shared machine; wall time does.
fn time<T>(f: impl FnOnce() -> Result<T, String>) -> Result<(Duration, Duration, T), String> {
    let cpu_before = cpu_seconds()?;
    let started = Instant::now();
    let value = f()?;
    let wall = started.elapsed();
    let cpu = Duration::from_secs_f64((cpu_seconds()? - cpu_before).max(0.0));
    Ok((wall, cpu, value))
}

/// utime + stime + cutime + cstime from /proc/self/stat (Linux), in seconds.
fn cpu_seconds() -> Result<f64, String> {
    let stat = std::fs::read_to_string("/proc/self/stat").map_err(|e| e.to_string())?;
    // Fields after the parenthesised command name; utime is field 14 of the whole line.
    let after_name = stat.rsplit_once(')').ok_or("bad /proc/self/stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..15)
        .ok_or("short /proc/self/stat")?
        .iter()
        .map(|f| f.parse::<f64>().unwrap_or(0.0))
        .sum();
    // The kernel reports in USER_HZ, 100 on every Linux ABI.
    Ok(ticks / 100.0)
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let seconds = args.minutes * 60.0;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    eprintln!("generating {} stems × {} min …", args.stems, args.minutes);
    let stems: Vec<(String, Pcm)> = (0..args.stems)
        .map(|i| (format!("stem{i}"), stem(seconds, i as u32 + 1)))
        .collect();
    let mut wavs = Vec::new();
    for (i, (_, pcm)) in stems.iter().enumerate() {
        let path = dir.path().join(format!("in{i}.wav"));
        write_wav16(pcm, &path)?;
        wavs.push(path);
    }
    let out = dir.path().join("out");
    std::fs::create_dir(&out).map_err(|e| e.to_string())?;

    let mp3 = OutputFormat {
        format: AudioFormat::Mp3,
        mp3: Mp3Mode::Cbr(320),
        ..OutputFormat::default()
    };
    let flac = OutputFormat {
        format: AudioFormat::Flac,
        sample_format: SampleFormat::I16,
        ..OutputFormat::default()
    };
    let lame = |input: &Path, output: &Path| {
        let mut cmd = Command::new("lame");
        // -q 2: the algorithm quality msaas (and demucs) use.
        cmd.args(["--silent", "-b", "320", "-q", "2"])
            .arg(input)
            .arg(output);
        cmd
    };
    let flac_cli = |input: &Path, output: &Path| {
        let mut cmd = Command::new("flac");
        cmd.args(["--silent", "-f", "-5", "-o"])
            .arg(output)
            .arg(input);
        cmd
    };
    let flac_fast = |input: &Path, output: &Path| {
        let mut cmd = Command::new("flac");
        cmd.args(["--silent", "-f", "-2", "-o"])
            .arg(output)
            .arg(input);
        cmd
    };
    let ffmpeg_flac = |input: &Path, output: &Path| {
        let mut cmd = Command::new("ffmpeg");
        cmd.args(["-v", "error", "-y", "-threads", "1", "-i"])
            .arg(input)
            .args(["-c:a", "flac", "-f", "flac"])
            .arg(output);
        cmd
    };

    let staged = RefCell::new(None);
    struct Case<'a> {
        name: &'a str,
        codec: &'a str,
        /// The msaas case this CLI is compared with.
        against: Option<usize>,
        run: Box<dyn Fn() -> Result<u64, String> + 'a>,
    }
    let case = |name, codec, against, run| Case {
        name,
        codec,
        against,
        run,
    };
    let cases: Vec<Case> = vec![
        case(
            "msaas MP3 320 CBR",
            "mp3",
            None,
            Box::new(|| msaas(&staged, &mp3, &out)),
        ),
        case(
            "lame -b 320 -q 2",
            "mp3",
            Some(0),
            Box::new(|| cli(&wavs, &out, &lame)),
        ),
        case(
            "msaas FLAC 16-bit",
            "flac",
            None,
            Box::new(|| msaas(&staged, &flac, &out)),
        ),
        case(
            "flac -5",
            "flac",
            Some(2),
            Box::new(|| cli(&wavs, &out, &flac_cli)),
        ),
        case(
            "flac -2",
            "flac",
            Some(2),
            Box::new(|| cli(&wavs, &out, &flac_fast)),
        ),
        case(
            "ffmpeg -c:a flac",
            "flac",
            Some(2),
            Box::new(|| cli(&wavs, &out, &ffmpeg_flac)),
        ),
    ];
    let selected = |c: &Case| args.only.as_deref().is_none_or(|only| only == c.codec);
    let mut times = vec![Vec::new(); cases.len()];
    let mut cpu_times = vec![Vec::new(); cases.len()];
    let mut sizes = vec![0; cases.len()];
    // Interleaved repeats: background load on a shared machine hits every case alike.
    for repeat in 0..args.repeats {
        for (i, case) in cases.iter().enumerate().filter(|(_, c)| selected(c)) {
            if case.against.is_none() {
                staged.replace(Some(stems.clone()));
            }
            let (elapsed, cpu, bytes) = time(&case.run)?;
            eprintln!(
                "run {repeat}: {}: {:.2} s wall, {:.2} s CPU",
                case.name,
                elapsed.as_secs_f64(),
                cpu.as_secs_f64()
            );
            times[i].push(elapsed);
            cpu_times[i].push(cpu);
            sizes[i] = bytes;
        }
    }
    let cpu_medians: Vec<Option<Duration>> = cpu_times
        .into_iter()
        .map(|t| (!t.is_empty()).then(|| median(t)))
        .collect();
    let medians: Vec<Option<Duration>> = times
        .into_iter()
        .map(|t| (!t.is_empty()).then(|| median(t)))
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{} stems × {} min, stereo 44.1 kHz, {cores} cores, median of {} interleaved runs; \
         the CLIs run one process per stem, all at once.\n",
        args.stems, args.minutes, args.repeats
    );
    println!(
        "| encoder | wall time | msaas / CLI (wall) | CPU time | msaas / CLI (CPU) | output |"
    );
    println!("|---|---|---|---|---|---|");
    let ratio = |ours: Option<Duration>, theirs: Duration| {
        ours.map_or("—".to_owned(), |ours| {
            format!("{:.2}×", ours.as_secs_f64() / theirs.as_secs_f64())
        })
    };
    for (i, case) in cases.iter().enumerate() {
        let (Some(wall), Some(cpu)) = (medians[i], cpu_medians[i]) else {
            continue;
        };
        let against = |m: &[Option<Duration>]| case.against.and_then(|ours| m[ours]);
        println!(
            "| {} | {:.2} s | {} | {:.2} s | {} | {:.1} MB |",
            case.name,
            wall.as_secs_f64(),
            ratio(against(&medians), wall),
            cpu.as_secs_f64(),
            ratio(against(&cpu_medians), cpu),
            sizes[i] as f64 / 1e6
        );
    }
    Ok(())
}

fn main() {
    if let Err(err) = run() {
        eprintln!("encode-bench: {err}");
        std::process::exit(1);
    }
}
