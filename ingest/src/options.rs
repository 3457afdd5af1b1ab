//! Job options from query parameters and multipart form fields, checked against the models.

use std::collections::BTreeMap;
use std::str::FromStr;

use pipeline::JobOptions;
use pipeline::job::{AudioFormat, Mp3Mode, SampleFormat};

use crate::error::ApiError;
use crate::state::IngestState;

/// The parameters `POST /v1/jobs` accepts; anything else is refused (400), so a typo is
/// not silently ignored.
pub const UPLOAD_PARAMETERS: &[&str] = &[
    "model",
    "stems",
    "two_stems",
    "format",
    "bitrate",
    "wav_format",
    "callback_url",
    "filename",
];

/// Longest option value accepted.
const MAX_VALUE_LEN: usize = 2048;

/// Option values as given, by name.
#[derive(Debug, Default, Clone)]
pub(crate) struct OptionInput {
    values: BTreeMap<String, String>,
}

/// `[a-z0-9_]+`: stem names are path segments and storage key parts.
pub(crate) fn valid_stem_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl OptionInput {
    pub(crate) fn from_pairs(pairs: Vec<(String, String)>) -> Result<Self, ApiError> {
        let mut input = Self::default();
        for (name, value) in pairs {
            input.add(&name, value)?;
        }
        Ok(input)
    }

    pub(crate) fn add(&mut self, name: &str, value: String) -> Result<(), ApiError> {
        if !UPLOAD_PARAMETERS.contains(&name) {
            return Err(ApiError::bad_request(format!(
                "unknown parameter {name:?} (known: {})",
                UPLOAD_PARAMETERS.join(", ")
            )));
        }
        if value.len() > MAX_VALUE_LEN {
            return Err(ApiError::bad_request(format!(
                "parameter {name} is too long"
            )));
        }
        if self.values.insert(name.to_owned(), value).is_some() {
            return Err(ApiError::bad_request(format!(
                "parameter {name} is given twice"
            )));
        }
        Ok(())
    }

    pub(crate) fn filename(&self) -> Option<&str> {
        self.values.get("filename").map(String::as_str)
    }

    /// The job options, validated: the model exists, the stems are its sources, the
    /// output settings are consistent.
    pub(crate) fn build(&self, state: &IngestState) -> Result<JobOptions, ApiError> {
        let get = |name: &str| {
            self.values
                .get(name)
                .map(|value| value.trim())
                .filter(|value| !value.is_empty())
        };
        let mut options = JobOptions {
            model: get("model")
                .unwrap_or(&state.inner.default_model)
                .to_owned(),
            ..JobOptions::default()
        };
        let sources = if state.inner.models.is_empty() {
            None
        } else {
            let model = state.model(&options.model).ok_or_else(|| {
                let known: Vec<&str> = state
                    .inner
                    .models
                    .iter()
                    .map(|model| model.name.as_str())
                    .collect();
                ApiError::invalid_option(format!(
                    "unknown model {:?} (available: {}); an operator installs more with \
                     `msaas models pull {}` (`msaas models` lists what can be pulled)",
                    options.model,
                    known.join(", "),
                    options.model
                ))
            })?;
            Some(model.sources.clone())
        };
        let check_stem = |stem: &str| -> Result<String, ApiError> {
            let known = sources
                .as_ref()
                .is_none_or(|sources| sources.iter().any(|source| source == stem));
            if !valid_stem_name(stem) || !known {
                return Err(ApiError::invalid_option(match &sources {
                    Some(sources) => format!(
                        "unknown stem {stem:?} for model {} (it has: {})",
                        options.model,
                        sources.join(", ")
                    ),
                    None => format!("invalid stem name {stem:?}"),
                }));
            }
            Ok(stem.to_owned())
        };
        if let Some(stems) = get("stems") {
            let stems = stems
                .split(',')
                .map(str::trim)
                .filter(|stem| !stem.is_empty())
                .map(check_stem)
                .collect::<Result<Vec<_>, _>>()?;
            options.stems = Some(stems);
        }
        if let Some(stem) = get("two_stems") {
            options.two_stems = Some(check_stem(stem)?);
        }
        if let Some(format) = get("format") {
            options.output.format = AudioFormat::from_str(format)?;
        }
        if let Some(bitrate) = get("bitrate") {
            options.output.mp3 = parse_bitrate(bitrate)?;
        }
        if let Some(sample_format) = get("wav_format") {
            options.output.sample_format = SampleFormat::from_str(sample_format)?;
        }
        if let Some(url) = get("callback_url") {
            state
                .inner
                .callbacks
                .check_url(url)
                .map_err(ApiError::invalid_option)?;
            options.callback_url = Some(url.to_owned());
        }
        options.validate()?;
        Ok(options)
    }
}

/// `320` (CBR kbit/s, optionally `320k`) or `v0`…`v9` (LAME VBR quality).
fn parse_bitrate(text: &str) -> Result<Mp3Mode, ApiError> {
    let lower = text.to_ascii_lowercase();
    let parsed = if let Some(quality) = lower.strip_prefix('v') {
        quality.parse::<u8>().ok().map(Mp3Mode::Vbr)
    } else {
        lower
            .strip_suffix('k')
            .unwrap_or(&lower)
            .parse::<u16>()
            .ok()
            .map(Mp3Mode::Cbr)
    };
    parsed.ok_or_else(|| {
        ApiError::invalid_option(format!(
            "bitrate must be kbit/s (e.g. 320) or a VBR quality v0..v9, got {text:?}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitrates() {
        assert_eq!(parse_bitrate("320").unwrap(), Mp3Mode::Cbr(320));
        assert_eq!(parse_bitrate("192k").unwrap(), Mp3Mode::Cbr(192));
        assert_eq!(parse_bitrate("V2").unwrap(), Mp3Mode::Vbr(2));
        assert!(parse_bitrate("fast").is_err());
    }

    #[test]
    fn stem_names_are_plain() {
        assert!(valid_stem_name("no_vocals"));
        for bad in ["", "../x", "Vocals", "a b", "a.wav"] {
            assert!(!valid_stem_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn unknown_and_repeated_parameters_are_refused() {
        assert!(OptionInput::from_pairs(vec![("modle".into(), "x".into())]).is_err());
        assert!(
            OptionInput::from_pairs(vec![
                ("model".into(), "x".into()),
                ("model".into(), "y".into())
            ])
            .is_err()
        );
    }
}
