//! [`Separator`]: a loaded model of either family, the stem selection every family shares, and
//! where models are found.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use audio::{ErrorCode, Pcm};

use crate::error::SeparateError;
use crate::manifest::{FamilyKind, Manifest};
use crate::options::{Listener, SeparateOptions};
use crate::runtime::RuntimeOptions;
use crate::{demucs, mask};

/// The loaded network of one family.
#[derive(Debug)]
enum Family {
    // Boxed: a mask model holds its graph's executor inline (hundreds of bytes), a Demucs model
    // its executors in a Vec.
    Mask(Box<mask::MaskModel>),
    Demucs(demucs::DemucsModel),
}

/// A loaded model, ready to separate songs. Loading is expensive; keep it and share it
/// (`run` takes `&self`).
#[derive(Debug)]
pub struct Separator {
    manifest: Manifest,
    family: Family,
    /// How long loading the graphs took (the service reports it as a metric).
    load_seconds: f64,
}

/// Where a model's manifest is: `model` is a path to a manifest (or its directory) when it
/// contains a path separator or ends in `.toml`, else a name under `models_dir`.
pub fn resolve_manifest(model: &str, models_dir: &Path) -> Result<PathBuf, SeparateError> {
    let unknown = |reason: String| SeparateError::UnknownModel {
        name: model.to_string(),
        reason,
    };
    if model.contains('/') || model.ends_with(".toml") {
        let path = PathBuf::from(model);
        let path = if path.is_dir() {
            path.join("manifest.toml")
        } else {
            path
        };
        if !path.is_file() {
            return Err(unknown(format!("no manifest at {}", path.display())));
        }
        return Ok(path);
    }
    let valid_name = !model.is_empty()
        && !model.starts_with('.')
        && model
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid_name {
        return Err(unknown(
            "a model name is ASCII letters, digits, '_', '-' or '.'".into(),
        ));
    }
    let path = models_dir.join(model).join("manifest.toml");
    if path.is_file() {
        return Ok(path);
    }
    let installed = installed_models(models_dir);
    Err(unknown(if installed.is_empty() {
        format!(
            "no models installed in {} (run tools/setup to install the default)",
            models_dir.display()
        )
    } else {
        format!("installed models: {}", installed.join(", "))
    }))
}

/// Names of the models under `models_dir` (directories holding a `manifest.toml`), sorted.
pub fn installed_models(models_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(models_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.path().join("manifest.toml").is_file())
        .filter_map(|entry| entry.file_name().to_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

impl Separator {
    /// Loads a model by name (under `models_dir`) or manifest path; see [`resolve_manifest`].
    pub fn load(
        model: &str,
        models_dir: &Path,
        options: &RuntimeOptions,
    ) -> Result<Self, SeparateError> {
        let span = tracing::info_span!("separate.model_load", msaas.model = model);
        let _entered = span.enter();
        let path = resolve_manifest(model, models_dir)?;
        Self::from_manifest(Manifest::load(&path)?, options)
    }

    pub fn from_manifest(
        manifest: Manifest,
        options: &RuntimeOptions,
    ) -> Result<Self, SeparateError> {
        let started = std::time::Instant::now();
        let family = match manifest.family {
            FamilyKind::Mask => Family::Mask(Box::new(mask::MaskModel::load(&manifest, options)?)),
            FamilyKind::Demucs => Family::Demucs(demucs::DemucsModel::load(&manifest, options)?),
        };
        let load_seconds = started.elapsed().as_secs_f64();
        tracing::info!(model = %manifest.name, family = manifest.family.as_str(), seconds = load_seconds, "model loaded");
        Ok(Self {
            manifest,
            family,
            load_seconds,
        })
    }

    /// The executors of the model's graphs (one per graph; their batch size and totals).
    pub fn graphs(&self) -> Box<dyn Iterator<Item = &crate::batch::BatchedGraph> + '_> {
        match &self.family {
            Family::Mask(model) => Box::new(std::iter::once(model.graph())),
            Family::Demucs(model) => Box::new(model.graphs()),
        }
    }

    /// Seconds [`Separator::from_manifest`] spent loading the model's graphs.
    pub fn load_seconds(&self) -> f64 {
        self.load_seconds
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// The model's sources, in output order.
    pub fn sources(&self) -> &[String] {
        &self.manifest.sources
    }

    pub fn sample_rate(&self) -> u32 {
        self.manifest.sample_rate
    }

    /// The stems `run` will return for `options`, in order; checks `stems` / `two_stems`.
    pub fn output_stems(&self, options: &SeparateOptions) -> Result<Vec<String>, SeparateError> {
        select_stems(self.name(), self.sources(), options)
    }

    /// Separates `pcm` into stems (in the model's order, after `stems` / `two_stems`), each
    /// as long as the input, at the model's rate and channel count.
    pub fn run(
        &self,
        pcm: &Pcm,
        options: &SeparateOptions,
        listener: &mut dyn Listener,
    ) -> Result<Vec<(String, Pcm)>, SeparateError> {
        // One span per model run, a child of the stage's span when the caller carries it in.
        let span = tracing::info_span!(
            "separate.model_run",
            msaas.model = self.name(),
            msaas.family = self.manifest.family.as_str(),
            msaas.audio_duration_secs = pcm.frames() as f64 / f64::from(pcm.sample_rate.max(1)),
            msaas.sources = self.sources().len(),
        );
        let _entered = span.enter();
        options.validate()?;
        let wanted = self.output_stems(options)?;
        let input = self.conform(pcm)?;
        let sources = match &self.family {
            Family::Mask(model) => model.separate(&input, listener)?,
            Family::Demucs(model) => model.separate(
                &input,
                &demucs::DemucsOptions::from_separate(options),
                listener,
            )?,
        };
        if sources.len() != self.sources().len() {
            return Err(SeparateError::Model {
                model: self.name().to_string(),
                message: format!(
                    "produced {} sources, the manifest lists {}",
                    sources.len(),
                    self.sources().len()
                ),
            });
        }
        let mut named: Vec<(String, Vec<Vec<f32>>)> =
            self.sources().iter().cloned().zip(sources).collect();
        if let Some(stem) = &options.two_stems {
            named = two_stems(named, stem);
        }
        named
            .into_iter()
            .filter(|(name, _)| wanted.contains(name))
            .map(|(name, channels)| {
                Pcm::new(self.sample_rate(), channels)
                    .map(|pcm| (name, pcm))
                    .map_err(|e| SeparateError::Model {
                        model: self.name().to_string(),
                        message: e.to_string(),
                    })
            })
            .collect()
    }

    /// The input at the model's rate and channel count (as demucs `convert_audio` does for
    /// channels: mono is repeated, extra channels are dropped).
    fn conform<'a>(&self, pcm: &'a Pcm) -> Result<Cow<'a, [Vec<f32>]>, SeparateError> {
        if pcm.frames() == 0 || pcm.channels.is_empty() {
            return Err(SeparateError::Input {
                code: ErrorCode::EmptyInput,
                message: "the audio has no samples".into(),
            });
        }
        if pcm.sample_rate != self.sample_rate() {
            return Err(SeparateError::Input {
                code: ErrorCode::InvalidOption,
                message: format!(
                    "model {} takes {} Hz audio, got {} Hz (decode resamples)",
                    self.name(),
                    self.sample_rate(),
                    pcm.sample_rate
                ),
            });
        }
        let wanted = self.manifest.audio_channels;
        Ok(match pcm.channels.len() {
            n if n >= wanted => Cow::Borrowed(&pcm.channels[..wanted]),
            1 => Cow::Owned(vec![pcm.channels[0].clone(); wanted]),
            n => {
                return Err(SeparateError::Input {
                    code: ErrorCode::UnsupportedFormat,
                    message: format!("model {} takes {wanted} channels, got {n}", self.name()),
                });
            }
        })
    }
}

/// The stems a model with `sources` returns for `options`, in order.
pub fn select_stems(
    model: &str,
    sources: &[String],
    options: &SeparateOptions,
) -> Result<Vec<String>, SeparateError> {
    let unknown = |stem: &str, available: Vec<String>| SeparateError::UnknownStem {
        stem: stem.to_string(),
        model: model.to_string(),
        available,
    };
    let produced = match &options.two_stems {
        Some(stem) if sources.contains(stem) => vec![stem.clone(), format!("no_{stem}")],
        Some(stem) => return Err(unknown(stem, sources.to_vec())),
        None => sources.to_vec(),
    };
    match &options.stems {
        None => Ok(produced),
        Some(wanted) if wanted.is_empty() => Err(SeparateError::InvalidOption(
            "stems selects nothing: leave it out for all stems".into(),
        )),
        Some(wanted) => {
            if let Some(stem) = wanted.iter().find(|s| !produced.contains(s)) {
                return Err(unknown(stem, produced));
            }
            Ok(produced
                .into_iter()
                .filter(|s| wanted.contains(s))
                .collect())
        }
    }
}

/// `stem` and the sum of all the others, named `no_<stem>`.
fn two_stems(named: Vec<(String, Vec<Vec<f32>>)>, stem: &str) -> Vec<(String, Vec<Vec<f32>>)> {
    let mut kept = None;
    let mut rest: Option<Vec<Vec<f32>>> = None;
    for (name, channels) in named {
        if name == stem {
            kept = Some(channels);
        } else if let Some(sum) = rest.as_mut() {
            for (acc, channel) in sum.iter_mut().zip(&channels) {
                acc.iter_mut().zip(channel).for_each(|(a, b)| *a += b);
            }
        } else {
            rest = Some(channels);
        }
    }
    let mut out = Vec::with_capacity(2);
    if let Some(channels) = kept {
        let silence = channels.iter().map(|c| vec![0.0; c.len()]).collect();
        out.push((stem.to_string(), channels));
        // A one-source model has nothing else: the complement is silence.
        out.push((format!("no_{stem}"), rest.unwrap_or(silence)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_stems_sums_the_others() {
        let named = vec![
            ("drums".to_string(), vec![vec![1.0, 2.0]]),
            ("bass".to_string(), vec![vec![10.0, 20.0]]),
            ("vocals".to_string(), vec![vec![100.0, 200.0]]),
        ];
        let out = two_stems(named, "bass");
        assert_eq!(
            out,
            vec![
                ("bass".to_string(), vec![vec![10.0, 20.0]]),
                ("no_bass".to_string(), vec![vec![101.0, 202.0]]),
            ]
        );
    }

    #[test]
    fn stems_are_selected_in_model_order() {
        let sources: Vec<String> = ["drums", "bass", "other", "vocals"]
            .map(String::from)
            .to_vec();
        let select = |stems: Option<&[&str]>, two: Option<&str>| {
            let options = SeparateOptions {
                stems: stems.map(|s| s.iter().map(|x| x.to_string()).collect()),
                two_stems: two.map(String::from),
                ..SeparateOptions::default()
            };
            select_stems("m", &sources, &options)
        };
        assert_eq!(select(None, None).expect("all"), sources);
        assert_eq!(
            select(Some(&["vocals", "drums"]), None).expect("two"),
            ["drums", "vocals"]
        );
        assert_eq!(
            select(None, Some("vocals")).expect("two stems"),
            ["vocals", "no_vocals"]
        );
        assert_eq!(
            select(Some(&["no_vocals"]), Some("vocals")).expect("complement only"),
            ["no_vocals"]
        );
        let err = select(Some(&["piano"]), None).expect_err("unknown");
        assert_eq!(err.code(), ErrorCode::UnknownStem);
        assert!(
            err.to_string().contains("drums, bass, other, vocals"),
            "{err}"
        );
        assert_eq!(
            select(None, Some("piano")).expect_err("unknown").code(),
            ErrorCode::UnknownStem
        );
        assert_eq!(
            select(Some(&[]), None).expect_err("empty").code(),
            ErrorCode::InvalidOption
        );
    }

    #[test]
    fn model_names_cannot_escape_the_models_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["..", ".hidden", "a b", ""] {
            let err = resolve_manifest(name, dir.path()).expect_err(name);
            assert_eq!(err.code(), ErrorCode::UnknownModel, "{name}");
        }
        let err = resolve_manifest("htdemucs", dir.path()).expect_err("not installed");
        assert!(err.to_string().contains("tools/setup"), "{err}");
    }

    #[test]
    fn installed_models_are_found_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("spleeter-2stems")).expect("mkdir");
        std::fs::write(dir.path().join("spleeter-2stems/manifest.toml"), "").expect("write");
        assert_eq!(installed_models(dir.path()), ["spleeter-2stems"]);
        let path = resolve_manifest("spleeter-2stems", dir.path()).expect("found");
        assert!(path.ends_with("spleeter-2stems/manifest.toml"));
        let err = resolve_manifest("other", dir.path()).expect_err("unknown");
        assert!(err.to_string().contains("spleeter-2stems"), "{err}");
    }

    #[test]
    fn options_are_validated() {
        for bad in [
            SeparateOptions {
                overlap: 1.0,
                ..SeparateOptions::default()
            },
            SeparateOptions {
                segment: Some(0.0),
                ..SeparateOptions::default()
            },
            SeparateOptions {
                segment: Some(f32::NAN),
                ..SeparateOptions::default()
            },
        ] {
            assert_eq!(
                bad.validate().expect_err("invalid").code(),
                ErrorCode::InvalidOption
            );
        }
    }
}
