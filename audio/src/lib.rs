//! Audio as every stage sees it, with nothing of the service: planar f32 PCM and what is known
//! of its source, the f32 WAV that carries it between stages, the resampler, the output
//! formats stems are written in, and the stable error codes the stage cores report.
//! Plain synchronous code: no async runtime, no I/O beyond the readers and writers it is given.

pub mod error;
pub mod format;
pub mod pcm;
pub mod resample;

pub use error::{CodedError, ErrorCode};
pub use format::{AudioFormat, ClipMode, Mp3Mode, OutputFormat, OutputRate, SampleFormat};
pub use pcm::{AudioError, Pcm, SourceInfo, read_wav_f32, write_wav_f32};
