//! The pure core: bytes in, PCM out, packet by packet.
//!
//! Memory: the compressed input is read through a small buffer (symphonia's
//! `MediaSourceStream`), each packet is decoded, mixed to stereo and resampled straight into
//! the output, so at most the output PCM plus one packet's worth of scratch is held.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::panic::AssertUnwindSafe;
use std::path::Path;

use audio::resample::StreamResampler;
use audio::{Pcm, SourceInfo};
use symphonia::core::audio::{AudioBuffer, AudioBufferRef, Channels, Signal};
use symphonia::core::codecs::{CODEC_TYPE_AAC, CODEC_TYPE_NULL, Decoder, DecoderOptions};
use symphonia::core::conv::IntoSample;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::{FormatOptions, FormatReader, Track};
use symphonia::core::io::{MediaSource, MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::{MetadataOptions, MetadataRevision, StandardTagKey};
use symphonia::core::probe::Hint;
use symphonia::core::sample::Sample;
use tracing::{debug, warn};

use crate::downmix::StereoMatrix;
use crate::error::DecodeError;
use crate::limits::Limits;
use crate::preflight::check_flac_metadata;
use crate::wav_repair::PatchedReader;

/// The rate every model takes.
pub const MODEL_SAMPLE_RATE: u32 = 44_100;

/// Sample rates outside this range are refused: no real recording uses them, and an absurd
/// ratio would make the resampler allocate huge buffers.
const SAMPLE_RATES: std::ops::RangeInclusive<u32> = 1_000..=768_000;

/// Container errors in a row after which the demuxer is taken to be lost in garbage.
const MAX_CONSECUTIVE_DEMUX_ERRORS: u32 = 64;

/// Longest tag value kept (tags end up in file names and other files' tags).
const MAX_TAG_CHARS: usize = 512;

/// What the decoder produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub pcm: Pcm,
    pub info: SourceInfo,
}

/// What to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// 44.1 kHz stereo, what the models take.
    #[default]
    Model,
    /// The source's own rate and channels (for checks against other decoders).
    Native,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    pub target: Target,
    /// The file's extension ("mp3"), when known: helps the probe, never overrides it.
    pub extension: Option<String>,
}

/// Decodes a whole input (a file or any seekable byte source, read from its start) to
/// 44.1 kHz stereo.
pub fn decode<R>(reader: R, limits: &Limits) -> Result<Decoded, DecodeError>
where
    R: Read + Seek + Send + Sync + 'static,
{
    decode_with(reader, limits, &DecodeOptions::default())
}

/// Decodes a file, using its extension as a hint.
pub fn decode_file(path: &Path, limits: &Limits, target: Target) -> Result<Decoded, DecodeError> {
    let file = File::open(path)?;
    let options = DecodeOptions {
        target,
        extension: path.extension().and_then(|e| e.to_str()).map(str::to_owned),
    };
    decode_with(file, limits, &options)
}

pub fn decode_with<R>(
    reader: R,
    limits: &Limits,
    options: &DecodeOptions,
) -> Result<Decoded, DecodeError>
where
    R: Read + Seek + Send + Sync + 'static,
{
    // symphonia 0.5 still has assertions that malformed input can reach (e.g. a WAV with a
    // 0 Hz rate panics building its time base). A panic there is a bad file, not a bug of
    // ours: report it as corrupt audio instead of taking the worker down.
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        decode_unguarded(reader, limits, options)
    }))
    .unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        warn!(%message, "decoder panicked on malformed input");
        Err(DecodeError::CorruptAudio(format!(
            "the decoder rejected malformed data: {message}"
        )))
    })
}

/// [`decode_with`] without the panic guard: what the fuzz target exercises, so that panics
/// inside the decoders are found rather than hidden.
#[doc(hidden)]
pub fn decode_unguarded<R>(
    mut reader: R,
    limits: &Limits,
    options: &DecodeOptions,
) -> Result<Decoded, DecodeError>
where
    R: Read + Seek + Send + Sync + 'static,
{
    let byte_len = reader.seek(SeekFrom::End(0))?;
    reader.seek(SeekFrom::Start(0))?;
    if byte_len == 0 {
        return Err(DecodeError::EmptyInput);
    }
    if byte_len > limits.max_input_bytes {
        return Err(DecodeError::TooLarge {
            limit: limits.max_input_bytes,
            measured: byte_len,
        });
    }
    check_flac_metadata(&mut reader, byte_len)?;
    let reader = PatchedReader::new(reader, byte_len)?;
    if reader.is_patched() {
        debug!("WAV size fields overrun the file; decoding up to its real end");
    }
    let source = SizedSource {
        inner: reader,
        byte_len,
    };
    let stream = MediaSourceStream::new(Box::new(source), MediaSourceStreamOptions::default());
    let mut hint = Hint::new();
    if let Some(extension) = &options.extension {
        hint.with_extension(extension);
    }
    let format_options = FormatOptions {
        enable_gapless: true,
        ..FormatOptions::default()
    };
    let mut probed = symphonia::default::get_probe()
        .format(&hint, stream, &format_options, &MetadataOptions::default())
        .map_err(probe_error)?;
    let mut tags = Tags::default();
    if let Some(metadata) = probed.metadata.get()
        && let Some(revision) = metadata.current()
    {
        tags.read(revision);
    }
    if let Some(revision) = probed.format.metadata().current() {
        tags.read(revision);
    }
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .cloned()
        .ok_or(DecodeError::NoAudioTrack)?;
    let codec = symphonia::default::get_codecs()
        .get_codec(track.codec_params.codec)
        .map_or_else(|| "unknown".to_owned(), |d| d.short_name.to_owned());
    check_header(&track, limits)?;
    let decoder = make_decoder(&track)?;
    let mut run = Run::new(&track, limits, options.target);
    run.priming_left = mp4_aac_priming(&track);
    run.decode_all(format.as_mut(), decoder)?;
    let (pcm, source_rate, source_channels, source_frames, skipped) = run.finish()?;
    let info = SourceInfo {
        sample_rate: source_rate,
        channels: source_channels,
        duration_secs: source_frames as f64 / f64::from(source_rate),
        codec,
        title: tags.title,
        artist: tags.artist,
        album: tags.album,
        skipped_packets: skipped,
    };
    debug!(
        codec = %info.codec,
        rate = info.sample_rate,
        channels = info.channels,
        duration_secs = info.duration_secs,
        skipped = info.skipped_packets,
        "decoded"
    );
    Ok(Decoded { pcm, info })
}

/// A seekable reader whose length was measured once, as symphonia wants.
struct SizedSource<R> {
    inner: R,
    byte_len: u64,
}

impl<R: Read> Read for SizedSource<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<R: Seek> Seek for SizedSource<R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

impl<R: Read + Seek + Send + Sync> MediaSource for SizedSource<R> {
    fn is_seekable(&self) -> bool {
        true
    }

    fn byte_len(&self) -> Option<u64> {
        Some(self.byte_len)
    }
}

fn probe_error(err: SymphoniaError) -> DecodeError {
    match err {
        SymphoniaError::Unsupported(what) => DecodeError::UnsupportedFormat(what.to_owned()),
        // The probe reads until it recognises something: running out means it did not.
        SymphoniaError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            DecodeError::UnsupportedFormat("no known audio format found in the input".into())
        }
        SymphoniaError::IoError(e) => DecodeError::Io(e),
        other => DecodeError::CorruptAudio(other.to_string()),
    }
}

/// Encoder priming frames to drop that symphonia does not: 0.5 ignores MP4 edit lists, so
/// AAC in MP4 keeps the encoder's 1024 frames of priming (ffmpeg, fdk-aac and Nero all use
/// 1024; ffmpeg trims them through the edit list). Raw ADTS streams carry no edit list, and
/// ffmpeg keeps their priming too, so only MP4 (recognised by its AudioSpecificConfig in
/// `extra_data`) is trimmed.
fn mp4_aac_priming(track: &Track) -> u64 {
    let params = &track.codec_params;
    if params.codec == CODEC_TYPE_AAC && params.delay.is_none() && params.extra_data.is_some() {
        1024
    } else {
        0
    }
}

/// Limits that the header can already tell: refuse before decoding anything.
fn check_header(track: &Track, limits: &Limits) -> Result<(), DecodeError> {
    let params = &track.codec_params;
    if let Some(channels) = params.channels {
        check_channels(channels.count(), limits)?;
    }
    if let Some(rate) = params.sample_rate {
        check_rate(rate)?;
        if let Some(frames) = params.n_frames {
            let secs = frames as f64 / f64::from(rate);
            if secs > limits.max_duration_secs {
                return Err(DecodeError::TooLong {
                    limit: limits.max_duration_secs,
                    measured: secs,
                    partial: false,
                });
            }
        }
    }
    Ok(())
}

fn check_channels(count: usize, limits: &Limits) -> Result<(), DecodeError> {
    if count == 0 {
        return Err(DecodeError::CorruptAudio(
            "the stream declares 0 channels".into(),
        ));
    }
    if count > usize::from(limits.max_channels) {
        return Err(DecodeError::TooManyChannels {
            limit: limits.max_channels,
            measured: count,
        });
    }
    Ok(())
}

fn check_rate(rate: u32) -> Result<(), DecodeError> {
    if SAMPLE_RATES.contains(&rate) {
        Ok(())
    } else {
        Err(DecodeError::UnsupportedFormat(format!(
            "sample rate {rate} Hz is outside {}..={} Hz",
            SAMPLE_RATES.start(),
            SAMPLE_RATES.end()
        )))
    }
}

fn make_decoder(track: &Track) -> Result<Box<dyn Decoder>, DecodeError> {
    symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|err| match err {
            SymphoniaError::Unsupported(what) => DecodeError::UnsupportedFormat(what.to_owned()),
            other => DecodeError::CorruptAudio(other.to_string()),
        })
}

#[derive(Default)]
struct Tags {
    title: Option<String>,
    artist: Option<String>,
    album: Option<String>,
}

impl Tags {
    /// Keeps the first non-empty value of each tag (container tags win over ID3 in front).
    fn read(&mut self, revision: &MetadataRevision) {
        for tag in revision.tags() {
            let slot = match tag.std_key {
                Some(StandardTagKey::TrackTitle) => &mut self.title,
                Some(StandardTagKey::Artist) => &mut self.artist,
                Some(StandardTagKey::Album) => &mut self.album,
                _ => continue,
            };
            let value: String = tag
                .value
                .to_string()
                .trim()
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_TAG_CHARS)
                .collect();
            if slot.is_none() && !value.is_empty() {
                *slot = Some(value);
            }
        }
    }
}

/// One decode in progress: the output so far and what was learned on the way.
struct Run<'a> {
    limits: &'a Limits,
    target: Target,
    track_id: u32,
    /// Rate and channel count of the first decoded packet; later packets must match.
    format: Option<(u32, usize)>,
    matrix: Option<StereoMatrix>,
    resampler: Option<StreamResampler>,
    output: Vec<Vec<f32>>,
    /// Frames to reserve for the output once the format is known (from the header).
    header_frames: Option<u64>,
    /// Leading frames still to drop (encoder priming symphonia left in).
    priming_left: u64,
    source_frames: u64,
    decoded_packets: u64,
    skipped_packets: u64,
    planes: Vec<Vec<f32>>,
    left: Vec<f32>,
    right: Vec<f32>,
}

impl<'a> Run<'a> {
    fn new(track: &Track, limits: &'a Limits, target: Target) -> Self {
        Self {
            limits,
            target,
            track_id: track.id,
            format: None,
            matrix: None,
            resampler: None,
            output: Vec::new(),
            header_frames: track.codec_params.n_frames,
            priming_left: 0,
            source_frames: 0,
            decoded_packets: 0,
            skipped_packets: 0,
            planes: Vec::new(),
            left: Vec::new(),
            right: Vec::new(),
        }
    }

    fn decode_all(
        &mut self,
        format: &mut dyn FormatReader,
        mut decoder: Box<dyn Decoder>,
    ) -> Result<(), DecodeError> {
        let mut demux_errors_in_a_row = 0;
        let mut next_ts: Option<u64> = None;
        loop {
            let packet = match format.next_packet() {
                Ok(packet) => {
                    demux_errors_in_a_row = 0;
                    packet
                }
                // The normal end of a stream, or a truncated file: keep what was decoded.
                Err(SymphoniaError::IoError(e))
                    if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    break;
                }
                Err(SymphoniaError::IoError(e)) => return Err(DecodeError::Io(e)),
                Err(SymphoniaError::ResetRequired) => {
                    let track = format
                        .tracks()
                        .iter()
                        .find(|t| t.id == self.track_id)
                        .cloned()
                        .ok_or(DecodeError::NoAudioTrack)?;
                    decoder = make_decoder(&track)?;
                    continue;
                }
                Err(err) => {
                    // Garbage in the container: count it, try to resync, give up if it lasts.
                    self.skipped_packets += 1;
                    demux_errors_in_a_row += 1;
                    debug!(%err, "demuxer error");
                    if demux_errors_in_a_row >= MAX_CONSECUTIVE_DEMUX_ERRORS {
                        warn!(%err, "demuxer lost in corrupt data; stopping");
                        break;
                    }
                    continue;
                }
            };
            if packet.track_id() != self.track_id {
                continue;
            }
            // Demuxers that resync over damage (FLAC) drop the bad frames themselves: the jump
            // in timestamps is how they show, counted in packets of this packet's length.
            if let Some(expected) = next_ts
                && packet.ts() > expected
            {
                let lost = (packet.ts() - expected).div_ceil(packet.dur().max(1));
                self.skipped_packets += lost;
                debug!(lost, at_ts = expected, "demuxer skipped damaged data");
            }
            next_ts = Some(packet.ts().saturating_add(packet.dur()));
            match decoder.decode(&packet) {
                Ok(decoded) => {
                    if decoded.frames() == 0 {
                        continue;
                    }
                    if self.accept(&decoded)? {
                        self.decoded_packets += 1;
                    } else {
                        self.skipped_packets += 1;
                    }
                }
                Err(SymphoniaError::ResetRequired) => {
                    decoder.reset();
                }
                // A corrupt packet: skip and count it, as ffmpeg does.
                Err(err) => {
                    self.skipped_packets += 1;
                    debug!(%err, "skipped a corrupt packet");
                }
            }
        }
        Ok(())
    }

    /// Appends one decoded packet to the output; `false` if it does not fit the stream
    /// (a change of rate or channel count mid-stream) and was dropped.
    fn accept(&mut self, decoded: &AudioBufferRef<'_>) -> Result<bool, DecodeError> {
        let spec = *decoded.spec();
        let channels = spec.channels.count();
        let decoded_frames = decoded.frames();
        match self.format {
            None => self.start(spec.rate, spec.channels, channels)?,
            Some(format) if format != (spec.rate, channels) => return Ok(false),
            Some(_) => {}
        }
        // Drop encoder priming from the front of the stream.
        let start = usize::try_from(self.priming_left)
            .unwrap_or(usize::MAX)
            .min(decoded_frames);
        self.priming_left -= start as u64;
        let frames = decoded_frames - start;
        if frames == 0 {
            return Ok(true);
        }
        self.source_frames += frames as u64;
        let secs = self.source_frames as f64 / f64::from(spec.rate);
        if secs > self.limits.max_duration_secs {
            return Err(DecodeError::TooLong {
                limit: self.limits.max_duration_secs,
                measured: secs,
                partial: true,
            });
        }
        copy_planes(decoded, start, &mut self.planes);
        match (&self.matrix, self.target) {
            (_, Target::Native) => {
                for (out, plane) in self.output.iter_mut().zip(&self.planes) {
                    out.extend_from_slice(&plane[..frames]);
                }
                return Ok(true);
            }
            (Some(matrix), Target::Model) => {
                matrix.apply(&self.planes, frames, &mut self.left, &mut self.right);
            }
            (None, Target::Model) => {
                // Mono: the same signal on both sides.
                self.left.clear();
                self.left.extend_from_slice(&self.planes[0][..frames]);
                self.right.clear();
                self.right
                    .extend_from_slice(&self.planes[usize::from(channels > 1)][..frames]);
            }
        }
        let stereo = [
            std::mem::take(&mut self.left),
            std::mem::take(&mut self.right),
        ];
        let pushed = match &mut self.resampler {
            Some(resampler) => resampler.push(&stereo, &mut self.output),
            None => {
                for (out, side) in self.output.iter_mut().zip(&stereo) {
                    out.extend_from_slice(side);
                }
                Ok(())
            }
        };
        [self.left, self.right] = stereo;
        pushed?;
        Ok(true)
    }

    /// Sets the run up from the first decoded packet's format.
    fn start(&mut self, rate: u32, layout: Channels, channels: usize) -> Result<(), DecodeError> {
        check_rate(rate)?;
        check_channels(channels, self.limits)?;
        self.format = Some((rate, channels));
        let (out_rate, out_channels) = match self.target {
            Target::Native => (rate, channels),
            Target::Model => (MODEL_SAMPLE_RATE, 2),
        };
        if self.target == Target::Model {
            if channels > 2 {
                self.matrix = Some(StereoMatrix::new(layout, channels));
            }
            if rate != MODEL_SAMPLE_RATE {
                self.resampler = Some(StreamResampler::new(rate, MODEL_SAMPLE_RATE, 2)?);
            }
        }
        // Reserve what the header announces (capped by the duration limit), so the output
        // grows once instead of doubling.
        let max_frames = self.limits.max_duration_secs * f64::from(rate);
        let capacity = self
            .header_frames
            .map_or(0.0, |frames| (frames as f64).min(max_frames))
            * f64::from(out_rate)
            / f64::from(rate);
        let capacity = capacity.clamp(0.0, (1u64 << 32) as f64) as usize;
        self.output = (0..out_channels)
            .map(|_| Vec::with_capacity(capacity))
            .collect();
        Ok(())
    }

    /// Flushes the resampler and checks what came out.
    /// Returns (pcm, source rate, source channels, source frames, skipped packets).
    fn finish(mut self) -> Result<(Pcm, u32, u16, u64, u64), DecodeError> {
        let total = self.decoded_packets + self.skipped_packets;
        let Some((rate, channels)) = self.format else {
            return Err(if self.skipped_packets > 0 {
                DecodeError::CorruptAudio(format!(
                    "none of {} packets could be decoded",
                    self.skipped_packets
                ))
            } else if self.header_frames.is_some_and(|frames| frames > 0) {
                DecodeError::CorruptAudio(
                    "the header announces audio, but none could be decoded".into(),
                )
            } else {
                DecodeError::TooShort {
                    limit: self.limits.min_duration_secs,
                    measured: 0.0,
                }
            });
        };
        if self.skipped_packets as f64 > self.limits.max_skipped_fraction * total as f64 {
            return Err(DecodeError::CorruptAudio(format!(
                "{} of {} packets are corrupt (the limit is {:.0}%)",
                self.skipped_packets,
                total,
                self.limits.max_skipped_fraction * 100.0
            )));
        }
        let secs = self.source_frames as f64 / f64::from(rate);
        if secs < self.limits.min_duration_secs || self.source_frames == 0 {
            return Err(DecodeError::TooShort {
                limit: self.limits.min_duration_secs,
                measured: secs,
            });
        }
        if let Some(resampler) = self.resampler.take() {
            resampler.finish(&mut self.output)?;
        }
        let out_rate = match self.target {
            Target::Native => rate,
            Target::Model => MODEL_SAMPLE_RATE,
        };
        let pcm = Pcm::new(out_rate, self.output)
            .map_err(|err| DecodeError::CorruptAudio(err.to_string()))?;
        // `check_channels` bounded the count by a u16 limit.
        let channels = u16::try_from(channels).unwrap_or(u16::MAX);
        if self.skipped_packets > 0 {
            warn!(
                skipped = self.skipped_packets,
                total, "skipped corrupt packets"
            );
        }
        Ok((
            pcm,
            rate,
            channels,
            self.source_frames,
            self.skipped_packets,
        ))
    }
}

/// Copies a decoded packet's planes into `planes` as f32 (same scale as ffmpeg's `f32le`:
/// integer full scale maps to ±1.0).
fn copy_planes(decoded: &AudioBufferRef<'_>, start: usize, planes: &mut Vec<Vec<f32>>) {
    match decoded {
        AudioBufferRef::U8(buf) => copy_typed(buf, start, planes),
        AudioBufferRef::U16(buf) => copy_typed(buf, start, planes),
        AudioBufferRef::U24(buf) => copy_typed(buf, start, planes),
        AudioBufferRef::U32(buf) => copy_typed(buf, start, planes),
        AudioBufferRef::S8(buf) => copy_typed(buf, start, planes),
        AudioBufferRef::S16(buf) => copy_typed(buf, start, planes),
        AudioBufferRef::S24(buf) => copy_typed(buf, start, planes),
        AudioBufferRef::S32(buf) => copy_typed(buf, start, planes),
        AudioBufferRef::F32(buf) => copy_typed(buf, start, planes),
        AudioBufferRef::F64(buf) => copy_typed(buf, start, planes),
    }
}

fn copy_typed<S>(buf: &AudioBuffer<S>, start: usize, planes: &mut Vec<Vec<f32>>)
where
    S: Sample + IntoSample<f32>,
{
    let channels = buf.spec().channels.count();
    planes.resize_with(channels, Vec::new);
    for (c, plane) in planes.iter_mut().enumerate().take(channels) {
        plane.clear();
        let samples = buf.chan(c);
        plane.extend(
            samples[start.min(samples.len())..]
                .iter()
                .map(|&s| s.into_sample()),
        );
    }
}
