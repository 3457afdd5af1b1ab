//! The job record — the system of record's unit — and the stages a job moves through.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use audio::{CodedError, ErrorCode, SourceInfo};
// The output format types live with the audio code (the encoder's input); a job carries them.
pub use audio::format::{
    AudioFormat, ClipMode, MP3_CBR_KBPS, Mp3Mode, OutputFormat, OutputRate, SampleFormat,
};

/// A job id: a UUID v4 in its hyphenated form. Kept a string newtype so backends can use it
/// in keys and subjects directly.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    pub fn new_random() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for JobId {
    type Err = CodedError;

    /// Only UUIDs are job ids: anything else (path traversal, key injection) is refused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s)
            .map(|u| Self(u.hyphenated().to_string()))
            .map_err(|_| CodedError::new(ErrorCode::NotFound, format!("no job {s:?}")))
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A queue-driven pipeline stage. Ingest is not one: it creates jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Decode,
    Separate,
    Encode,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Decode, Stage::Separate, Stage::Encode];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Decode => "decode",
            Self::Separate => "separate",
            Self::Encode => "encode",
        }
    }

    /// The stage that follows this one, `None` after the last.
    pub const fn next(self) -> Option<Stage> {
        match self {
            Self::Decode => Some(Self::Separate),
            Self::Separate => Some(Self::Encode),
            Self::Encode => None,
        }
    }

    /// The stage before this one, `None` for the first.
    pub fn previous(self) -> Option<Stage> {
        Self::ALL.into_iter().find(|s| s.next() == Some(self))
    }

    /// The job state while this stage works on it.
    pub const fn running_state(self) -> JobState {
        match self {
            Self::Decode => JobState::Decoding,
            Self::Separate => JobState::Separating,
            Self::Encode => JobState::Encoding,
        }
    }

    /// The state a job must be in for this stage to pick it up: the state the previous
    /// stage left it in, or this stage's own running state after a crash mid-stage.
    pub const fn entry_state(self) -> JobState {
        match self {
            Self::Decode => JobState::Queued,
            Self::Separate => JobState::Decoding,
            Self::Encode => JobState::Separating,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stage {
    type Err = CodedError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stage::ALL
            .into_iter()
            .find(|stage| stage.as_str() == s)
            .ok_or_else(|| {
                CodedError::new(
                    ErrorCode::InvalidOption,
                    format!("unknown stage {s:?} (expected decode, separate or encode)"),
                )
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Decoding,
    Separating,
    Encoding,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Decoding => "decoding",
            Self::Separating => "separating",
            Self::Encoding => "encoding",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the user asked for. Validated at submission; stages trust it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobOptions {
    /// Model name from the registry, or a path to a manifest.
    pub model: String,
    /// Stems to return; `None` = all the model's sources.
    #[serde(default)]
    pub stems: Option<Vec<String>>,
    /// Return this stem and the sum of all others ("no_<stem>"), like demucs `--two-stems`.
    #[serde(default)]
    pub two_stems: Option<String>,
    #[serde(default)]
    pub output: OutputFormat,
    /// Chunk length in seconds; `None` = the model's own.
    #[serde(default)]
    pub segment: Option<f32>,
    #[serde(default = "default_overlap")]
    pub overlap: f32,
    #[serde(default)]
    pub shifts: u32,
    #[serde(default)]
    pub callback_url: Option<String>,
    /// The handle a client of the legacy API chose for the song (`songhash`); its routes find
    /// the job by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub songhash: Option<String>,
    /// What a legacy client sent as `callback.data`: returned to it in the webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_data: Option<serde_json::Value>,
}

impl JobOptions {
    /// Checks what can be checked without the model (the model's stems are checked by
    /// separate, which knows them). Returns every problem, not just the first.
    pub fn validate(&self) -> Result<(), CodedError> {
        let mut problems = Vec::new();
        if self.model.trim().is_empty() {
            problems.push("model must not be empty".to_owned());
        }
        if !(0.0..1.0).contains(&self.overlap) || self.overlap.is_nan() {
            problems.push(format!("overlap must be in [0, 1), got {}", self.overlap));
        }
        if let Some(segment) = self.segment
            && (segment.is_nan() || segment <= 0.0)
        {
            problems.push(format!("segment must be positive seconds, got {segment}"));
        }
        if self.shifts > MAX_SHIFTS {
            problems.push(format!(
                "shifts must be at most {MAX_SHIFTS}, got {}",
                self.shifts
            ));
        }
        if self.stems.as_ref().is_some_and(Vec::is_empty) {
            problems.push("stems must name at least one stem".to_owned());
        }
        if self.stems.is_some() && self.two_stems.is_some() {
            problems.push("stems and two_stems cannot be combined".to_owned());
        }
        let output = &self.output;
        if output.sample_format == SampleFormat::F32 && output.format != AudioFormat::Wav {
            problems.push(format!(
                "32-bit float samples need wav output, not {}",
                output.format.extension()
            ));
        }
        if output.clip == ClipMode::None
            && !(output.format == AudioFormat::Wav && output.sample_format == SampleFormat::F32)
        {
            problems.push(
                "clip mode none is only allowed for 32-bit float wav output (anything else would wrap or distort)"
                    .to_owned(),
            );
        }
        match output.mp3 {
            Mp3Mode::Cbr(kbps) if !MP3_CBR_KBPS.contains(&kbps) => problems.push(format!(
                "mp3 bitrate must be one of {MP3_CBR_KBPS:?} kbit/s, got {kbps}"
            )),
            Mp3Mode::Vbr(quality) if quality > 9 => problems.push(format!(
                "mp3 VBR quality must be 0 (best) to 9, got {quality}"
            )),
            _ => {}
        }
        if let Some(url) = &self.callback_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            problems.push(format!("callback_url must be an http(s) URL, got {url:?}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(CodedError::new(
                ErrorCode::InvalidOption,
                problems.join("; "),
            ))
        }
    }
}

/// More shifts than this buys nothing measurable and multiplies the run time.
pub const MAX_SHIFTS: u32 = 20;

impl Default for JobOptions {
    fn default() -> Self {
        Self {
            model: String::new(),
            stems: None,
            two_stems: None,
            output: OutputFormat::default(),
            segment: None,
            overlap: default_overlap(),
            shifts: 0,
            callback_url: None,
            songhash: None,
            callback_data: None,
        }
    }
}

fn default_overlap() -> f32 {
    0.25
}

/// Start / finish of one stage of one job, in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StageTimes {
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub tenant: String,
    pub state: JobState,
    pub options: JobOptions,
    /// The name the user gave the input (file name), used for output names and tags.
    pub source_name: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    #[serde(default)]
    pub stages: BTreeMap<Stage, StageTimes>,
    /// Delivery attempt of the current stage (1 on first delivery).
    #[serde(default)]
    pub attempt: u32,
    #[serde(default)]
    pub error: Option<CodedError>,
    #[serde(default)]
    pub source: Option<SourceInfo>,
    /// Hex SHA-256 of the uploaded bytes.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Names of the stems separate produced, in the model's order (after `stems` /
    /// `two_stems` selection); each is stored at [`keys::stem`].
    #[serde(default)]
    pub stems: Vec<String>,
    /// Stem name → storage key of the finished (encoded) stem.
    #[serde(default)]
    pub results: BTreeMap<String, String>,
}

impl Job {
    pub fn new(
        tenant: impl Into<String>,
        source_name: impl Into<String>,
        options: JobOptions,
    ) -> Self {
        let now = now_ms();
        Self {
            id: JobId::new_random(),
            tenant: tenant.into(),
            state: JobState::Queued,
            options,
            source_name: source_name.into(),
            created_ms: now,
            updated_ms: now,
            stages: BTreeMap::new(),
            attempt: 0,
            error: None,
            source: None,
            sha256: None,
            stems: Vec::new(),
            results: BTreeMap::new(),
        }
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it, which only a broken host has).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Deterministic storage keys (DESIGN.md "The flow"): a retried stage overwrites, never duplicates.
pub mod keys {
    use super::JobId;

    pub fn source(job: &JobId) -> String {
        format!("uploads/{job}/source")
    }

    pub fn mix(job: &JobId) -> String {
        format!("work/{job}/mix.wav")
    }

    pub fn stem(job: &JobId, stem: &str) -> String {
        format!("work/{job}/stems/{stem}.wav")
    }

    pub fn result(job: &JobId, stem: &str, extension: &str) -> String {
        format!("results/{job}/{stem}.{extension}")
    }

    /// The folders under which every job has its own (`<folder>/<id>/...`).
    const FOLDERS: [&str; 3] = ["uploads", "work", "results"];

    /// Every prefix a job owns, for deletion.
    pub fn prefixes(job: &JobId) -> [String; 3] {
        FOLDERS.map(|folder| format!("{folder}/{job}/"))
    }

    /// The job that owns `key`, if it lies under one of a job's prefixes.
    pub fn job_of(key: &str) -> Option<JobId> {
        let mut segments = key.splitn(3, '/');
        let folder = segments.next()?;
        let id = segments.next()?;
        segments.next()?;
        if !FOLDERS.contains(&folder) {
            return None;
        }
        id.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_job_that_owns_them() {
        let id = JobId::new_random();
        for key in [
            keys::source(&id),
            keys::mix(&id),
            keys::stem(&id, "vocals"),
            keys::result(&id, "vocals", "mp3"),
        ] {
            assert_eq!(keys::job_of(&key), Some(id.clone()), "{key}");
        }
        for key in [
            "uploads/not-a-uuid/source".to_owned(),
            format!("uploads/{id}"),
            format!("models/{id}/x"),
            "results".to_owned(),
        ] {
            assert_eq!(keys::job_of(&key), None, "{key}");
        }
    }

    #[test]
    fn stages_chain_in_order() {
        assert_eq!(Stage::Decode.next(), Some(Stage::Separate));
        assert_eq!(Stage::Separate.next(), Some(Stage::Encode));
        assert_eq!(Stage::Encode.next(), None);
        for stage in Stage::ALL {
            assert_eq!(stage.as_str().parse::<Stage>().expect("parse"), stage);
        }
    }

    #[test]
    fn job_ids_must_be_uuids() {
        assert!("../../etc/passwd".parse::<JobId>().is_err());
        let id = JobId::new_random();
        assert_eq!(id.as_str().parse::<JobId>().expect("parse"), id);
    }

    #[test]
    fn default_options_are_valid_and_bad_ones_are_all_named() {
        let ok = JobOptions {
            model: "spleeter-2stems".into(),
            ..JobOptions::default()
        };
        ok.validate().expect("defaults are valid");
        let bad = JobOptions {
            model: "m".into(),
            overlap: 1.0,
            segment: Some(-1.0),
            output: OutputFormat {
                format: AudioFormat::Mp3,
                sample_format: SampleFormat::F32,
                mp3: Mp3Mode::Cbr(100),
                ..OutputFormat::default()
            },
            ..JobOptions::default()
        };
        let err = bad.validate().unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidOption);
        for needle in ["overlap", "segment", "float", "bitrate"] {
            assert!(
                err.message.contains(needle),
                "{needle} missing in {}",
                err.message
            );
        }
    }

    #[test]
    fn job_record_round_trips_through_json() {
        let mut job = Job::new("acme", "song.mp3", JobOptions::default());
        job.results
            .insert("vocals".into(), keys::result(&job.id, "vocals", "mp3"));
        let json = serde_json::to_string(&job).expect("serialize");
        let back: Job = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, job);
    }
}
