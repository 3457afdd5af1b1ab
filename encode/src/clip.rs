//! Clip handling as demucs offers it (`demucs.audio.prevent_clip`), applied to all the stems
//! of a song at once, and the float → integer quantisation every integer writer shares.

use audio::Pcm;
use audio::format::{ClipMode, OutputFormat};

use crate::error::EncodeError;
use crate::options;

/// demucs rescales to a peak of 1/1.01, not 1.0, so that lossy coding has a little headroom.
pub const RESCALE_HEADROOM: f32 = 1.01;
/// demucs clamps to ±0.99 for the same reason.
pub const CLAMP_LIMIT: f32 = 0.99;

/// Readies the stems of one song for encoding in `format`; call once per song, before
/// [`crate::encode`] on each stem.
///
/// - `rescale` (default): when any stem would clip, every stem is scaled by the same factor,
///   so the stems still add up to the (equally scaled) mix. Returns that factor (1.0 when
///   nothing would clip).
/// - `clamp`: each sample is limited to ±[`CLAMP_LIMIT`]; returns 1.0.
/// - `none`: nothing changes (float WAV only; refused for other outputs); returns 1.0.
///
/// The output options are validated first, so a bad request fails before any work.
pub fn prepare(stems: &mut [(String, Pcm)], format: &OutputFormat) -> Result<f32, EncodeError> {
    options::validate(format)?;
    match format.clip {
        ClipMode::None => Ok(1.0),
        ClipMode::Clamp => {
            for (_, pcm) in stems.iter_mut() {
                for sample in pcm.channels.iter_mut().flatten() {
                    *sample = sample.clamp(-CLAMP_LIMIT, CLAMP_LIMIT);
                }
            }
            Ok(1.0)
        }
        ClipMode::Rescale => {
            let peak = stems
                .iter()
                .map(|(_, pcm)| pcm.peak())
                .fold(0.0_f32, f32::max);
            let scale = rescale_factor(peak);
            if scale < 1.0 {
                tracing::debug!(peak, scale, "rescaling stems together to avoid clipping");
                for (_, pcm) in stems.iter_mut() {
                    for sample in pcm.channels.iter_mut().flatten() {
                        *sample *= scale;
                    }
                }
            }
            Ok(scale)
        }
    }
}

/// The factor demucs' `rescale` applies for a given peak: `1 / max(1.01 · peak, 1)`.
pub fn rescale_factor(peak: f32) -> f32 {
    if !peak.is_finite() {
        // A non-finite sample cannot be rescaled into range; leave scaling alone and let
        // quantisation saturate it rather than silence the whole song.
        return 1.0;
    }
    1.0 / (RESCALE_HEADROOM * peak).max(1.0)
}

/// Adding then subtracting 1.5 · 2^52 rounds an f64 of magnitude below 2^51 to the nearest
/// integer, ties to even, in two instructions; `f64::round` is a libm call on baseline
/// x86-64 and cost as much as FLAC's MD5.
const ROUNDING_MAGIC: f64 = 6_755_399_441_055_744.0;

/// Round to nearest (ties to even, as ffmpeg's `lrintf`), saturating to `min..=max`;
/// NaN gives 0.
#[inline]
fn quantize(sample: f32, full_scale: f64, min: f64, max: f64) -> i32 {
    let scaled = (f64::from(sample) * full_scale).clamp(min, max);
    if scaled.is_nan() {
        return 0;
    }
    ((scaled + ROUNDING_MAGIC) - ROUNDING_MAGIC) as i32
}

/// Float sample → 16-bit integer: full scale is 32768 (the inverse of what decoders such as
/// ffmpeg do), rounded to nearest (ties to even), saturating (NaN → 0).
#[inline]
pub fn quantize_i16(sample: f32) -> i16 {
    quantize(sample, 32_768.0, -32_768.0, 32_767.0) as i16
}

/// Float sample → 24-bit integer (in an i32): full scale 2^23, rounded to nearest (ties to
/// even), saturating (NaN → 0).
#[inline]
pub fn quantize_i24(sample: f32) -> i32 {
    quantize(sample, 8_388_608.0, -8_388_608.0, 8_388_607.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use audio::format::{AudioFormat, SampleFormat};

    fn song(values: &[(f32, f32)]) -> Vec<(String, Pcm)> {
        values
            .iter()
            .enumerate()
            .map(|(i, &(a, b))| {
                let pcm = Pcm::new(44_100, vec![vec![a, b], vec![b, a]]).expect("valid pcm");
                (format!("stem{i}"), pcm)
            })
            .collect()
    }

    #[test]
    fn rescale_scales_every_stem_by_one_factor() {
        let mut stems = song(&[(0.5, -1.8), (0.25, 0.1)]);
        let format = OutputFormat::default();
        let scale = prepare(&mut stems, &format).expect("prepare");
        assert!((scale - 1.0 / (1.01 * 1.8)).abs() < 1e-6, "scale {scale}");
        assert!((stems[0].1.channels[0][1] + 1.0 / 1.01).abs() < 1e-6);
        assert!((stems[1].1.channels[0][0] - 0.25 * scale).abs() < 1e-7);
    }

    #[test]
    fn rescale_leaves_quiet_songs_alone() {
        let mut stems = song(&[(0.5, -0.9), (0.25, 0.1)]);
        let before = stems.clone();
        let scale = prepare(&mut stems, &OutputFormat::default()).expect("prepare");
        assert_eq!(scale, 1.0);
        assert_eq!(stems, before);
    }

    #[test]
    fn clamp_limits_each_sample() {
        let mut stems = song(&[(1.5, -3.0), (0.25, 0.1)]);
        let format = OutputFormat {
            clip: ClipMode::Clamp,
            ..OutputFormat::default()
        };
        prepare(&mut stems, &format).expect("prepare");
        assert_eq!(stems[0].1.channels[0], vec![CLAMP_LIMIT, -CLAMP_LIMIT]);
        assert_eq!(stems[1].1.channels[0], vec![0.25, 0.1]);
    }

    #[test]
    fn none_is_refused_for_integer_and_lossy_output() {
        for (format, sample_format) in [
            (AudioFormat::Wav, SampleFormat::I16),
            (AudioFormat::Wav, SampleFormat::I24),
            (AudioFormat::Flac, SampleFormat::I16),
            (AudioFormat::Mp3, SampleFormat::I16),
        ] {
            let format = OutputFormat {
                format,
                sample_format,
                clip: ClipMode::None,
                ..OutputFormat::default()
            };
            let err = prepare(&mut song(&[(2.0, 0.0)]), &format).unwrap_err();
            assert_eq!(err.code(), audio::ErrorCode::InvalidOption, "{err}");
        }
    }

    #[test]
    fn quantisation_rounds_and_saturates() {
        assert_eq!(quantize_i16(0.0), 0);
        assert_eq!(quantize_i16(1.0), i16::MAX);
        assert_eq!(quantize_i16(-1.0), i16::MIN);
        assert_eq!(quantize_i16(-7.0), i16::MIN);
        assert_eq!(quantize_i16(f32::NAN), 0);
        assert_eq!(quantize_i16(1.4 / 32_768.0), 1);
        assert_eq!(quantize_i16(1.6 / 32_768.0), 2);
        assert_eq!(quantize_i16(-1.6 / 32_768.0), -2);
        assert_eq!(quantize_i16(2.5 / 32_768.0), 2, "ties to even");
        assert_eq!(quantize_i16(3.5 / 32_768.0), 4, "ties to even");
        assert_eq!(quantize_i24(-2.5 / 8_388_608.0), -2, "ties to even");
        assert_eq!(quantize_i24(1.0), 8_388_607);
        assert_eq!(quantize_i24(-0.5), -4_194_304);
    }
}
