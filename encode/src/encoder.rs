//! One stem to one writer, in the format asked for: the core every other entry point calls.

use std::io::{Seek, Write};

use audio::Pcm;
use audio::format::{AudioFormat, OutputFormat};

use crate::error::EncodeError;
use crate::tags::Tags;
use crate::{flac, mp3, options, wav};

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
