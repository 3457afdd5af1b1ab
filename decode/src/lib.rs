//! Any common audio file → the PCM the models take: 44.1 kHz stereo f32.
//!
//! Formats (symphonia 0.5): MP3, FLAC, WAV (PCM integer and float), AIFF, OGG Vorbis,
//! AAC-LC and ALAC in MP4/M4A. Decoding streams packet by packet; mono is duplicated, more
//! channels are downmixed ([`downmix`]), other rates are resampled ([`audio::resample`]).
//! Corrupt packets are skipped and counted in [`audio::SourceInfo::skipped_packets`];
//! every other failure is a [`DecodeError`] with a stable code.
//!
//! ```no_run
//! let decoded = decode::decode_file(
//!     std::path::Path::new("song.mp3"),
//!     &decode::Limits::default(),
//!     decode::Target::Model,
//! )?;
//! assert_eq!(decoded.pcm.sample_rate, 44_100);
//! # Ok::<(), decode::DecodeError>(())
//! ```

pub mod decoder;
pub mod downmix;
pub mod error;
pub mod limits;
mod preflight;
#[cfg(feature = "stage")]
pub mod stage;
mod wav_repair;

pub use decoder::{
    DecodeOptions, Decoded, MODEL_SAMPLE_RATE, Target, decode, decode_file, decode_with,
};
pub use error::DecodeError;
pub use limits::Limits;
#[cfg(feature = "stage")]
pub use stage::DecodeStage;
