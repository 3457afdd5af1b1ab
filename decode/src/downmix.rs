//! Many channels to stereo.
//!
//! The matrix follows ITU-R BS.775 (and ffmpeg's default `-ac 2` downmix):
//!
//! ```text
//! L = FL + 0.707·FC + 0.707·(BL or SL) + 0.707·FLC + 0.5·BC
//! R = FR + 0.707·FC + 0.707·(BR or SR) + 0.707·FRC + 0.5·BC
//! ```
//!
//! with the LFE channel dropped (it duplicates low end the main channels already carry). Each
//! row is then divided by the largest row sum of coefficients (for 5.1: 1 + 0.707 + 0.707 =
//! 2.414), so that no input, however loud, can clip in the stereo mix. Channels the table does
//! not know go equally to both sides at 0.5 (normalised like the rest). Mono is duplicated
//! (not attenuated); stereo passes through unchanged.

use symphonia::core::audio::Channels;

const MINUS_3_DB: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// Coefficients (to left, to right) of each input channel, in the decoder's channel order.
#[derive(Debug, Clone, PartialEq)]
pub struct StereoMatrix {
    gains: Vec<(f32, f32)>,
}

impl StereoMatrix {
    /// The matrix for a decoder's channel layout with `count` channels.
    pub fn new(layout: Channels, count: usize) -> Self {
        let mut gains: Vec<(f32, f32)> = layout.iter().map(channel_gains).collect();
        // A layout that does not name every channel: the unnamed ones go to both sides.
        gains.resize(count, (0.5, 0.5));
        gains.truncate(count);
        let left: f32 = gains.iter().map(|g| g.0).sum();
        let right: f32 = gains.iter().map(|g| g.1).sum();
        let scale = left.max(right);
        if scale > 1.0 {
            for gain in &mut gains {
                gain.0 /= scale;
                gain.1 /= scale;
            }
        }
        Self { gains }
    }

    pub fn gains(&self) -> &[(f32, f32)] {
        &self.gains
    }

    /// Mixes planar `input` (one slice per channel, equal lengths) into `left` and `right`
    /// (cleared first).
    pub fn apply(
        &self,
        input: &[Vec<f32>],
        frames: usize,
        left: &mut Vec<f32>,
        right: &mut Vec<f32>,
    ) {
        left.clear();
        right.clear();
        left.resize(frames, 0.0);
        right.resize(frames, 0.0);
        for (channel, &(to_left, to_right)) in input.iter().zip(&self.gains) {
            for ((l, r), &s) in left
                .iter_mut()
                .zip(right.iter_mut())
                .zip(&channel[..frames])
            {
                *l += to_left * s;
                *r += to_right * s;
            }
        }
    }
}

fn channel_gains(channel: Channels) -> (f32, f32) {
    match channel {
        Channels::FRONT_LEFT => (1.0, 0.0),
        Channels::FRONT_RIGHT => (0.0, 1.0),
        Channels::FRONT_CENTRE => (MINUS_3_DB, MINUS_3_DB),
        Channels::LFE1 | Channels::LFE2 => (0.0, 0.0),
        Channels::REAR_LEFT
        | Channels::SIDE_LEFT
        | Channels::FRONT_LEFT_CENTRE
        | Channels::FRONT_LEFT_WIDE
        | Channels::FRONT_LEFT_HIGH
        | Channels::TOP_FRONT_LEFT
        | Channels::TOP_REAR_LEFT
        | Channels::REAR_LEFT_CENTRE => (MINUS_3_DB, 0.0),
        Channels::REAR_RIGHT
        | Channels::SIDE_RIGHT
        | Channels::FRONT_RIGHT_CENTRE
        | Channels::FRONT_RIGHT_WIDE
        | Channels::FRONT_RIGHT_HIGH
        | Channels::TOP_FRONT_RIGHT
        | Channels::TOP_REAR_RIGHT
        | Channels::REAR_RIGHT_CENTRE => (0.0, MINUS_3_DB),
        // Rear / top centre: -3 dB into the centre, then -3 dB to each side.
        _ => (0.5, 0.5),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn five_one() -> Channels {
        Channels::FRONT_LEFT
            | Channels::FRONT_RIGHT
            | Channels::FRONT_CENTRE
            | Channels::LFE1
            | Channels::REAR_LEFT
            | Channels::REAR_RIGHT
    }

    #[test]
    fn five_one_follows_itu_and_cannot_clip() {
        let matrix = StereoMatrix::new(five_one(), 6);
        let norm = 1.0 + 2.0 * MINUS_3_DB;
        let expected = [
            (1.0 / norm, 0.0),
            (0.0, 1.0 / norm),
            (MINUS_3_DB / norm, MINUS_3_DB / norm),
            (0.0, 0.0),
            (MINUS_3_DB / norm, 0.0),
            (0.0, MINUS_3_DB / norm),
        ];
        for (got, want) in matrix.gains().iter().zip(expected) {
            assert!(
                (got.0 - want.0).abs() < 1e-6 && (got.1 - want.1).abs() < 1e-6,
                "{got:?} vs {want:?}"
            );
        }
        // Full scale on every channel at once stays within [-1, 1].
        let input = vec![vec![1.0_f32; 4]; 6];
        let (mut left, mut right) = (Vec::new(), Vec::new());
        matrix.apply(&input, 4, &mut left, &mut right);
        assert!(left.iter().chain(&right).all(|s| s.abs() <= 1.0 + 1e-6));
        assert!(
            (left[0] - 1.0).abs() < 1e-6,
            "a full-scale 5.1 mix should reach full scale"
        );
    }

    #[test]
    fn unnamed_channels_go_to_both_sides() {
        let matrix = StereoMatrix::new(Channels::empty(), 4);
        assert_eq!(matrix.gains().len(), 4);
        assert!(matrix.gains().iter().all(|&(l, r)| l == r && l > 0.0));
    }
}
