//! encode: stems → WAV (16/24-bit, 32-bit float), FLAC (16/24-bit, pure Rust) or MP3 (LAME,
//! CBR 128–320 kbit/s or VBR), with demucs' clip modes and tags (DESIGN.md "The house").
//!
//! The pure core is [`encode`] (one stem to one writer) and [`prepare`] (clip handling over
//! all stems of a song, called once before encoding them); [`encode_stems`] runs both for a
//! song with one thread per stem; [`EncodeStage`] is the worker-loop adapter.

use std::io::{Seek, Write};

use pipeline::Pcm;
use pipeline::job::{AudioFormat, OutputFormat};

mod clip;
mod error;
mod flac;
mod layout;
mod mp3;
mod options;
mod song;
mod stage;
mod tags;
mod wav;

pub use clip::{
    CLAMP_LIMIT, RESCALE_HEADROOM, prepare, quantize_i16, quantize_i24, rescale_factor,
};
pub use error::EncodeError;
pub use layout::{downmix_to_mono, to_output_layout};
pub use options::{MP3_CBR_KBPS, MP3_VBR_WORST, describe, output_can_clip, validate};
pub use song::{EncodedStem, Song, encode_stem_files, encode_stems};
pub use stage::EncodeStage;
pub use tags::Tags;

/// Encodes one stem as `format` asks, streaming into `writer` (which must be seekable: each
/// format's header is patched once the length is known).
///
/// The samples are written as they are: call [`prepare`] over all stems of the song first
/// (clip handling), and [`to_output_layout`] for `--output-rate source`; `format.rate` is not
/// looked at here. Integer conversion saturates, so unprepared samples clip, never wrap.
pub fn encode<W: Write + Seek>(
    pcm: &Pcm,
    format: &OutputFormat,
    tags: &Tags,
    writer: W,
) -> Result<(), EncodeError> {
    options::validate(format)?;
    check_pcm(pcm)?;
    match format.format {
        AudioFormat::Wav => wav::write(pcm, format.sample_format, tags, writer),
        AudioFormat::Flac => flac::write(pcm, format.sample_format, tags, writer),
        AudioFormat::Mp3 => mp3::write(pcm, format.mp3, tags, writer),
    }
}

/// `Pcm`'s fields are public, so its invariants are checked again before any encoder sees it.
fn check_pcm(pcm: &Pcm) -> Result<(), EncodeError> {
    if pcm.sample_rate == 0 {
        return Err(EncodeError::InvalidPcm("sample rate is 0".into()));
    }
    let Some(first) = pcm.channels.first() else {
        return Err(EncodeError::InvalidPcm("no channels".into()));
    };
    if let Some(other) = pcm.channels.iter().find(|c| c.len() != first.len()) {
        return Err(EncodeError::InvalidPcm(format!(
            "channels differ in length ({} vs {} frames)",
            first.len(),
            other.len()
        )));
    }
    Ok(())
}
