//! How one song is separated, and the listener told about it while it runs.

use crate::error::SeparateError;

/// Told about progress while a song is separated; asked between chunks whether to stop.
pub trait Listener {
    /// `done` of `total` units (chunks / batches) are finished.
    fn progress(&mut self, done: usize, total: usize);
    /// Checked between units: `true` stops the run with [`SeparateError::Cancelled`].
    fn cancelled(&self) -> bool;
}

/// A listener that ignores progress and never cancels.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoListener;

impl Listener for NoListener {
    fn progress(&mut self, _done: usize, _total: usize) {}
    fn cancelled(&self) -> bool {
        false
    }
}

/// How one song is separated.
#[derive(Debug, Clone, PartialEq)]
pub struct SeparateOptions {
    /// Seconds per chunk; `None`: the model's own segment. (Chunked families only.)
    pub segment: Option<f32>,
    /// Fraction of a chunk that overlaps the next, in `[0, 1)`. (Chunked families only.)
    pub overlap: f32,
    /// Random time shifts averaged (demucs `--shifts`); 0 = none.
    pub shifts: u32,
    /// Seed of the shifts' random offsets.
    pub seed: u64,
    /// Stems to return (`None`: all); names after `two_stems` renaming.
    pub stems: Option<Vec<String>>,
    /// Return this stem and the sum of the others as `no_<stem>` (demucs `--two-stems`).
    pub two_stems: Option<String>,
}

impl Default for SeparateOptions {
    fn default() -> Self {
        Self {
            segment: None,
            overlap: 0.25,
            shifts: 0,
            seed: 0,
            stems: None,
            two_stems: None,
        }
    }
}

impl SeparateOptions {
    pub(crate) fn validate(&self) -> Result<(), SeparateError> {
        if let Some(segment) = self.segment
            && !(segment.is_finite() && segment > 0.0)
        {
            return Err(SeparateError::InvalidOption(format!(
                "segment must be a positive number of seconds, got {segment}"
            )));
        }
        if !(self.overlap.is_finite() && (0.0..1.0).contains(&self.overlap)) {
            return Err(SeparateError::InvalidOption(format!(
                "overlap must be in [0, 1), got {}",
                self.overlap
            )));
        }
        if self.shifts > 20 {
            return Err(SeparateError::InvalidOption(format!(
                "shifts must be at most 20, got {}",
                self.shifts
            )));
        }
        Ok(())
    }
}
