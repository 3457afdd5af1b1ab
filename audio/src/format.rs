//! How stems are written: container / codec, sample encoding, MP3 bit rate, clipping and
//! output rate. Part of a job's options, and the encoder's input.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{CodedError, ErrorCode};

/// Container / codec of the stems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AudioFormat {
    #[default]
    Wav,
    Flac,
    Mp3,
}

impl AudioFormat {
    pub const fn extension(self) -> &'static str {
        match self {
            Self::Wav => "wav",
            Self::Flac => "flac",
            Self::Mp3 => "mp3",
        }
    }

    pub const fn mime_type(self) -> &'static str {
        match self {
            Self::Wav => "audio/wav",
            Self::Flac => "audio/flac",
            Self::Mp3 => "audio/mpeg",
        }
    }
}

impl FromStr for AudioFormat {
    type Err = CodedError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "wav" => Ok(Self::Wav),
            "flac" => Ok(Self::Flac),
            "mp3" => Ok(Self::Mp3),
            _ => Err(CodedError::new(
                ErrorCode::InvalidOption,
                format!("unknown format {s:?} (expected wav, flac or mp3)"),
            )),
        }
    }
}

/// Sample encoding of WAV / FLAC stems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SampleFormat {
    #[default]
    I16,
    I24,
    /// 32-bit float: WAV only.
    F32,
}

impl FromStr for SampleFormat {
    type Err = CodedError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "16" | "i16" | "s16" | "int16" => Ok(Self::I16),
            "24" | "i24" | "s24" | "int24" => Ok(Self::I24),
            "f32" | "float" | "float32" | "32f" => Ok(Self::F32),
            _ => Err(CodedError::new(
                ErrorCode::InvalidOption,
                format!("unknown sample format {s:?} (expected i16, i24 or f32)"),
            )),
        }
    }
}

/// MP3 bit-rate control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode", content = "value")]
pub enum Mp3Mode {
    /// Constant bit rate in kbit/s (128–320).
    Cbr(u16),
    /// LAME VBR quality preset, 0 (best) … 9.
    Vbr(u8),
}

impl Default for Mp3Mode {
    /// 320 kbit/s CBR, as `demucs --mp3` does.
    fn default() -> Self {
        Self::Cbr(320)
    }
}

/// What to do when stems would clip on integer / lossy output (as demucs `--clip-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClipMode {
    /// Scale all stems of a song down together so none clips: they still sum to the (scaled) mix.
    #[default]
    Rescale,
    Clamp,
    /// Leave samples as they are; only allowed for float output.
    None,
}

impl FromStr for ClipMode {
    type Err = CodedError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "rescale" => Ok(Self::Rescale),
            "clamp" => Ok(Self::Clamp),
            "none" => Ok(Self::None),
            _ => Err(CodedError::new(
                ErrorCode::InvalidOption,
                format!("unknown clip mode {s:?} (expected rescale, clamp or none)"),
            )),
        }
    }
}

/// Sample rate of the stems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OutputRate {
    /// The model's rate (44.1 kHz for every shipped model).
    #[default]
    Model,
    /// Back to the source's rate and channel count.
    Source,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct OutputFormat {
    pub format: AudioFormat,
    #[serde(default)]
    pub sample_format: SampleFormat,
    #[serde(default)]
    pub mp3: Mp3Mode,
    #[serde(default)]
    pub clip: ClipMode,
    #[serde(default)]
    pub rate: OutputRate,
}

/// The constant bit rates LAME offers in the 128–320 kbit/s range.
pub const MP3_CBR_KBPS: [u16; 6] = [128, 160, 192, 224, 256, 320];
