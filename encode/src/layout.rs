//! `--output-rate source`: stems go back to the source's sample rate and, for mono sources,
//! to one channel.

use audio::format::OutputRate;
use audio::{Pcm, SourceInfo};

use crate::error::EncodeError;

/// Brings a stem (at the model's rate, stereo) to the layout the user asked for.
///
/// With [`OutputRate::Source`]: a mono source gives mono stems (the average of the stem's
/// channels); a source with more channels than the stem keeps the stem's channels (a stem
/// cannot be upmixed meaningfully); the sample rate becomes the source's, through
/// `audio::resample` (band-limited sinc).
pub fn to_output_layout(
    pcm: Pcm,
    rate: OutputRate,
    source: Option<&SourceInfo>,
) -> Result<Pcm, EncodeError> {
    match rate {
        OutputRate::Model => Ok(pcm),
        OutputRate::Source => {
            let source = source
                .filter(|s| s.sample_rate > 0 && s.channels > 0)
                .ok_or(EncodeError::MissingSourceInfo)?;
            let pcm = if source.channels == 1 && pcm.num_channels() > 1 {
                downmix_to_mono(&pcm)
            } else {
                pcm
            };
            if pcm.sample_rate == source.sample_rate {
                return Ok(pcm);
            }
            audio::resample::resample(&pcm, source.sample_rate)
                .map_err(|err| EncodeError::Resample(err.to_string()))
        }
    }
}

/// The average of all channels.
pub fn downmix_to_mono(pcm: &Pcm) -> Pcm {
    let scale = 1.0 / pcm.num_channels().max(1) as f32;
    let mono = (0..pcm.frames())
        .map(|i| pcm.channels.iter().map(|c| c[i]).sum::<f32>() * scale)
        .collect();
    Pcm {
        sample_rate: pcm.sample_rate,
        channels: vec![mono],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stereo(rate: u32, frames: usize) -> Pcm {
        let left = (0..frames).map(|i| (i as f32 * 0.01).sin() * 0.5).collect();
        let right = (0..frames)
            .map(|i| (i as f32 * 0.02).cos() * 0.25)
            .collect();
        Pcm::new(rate, vec![left, right]).expect("valid pcm")
    }

    #[test]
    fn model_rate_changes_nothing() {
        let pcm = stereo(44_100, 100);
        let out = to_output_layout(pcm.clone(), OutputRate::Model, None).expect("layout");
        assert_eq!(out, pcm);
    }

    #[test]
    fn mono_source_gives_the_channel_average() {
        let pcm = stereo(44_100, 100);
        let source = SourceInfo {
            sample_rate: 44_100,
            channels: 1,
            ..SourceInfo::default()
        };
        let out = to_output_layout(pcm.clone(), OutputRate::Source, Some(&source)).expect("ok");
        assert_eq!(out.num_channels(), 1);
        for i in 0..100 {
            let expected = (pcm.channels[0][i] + pcm.channels[1][i]) / 2.0;
            assert!((out.channels[0][i] - expected).abs() < 1e-7);
        }
    }

    #[test]
    fn source_rate_is_restored() {
        let pcm = stereo(44_100, 44_100);
        let source = SourceInfo {
            sample_rate: 48_000,
            channels: 2,
            ..SourceInfo::default()
        };
        let out = to_output_layout(pcm, OutputRate::Source, Some(&source)).expect("ok");
        assert_eq!(out.sample_rate, 48_000);
        assert_eq!(out.num_channels(), 2);
        assert!(
            (out.frames() as i64 - 48_000).abs() <= 1,
            "{}",
            out.frames()
        );
    }

    #[test]
    fn missing_source_info_is_an_error() {
        let err = to_output_layout(stereo(44_100, 10), OutputRate::Source, None).unwrap_err();
        assert!(matches!(err, EncodeError::MissingSourceInfo));
    }
}
