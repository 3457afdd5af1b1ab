//! What the service accepts. Every limit is checked as early as it can be: the byte size
//! before anything is read, channels and (header) duration before decoding, the decoded
//! duration while decoding.

/// Input limits. `Default` suits a song-separation service.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest accepted input file, in bytes.
    pub max_input_bytes: u64,
    /// Longest accepted audio, in seconds.
    pub max_duration_secs: f64,
    /// Shortest accepted audio, in seconds (shorter is no song and no use to a model).
    pub min_duration_secs: f64,
    /// Most channels accepted (8 = 7.1).
    pub max_channels: u16,
    /// Largest fraction of packets that may be corrupt (and skipped) before the whole file
    /// counts as corrupt.
    pub max_skipped_fraction: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_input_bytes: 512 * 1024 * 1024,
            max_duration_secs: 30.0 * 60.0,
            min_duration_secs: 0.5,
            max_channels: 8,
            max_skipped_fraction: 0.5,
        }
    }
}

impl Limits {
    /// No practical limit (tools and tests that decode trusted files).
    pub fn unlimited() -> Self {
        Self {
            max_input_bytes: u64::MAX,
            max_duration_secs: f64::INFINITY,
            min_duration_secs: 0.0,
            max_channels: u16::MAX,
            max_skipped_fraction: 0.5,
        }
    }
}
