//! PCM as every stage sees it, and the f32 WAV that carries it between stages
//! (`work/{job}/mix.wav`, `work/{job}/stems/{stem}.wav`).

use std::io::{Read, Seek, Write};

use serde::{Deserialize, Serialize};

/// Planar f32 PCM: `channels[c][i]` is sample `i` of channel `c`. Planar because the
/// resampler and the separation models both work per channel.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pcm {
    pub sample_rate: u32,
    pub channels: Vec<Vec<f32>>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AudioError {
    #[error("PCM has no channels")]
    NoChannels,
    #[error("PCM channels differ in length ({0} vs {1} frames)")]
    RaggedChannels(usize, usize),
    #[error("sample rate must be positive")]
    ZeroSampleRate,
    #[error("intermediate WAV: {0}")]
    Wav(#[from] hound::Error),
    #[error("intermediate WAV must be 32-bit float, found {bits}-bit {format}")]
    NotFloatWav { bits: u16, format: &'static str },
}

impl Pcm {
    /// Builds PCM after checking the invariants every consumer relies on.
    pub fn new(sample_rate: u32, channels: Vec<Vec<f32>>) -> Result<Self, AudioError> {
        if sample_rate == 0 {
            return Err(AudioError::ZeroSampleRate);
        }
        let first = channels.first().ok_or(AudioError::NoChannels)?.len();
        if let Some(other) = channels.iter().map(Vec::len).find(|&n| n != first) {
            return Err(AudioError::RaggedChannels(first, other));
        }
        Ok(Self {
            sample_rate,
            channels,
        })
    }

    /// Frames (samples per channel).
    pub fn frames(&self) -> usize {
        self.channels.first().map_or(0, Vec::len)
    }

    pub fn num_channels(&self) -> usize {
        self.channels.len()
    }

    pub fn duration_secs(&self) -> f64 {
        if self.sample_rate == 0 {
            return 0.0;
        }
        self.frames() as f64 / f64::from(self.sample_rate)
    }

    /// Largest absolute sample value over all channels.
    pub fn peak(&self) -> f32 {
        self.channels
            .iter()
            .flatten()
            .fold(0.0_f32, |peak, s| peak.max(s.abs()))
    }
}

/// What the decoder learned about the source; kept in the job record so that encode can
/// restore rate and channels on request and tag the stems.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SourceInfo {
    pub sample_rate: u32,
    pub channels: u16,
    pub duration_secs: f64,
    /// Container / codec as probed, e.g. "mp3", "flac".
    #[serde(default)]
    pub codec: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub artist: Option<String>,
    #[serde(default)]
    pub album: Option<String>,
    /// Corrupt packets skipped while decoding (as ffmpeg does), reported to the user.
    #[serde(default)]
    pub skipped_packets: u64,
}

/// Writes `pcm` as 32-bit float WAV (bit-exact: the interchange between stages must not lose anything).
pub fn write_wav_f32<W: Write + Seek>(pcm: &Pcm, writer: W) -> Result<(), AudioError> {
    let channels = u16::try_from(pcm.num_channels()).map_err(|_| AudioError::NoChannels)?;
    let spec = hound::WavSpec {
        channels,
        sample_rate: pcm.sample_rate,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut wav = hound::WavWriter::new(writer, spec)?;
    for i in 0..pcm.frames() {
        for channel in &pcm.channels {
            wav.write_sample(channel[i])?;
        }
    }
    wav.finalize()?;
    Ok(())
}

/// Reads a 32-bit float WAV written by [`write_wav_f32`].
pub fn read_wav_f32<R: Read>(reader: R) -> Result<Pcm, AudioError> {
    let mut wav = hound::WavReader::new(reader)?;
    let spec = wav.spec();
    if spec.sample_format != hound::SampleFormat::Float || spec.bits_per_sample != 32 {
        return Err(AudioError::NotFloatWav {
            bits: spec.bits_per_sample,
            format: match spec.sample_format {
                hound::SampleFormat::Float => "float",
                hound::SampleFormat::Int => "integer",
            },
        });
    }
    let n_channels = usize::from(spec.channels.max(1));
    let frames = wav.duration() as usize;
    let mut channels = vec![Vec::with_capacity(frames); n_channels];
    for (i, sample) in wav.samples::<f32>().enumerate() {
        channels[i % n_channels].push(sample?);
    }
    Pcm::new(spec.sample_rate, channels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_wav_round_trip_is_bit_exact() {
        let pcm = Pcm::new(
            44_100,
            vec![
                vec![0.5, -0.25, 1.5, f32::MIN_POSITIVE],
                vec![0.0, 1e-9, -2.0, 0.125],
            ],
        )
        .expect("valid pcm");
        let mut bytes = std::io::Cursor::new(Vec::new());
        write_wav_f32(&pcm, &mut bytes).expect("write");
        let back = read_wav_f32(std::io::Cursor::new(bytes.into_inner())).expect("read");
        assert_eq!(back, pcm);
    }

    #[test]
    fn ragged_channels_are_refused() {
        let err = Pcm::new(44_100, vec![vec![0.0; 3], vec![0.0; 2]]).unwrap_err();
        assert!(matches!(err, AudioError::RaggedChannels(3, 2)));
    }
}
