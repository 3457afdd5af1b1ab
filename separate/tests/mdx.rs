//! MDX-Net I/O handling with the tiny models of `tests/fixtures/mdx/`
//! (`tools/mdx/make_test_model.py`): chunking, the frequency cut, the residual stem and
//! batching. Needs the ONNX Runtime library that `tools/setup` installs.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod common;

use std::path::PathBuf;

use audio::Pcm;
use separate::{Device, Manifest, NoListener, SeparateOptions, Separator, runtime::RuntimeOptions};

fn manifest_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/mdx/{name}.toml"))
}

/// `batch`: chunks per graph run (the manifest's `batch = 3` bounds it); `None`: the CPU's 1.
fn load(name: &str, batch: Option<usize>) -> Separator {
    let path = manifest_path(name);
    let text = std::fs::read_to_string(&path).expect("manifest");
    let dir = path.parent().expect("fixture dir").to_path_buf();
    let manifest = Manifest::parse(&text, dir).expect("valid manifest");
    let runtime = RuntimeOptions {
        batch_size: batch,
        ..RuntimeOptions::default()
    };
    Separator::from_manifest(manifest, &runtime)
        .unwrap_or_else(|e| panic!("loading {name} failed ({e}); run tools/setup for ONNX Runtime"))
}

fn noise(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..len)
        .map(|i| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            0.4 * ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) + 0.3 * (i as f32 * 0.05).sin()
        })
        .collect()
}

fn stereo(len: usize) -> Pcm {
    Pcm::new(44_100, vec![noise(len, 1), noise(len, 2)]).expect("pcm")
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn identity_model_gives_back_the_mix_through_every_chunk() {
    let separator = load("identity", None);
    // Chunks are 960 samples advancing by 704: cover short, exact and ragged lengths.
    for len in [1, 100, 704, 705, 5_000, 14_083] {
        let mix = stereo(len);
        let stems = separator
            .run(&mix, &SeparateOptions::default(), &mut NoListener)
            .expect("separate");
        let names: Vec<&str> = stems.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["vocals", "instrumental"]);
        for c in 0..2 {
            let target = &stems[0].1.channels[c];
            assert_eq!(target.len(), len);
            let err = max_diff(target, &mix.channels[c]);
            assert!(
                err < 1e-5,
                "len {len} channel {c}: target differs from mix by {err}"
            );
            assert!(stems[1].1.channels[c].iter().all(|v| v.abs() < 1e-5));
        }
    }
}

#[test]
fn residual_sums_back_to_the_mix_and_batching_changes_nothing() {
    let mix = stereo(20_000);
    let batched = load("random", Some(3))
        .run(&mix, &SeparateOptions::default(), &mut NoListener)
        .expect("batch 3");
    let single = load("random", Some(1))
        .run(&mix, &SeparateOptions::default(), &mut NoListener)
        .expect("batch 1");
    for c in 0..2 {
        let (target, rest) = (&batched[0].1.channels[c], &batched[1].1.channels[c]);
        let sum: Vec<f32> = target.iter().zip(rest).map(|(a, b)| a + b).collect();
        assert!(max_diff(&sum, &mix.channels[c]) < 1e-6);
        // The model did something: the target is not the mix.
        assert!(max_diff(target, &mix.channels[c]) > 1e-2);
        assert!(max_diff(target, &single[0].1.channels[c]) < 1e-6);
    }
}

#[test]
fn jobs_of_different_lengths_share_graph_runs_and_get_what_they_get_alone() {
    // Chunks of 960 samples advance by 704: 18, 1 and 2 chunks in windows of 3, which alone
    // take 6 + 1 + 1 runs. Queued together, the first windows' 6 chunks fill 2 runs (the long
    // job's in both), then the long job's other 5 windows run: 7.
    let separator = load("random", Some(3));
    let inputs = [stereo(12_500), stereo(500), stereo(1_000)];
    let shared = common::assert_shared_runs_change_nothing(&separator, &inputs, 21);
    assert_eq!(shared.runs, 7, "{shared:?}");
}

#[test]
fn bins_above_dim_f_are_left_to_the_residual() {
    // 120 of 129 bins is above the random model's dim_f = 96.
    let tone: Vec<f32> = (0..10_000)
        .map(|i| 0.5 * (2.0 * std::f32::consts::PI * 120.0 * i as f32 / 256.0).sin())
        .collect();
    let mix = Pcm::new(44_100, vec![tone.clone(), tone]).expect("pcm");
    let stems = load("random", None)
        .run(&mix, &SeparateOptions::default(), &mut NoListener)
        .expect("separate");
    // Only window leakage at chunk edges reaches the model's bins.
    let rms = |x: &[f32]| (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
    let ratio = rms(&stems[0].1.channels[0]) / rms(&mix.channels[0]);
    assert!(
        ratio < 0.01,
        "target should be near silent: {ratio} of the mix"
    );
    let residual_err = max_diff(&stems[1].1.channels[0], &mix.channels[0]);
    assert!(residual_err < 0.05, "{residual_err}");
}

#[test]
fn cuda_asked_for_and_unavailable_is_an_error_not_a_cpu_fallback() {
    let options = RuntimeOptions {
        device: Device::Cuda { device_id: 0 },
        ..RuntimeOptions::default()
    };
    let err = Separator::load(
        &manifest_path("identity").display().to_string(),
        std::path::Path::new("/nonexistent"),
        &options,
    )
    .expect_err("no CUDA here (CPU-only ONNX Runtime)");
    assert_eq!(err.code(), audio::ErrorCode::DeviceUnavailable, "{err}");
    // Without the GPU build it names the command that installs it; with it (tools/setup
    // --cuda ran) but no driver, the missing driver.
    let message = err.to_string();
    assert!(
        message.contains("tools/setup --cuda") || message.contains("libcuda.so.1"),
        "{message}"
    );
}

#[test]
fn matches_the_community_mdx_inference_written_in_torch() {
    // tools/mdx/make_fixture.py: ConvTDFNet stft/istft + demix on random.onnx, same input.
    let bytes = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mdx/random_expected.f32"),
    )
    .expect("random_expected.f32");
    let expected: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let len = expected.len() / 2;
    let mix = stereo(len);
    let stems = load("random", None)
        .run(&mix, &SeparateOptions::default(), &mut NoListener)
        .expect("separate");
    let tolerance = 1e-4 * mix.peak();
    for c in 0..2 {
        let err = max_diff(&stems[0].1.channels[c], &expected[c * len..(c + 1) * len]);
        assert!(
            err <= tolerance,
            "channel {c}: max error {err} (allowed {tolerance})"
        );
    }
}
