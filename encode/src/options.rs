//! Validation of the requested output before any work is done, so a bad request fails at once
//! with `invalid_option` instead of after a minute of encoding.

use audio::format::{AudioFormat, ClipMode, Mp3Mode, OutputFormat, SampleFormat};

use crate::error::EncodeError;

/// MP3 constant bit rates offered (kbit/s), the list submission validates against.
pub use audio::format::MP3_CBR_KBPS;

/// Best (0) … worst (9) LAME VBR quality.
pub const MP3_VBR_WORST: u8 = 9;

/// Whether samples are stored as integers (or lossy-coded), so values beyond ±1 would clip.
pub fn output_can_clip(format: &OutputFormat) -> bool {
    match format.format {
        AudioFormat::Wav => format.sample_format != SampleFormat::F32,
        AudioFormat::Flac | AudioFormat::Mp3 => true,
    }
}

/// Checks that `format` names something this crate can write.
pub fn validate(format: &OutputFormat) -> Result<(), EncodeError> {
    match format.format {
        AudioFormat::Wav => {}
        AudioFormat::Flac => {
            if format.sample_format == SampleFormat::F32 {
                return Err(EncodeError::invalid_option(
                    "FLAC stores integer samples only: choose 16- or 24-bit (f32 is WAV only)",
                ));
            }
        }
        AudioFormat::Mp3 => {
            // MP3 has no sample format of its own; LAME takes float input. Asking for f32
            // explicitly is a contradiction the user should hear about.
            if format.sample_format == SampleFormat::F32 {
                return Err(EncodeError::invalid_option(
                    "MP3 has no 32-bit float sample format (f32 is WAV only)",
                ));
            }
            match format.mp3 {
                Mp3Mode::Cbr(kbps) if !MP3_CBR_KBPS.contains(&kbps) => {
                    return Err(EncodeError::invalid_option(format!(
                        "MP3 bit rate {kbps} kbit/s is not offered (expected one of {MP3_CBR_KBPS:?})"
                    )));
                }
                Mp3Mode::Vbr(quality) if quality > MP3_VBR_WORST => {
                    return Err(EncodeError::invalid_option(format!(
                        "MP3 VBR quality {quality} is out of range (expected 0 = best … {MP3_VBR_WORST})"
                    )));
                }
                Mp3Mode::Cbr(_) | Mp3Mode::Vbr(_) => {}
            }
        }
    }
    if format.clip == ClipMode::None && output_can_clip(format) {
        return Err(EncodeError::invalid_option(format!(
            "clip mode `none` is only allowed for 32-bit float WAV: {} would clip \
             (use `rescale` or `clamp`)",
            describe(format)
        )));
    }
    Ok(())
}

/// "16-bit FLAC", "MP3", … for messages.
pub fn describe(format: &OutputFormat) -> String {
    let bits = match format.sample_format {
        SampleFormat::I16 => "16-bit",
        SampleFormat::I24 => "24-bit",
        SampleFormat::F32 => "32-bit float",
    };
    match format.format {
        AudioFormat::Wav => format!("{bits} WAV"),
        AudioFormat::Flac => format!("{bits} FLAC"),
        AudioFormat::Mp3 => "MP3".to_owned(),
    }
}
