//! separate: the model runtime (DESIGN.md "Models"). A [`Separator`] is a loaded model —
//! a manifest plus its ONNX graphs run through ONNX Runtime — that turns a mix into stems:
//! `Separator::run(&Pcm, &SeparateOptions, &mut dyn Listener)`.
//!
//! Families: `mask` (Spleeter, MDX-Net: STFT → network → mask → iSTFT, [`mask`]) and `demucs`.
//! Stem selection (`stems`, `two_stems`) is done here, the same for every family.
//! `SeparateStage` (feature `stage`, on by default) plugs the core into the pipeline's worker
//! loop; the core itself knows nothing of the service.

pub mod batch;
pub mod catalogue;
pub mod demucs;
mod error;
pub mod manifest;
pub mod mask;
mod options;
pub mod runtime;
mod separator;
#[cfg(feature = "stage")]
mod stage;
pub mod stft;

pub use error::SeparateError;
pub use manifest::{FamilyKind, Manifest, ManifestError, MaskSpec, ModelFile};
pub use mask::MaskModel;
pub use options::{Listener, NoListener, SeparateOptions};
pub use runtime::{Device, OnnxModel, RuntimeError, RuntimeOptions, TensorData};
pub use separator::{Separator, installed_models, resolve_manifest, select_stems};
#[cfg(feature = "stage")]
pub use stage::SeparateStage;
pub use stft::{Complex32, OverlapAdd, PadMode, Spectrogram, Stft, StftConfig, StftError};
