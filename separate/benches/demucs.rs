//! Demucs speed and memory on a real-size model, run by tools/demucs/bench.sh (which exports
//! the model, makes the input and runs the PyTorch reference side by side).
//!
//! `DEMUCS_BENCH_MODEL=dir/manifest.toml DEMUCS_BENCH_INPUT=mix.f32 [DEMUCS_BENCH_OUTPUT=out.f32]
//!  cargo bench -p separate --bench demucs`
//!
//! The input is raw little-endian f32, planar stereo (all of channel 0, then channel 1); the
//! output the same, source-major. Prints one JSON line of figures.

use std::path::PathBuf;
use std::time::Instant;

use separate::demucs::{DemucsModel, DemucsOptions};
use separate::{Manifest, NoListener, RuntimeOptions};

fn read_f32(path: &PathBuf) -> Vec<f32> {
    let bytes = std::fs::read(path).expect("read the input");
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Peak resident set of this process (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let (Some(model), Some(input)) = (
        std::env::var_os("DEMUCS_BENCH_MODEL"),
        std::env::var_os("DEMUCS_BENCH_INPUT"),
    ) else {
        eprintln!(
            "demucs bench: set DEMUCS_BENCH_MODEL and DEMUCS_BENCH_INPUT (see tools/demucs/bench.sh); skipping"
        );
        return;
    };
    let threads = std::env::var("DEMUCS_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok());
    let manifest = Manifest::load(&PathBuf::from(model)).expect("manifest");
    let runtime = RuntimeOptions {
        intra_threads: threads,
        ..RuntimeOptions::default()
    };
    let started = Instant::now();
    let separator = DemucsModel::load(&manifest, &runtime).expect("load the model");
    let load_s = started.elapsed().as_secs_f64();

    let samples = read_f32(&PathBuf::from(input));
    let frames = samples.len() / 2;
    let mix: Vec<Vec<f32>> = samples.chunks_exact(frames).map(<[f32]>::to_vec).collect();
    drop(samples);
    let started = Instant::now();
    let (stems, timings) = separator
        .separate_timed(&mix, &DemucsOptions::default(), &mut NoListener)
        .expect("separate");
    let run_s = started.elapsed().as_secs_f64();
    let audio_s = frames as f64 / f64::from(manifest.sample_rate);

    if let Some(output) = std::env::var_os("DEMUCS_BENCH_OUTPUT") {
        let bytes: Vec<u8> = stems
            .iter()
            .flatten()
            .flatten()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        std::fs::write(output, bytes).expect("write the output");
    }
    println!(
        "{{\"impl\":\"msaas\",\"audio_s\":{audio_s:.3},\"load_s\":{load_s:.3},\"run_s\":{run_s:.3},\"rtf\":{:.4},\"stft_s\":{:.3},\"model_s\":{:.3},\"overlap_add_s\":{:.3},\"chunks\":{},\"peak_rss_mib\":{:.1}}}",
        run_s / audio_s,
        timings.stft.as_secs_f64(),
        timings.model.as_secs_f64(),
        timings.overlap_add.as_secs_f64(),
        timings.chunks,
        peak_rss_mib()
    );
}
