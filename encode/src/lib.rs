//! encode: stems → WAV (16/24-bit, 32-bit float), FLAC (16/24-bit, pure Rust) or MP3 (LAME,
//! CBR 128–320 kbit/s or VBR), with demucs' clip modes and tags (DESIGN.md "The house").
//!
//! The pure core is [`encode`] (one stem to one writer) and [`prepare`] (clip handling over
//! all stems of a song, called once before encoding them); [`encode_stems`] runs both for a
//! song with one thread per stem; `EncodeStage` (feature `stage`, on by default) is the
//! worker-loop adapter.

mod clip;
mod encoder;
mod error;
mod flac;
mod layout;
mod mp3;
mod options;
mod song;
#[cfg(feature = "stage")]
mod stage;
mod tags;
mod wav;

pub use clip::{
    CLAMP_LIMIT, RESCALE_HEADROOM, prepare, quantize_i16, quantize_i24, rescale_factor,
};
pub use encoder::encode;
pub use error::EncodeError;
pub use layout::{downmix_to_mono, to_output_layout};
pub use options::{MP3_CBR_KBPS, MP3_VBR_WORST, describe, output_can_clip, validate};
pub use song::{EncodedStem, Song, encode_stem_files, encode_stems};
#[cfg(feature = "stage")]
pub use stage::EncodeStage;
pub use tags::Tags;
