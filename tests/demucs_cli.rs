//! `msaas run --model <tiny demucs> --format wav --wav-format f32` against the Python
//! reference (`demucs.apply.apply_model` with `demucs.api.Separator`'s normalisation), on an
//! input the separate crate's own tests never see. Regenerate the fixture with
//! `tools/demucs/make_cli_fixture.py`.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/demucs_cli")
        .join(name)
}

/// Planar samples of a WAV, as f64.
fn read_planar(path: &Path, scale: f64) -> Vec<Vec<f64>> {
    let mut reader =
        hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let channels = usize::from(reader.spec().channels);
    let samples: Vec<f64> = match reader.spec().sample_format {
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .map(|s| f64::from(s.expect("sample")))
            .collect(),
        hound::SampleFormat::Int => reader
            .samples::<i16>()
            .map(|s| f64::from(s.expect("sample")) * scale)
            .collect(),
    };
    (0..channels)
        .map(|c| samples.iter().skip(c).step_by(channels).copied().collect())
        .collect()
}

#[test]
fn tiny_demucs_through_the_whole_pipeline_matches_the_python_reference() {
    let expected: toml::Table = std::fs::read_to_string(fixture("expected.toml"))
        .expect("expected.toml")
        .parse()
        .expect("parse expected.toml");
    let scale = expected["scale"].as_float().expect("scale");
    let peak = expected["peak"].as_float().expect("peak");
    let sources: Vec<&str> = expected["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .map(|s| s.as_str().expect("source name"))
        .collect();

    let out = tempfile::tempdir().expect("tempdir");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("separate/tests/fixtures/demucs/tiny/manifest.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_msaas"))
        .env_remove("MSAAS_CONFIG")
        .arg("run")
        .arg(fixture("song.wav"))
        .arg("--model")
        .arg(&manifest)
        .args(["--format", "wav", "--wav-format", "f32", "--out"])
        .arg(out.path())
        .output()
        .expect("run msaas");
    assert!(
        output.status.success(),
        "msaas run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let mut worst: f64 = 0.0;
    for source in &sources {
        let got = read_planar(&out.path().join("song").join(format!("{source}.wav")), 1.0);
        let want = read_planar(&fixture(&format!("{source}.wav")), scale);
        assert_eq!(got.len(), want.len(), "{source}: channel count");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.len(), w.len(), "{source}: length");
            for (a, b) in g.iter().zip(w) {
                worst = worst.max((a - b).abs());
            }
        }
    }
    assert!(
        worst <= 1e-4 * peak,
        "largest difference {worst:e} exceeds 1e-4 of the peak {peak}"
    );
}
