//! FLAC through flacenc (pure Rust), written frame by frame: the stream header is written
//! first with a placeholder STREAMINFO and patched at the end, so the encoded file is never
//! held in memory.

use std::io::{BufWriter, Seek, SeekFrom, Write};

use audio::Pcm;
use audio::format::SampleFormat;
use flacenc::bitsink::MemSink;
use flacenc::component::{BitRepr, StreamInfo};
use flacenc::error::Verify;
use flacenc::source::{Fill, FrameBuf};
use md5::{Digest, Md5};

use crate::clip::{quantize_i16, quantize_i24};
use crate::error::EncodeError;
use crate::tags::Tags;

/// Samples per channel in one FLAC frame: the reference encoder's default for 44.1/48 kHz.
pub const BLOCK_SIZE: usize = 4096;
/// See the configuration in [`write`]: speed over the last 2% of compression.
const USE_LPC: bool = false;
/// FLAC's channel limit.
pub const MAX_CHANNELS: usize = 8;

const METADATA_STREAMINFO: u8 = 0;
const METADATA_VORBIS_COMMENT: u8 = 4;
const LAST_METADATA_BLOCK: u8 = 0x80;
/// "fLaC" + the 4-byte STREAMINFO block header: where STREAMINFO's body starts.
const STREAMINFO_OFFSET: u64 = 8;

pub(crate) fn write<W: Write + Seek>(
    pcm: &Pcm,
    sample_format: SampleFormat,
    tags: &Tags,
    writer: W,
) -> Result<(), EncodeError> {
    let bits_per_sample = match sample_format {
        SampleFormat::I16 => 16,
        SampleFormat::I24 => 24,
        SampleFormat::F32 => {
            return Err(EncodeError::invalid_option(
                "FLAC stores integer samples only: choose 16- or 24-bit",
            ));
        }
    };
    let channels = pcm.num_channels();
    if channels > MAX_CHANNELS {
        return Err(EncodeError::invalid_option(format!(
            "FLAC holds at most {MAX_CHANNELS} channels, the stem has {channels}"
        )));
    }
    let sample_rate = usize::try_from(pcm.sample_rate)
        .map_err(|_| EncodeError::InvalidPcm("sample rate out of range".into()))?;
    let mut stream_info = StreamInfo::new(sample_rate, channels, bits_per_sample)
        .map_err(|err| EncodeError::invalid_option(format!("FLAC cannot store this: {err}")))?;

    let mut config = flacenc::config::Encoder::default();
    config.block_size = BLOCK_SIZE;
    // Stems of a song are encoded in parallel already; one thread per stem is enough.
    config.multithread = false;
    // Fixed predictors only: flacenc's LPC search costs ~4x the time of `flac -5` for ~2%
    // smaller files on music; fixed predictors with its partitioned Rice coding encode as
    // fast as `flac -5` with files between `flac -2` and `flac -5` (BENCHMARKS.md "encode").
    config.subframe_coding.use_lpc = USE_LPC;
    let config = config
        .into_verified()
        .map_err(|(_, err)| EncodeError::Flac(format!("encoder configuration: {err}")))?;

    let mut out = BufWriter::with_capacity(1 << 16, writer);
    out.write_all(b"fLaC")?;
    write_block_header(&mut out, METADATA_STREAMINFO, tags.is_empty(), 34)?;
    write_stream_info(&mut out, &stream_info)?;
    if !tags.is_empty() {
        let comment = vorbis_comment(tags)?;
        write_block_header(&mut out, METADATA_VORBIS_COMMENT, true, comment.len())?;
        out.write_all(&comment)?;
    }

    let mut frame_buf = FrameBuf::with_size(channels, BLOCK_SIZE).map_err(flac_error)?;
    // STREAMINFO's MD5 is over the samples as little-endian bytes of the stream's width;
    // hashed a block at a time (flacenc's per-sample hashing costs as much as encoding).
    let mut md5 = Md5::new();
    let bytes_per_sample = bits_per_sample / 8;
    let mut sample_bytes = Vec::with_capacity(BLOCK_SIZE * channels * bytes_per_sample);
    let mut interleaved = Vec::with_capacity(BLOCK_SIZE * channels);
    let mut sink = MemSink::<u8>::new();
    let mut frame_number = 0;
    for start in (0..pcm.frames()).step_by(BLOCK_SIZE) {
        let end = (start + BLOCK_SIZE).min(pcm.frames());
        interleaved.clear();
        for i in start..end {
            for channel in &pcm.channels {
                interleaved.push(match sample_format {
                    SampleFormat::I24 => quantize_i24(channel[i]),
                    _ => i32::from(quantize_i16(channel[i])),
                });
            }
        }
        sample_bytes.clear();
        for sample in &interleaved {
            sample_bytes.extend_from_slice(&sample.to_le_bytes()[..bytes_per_sample]);
        }
        md5.update(&sample_bytes);
        frame_buf
            .fill_interleaved(&interleaved)
            .map_err(flac_error)?;
        let frame =
            flacenc::encode_fixed_size_frame(&config, &frame_buf, frame_number, &stream_info)
                .map_err(flac_error)?;
        stream_info.update_frame_info(&frame);
        sink.clear();
        frame.write(&mut sink).map_err(flac_error)?;
        out.write_all(sink.as_slice())?;
        frame_number += 1;
    }

    // Like the reference encoder: the block size in STREAMINFO is the fixed one, even when
    // the last (or only) frame is shorter.
    stream_info
        .set_block_sizes(BLOCK_SIZE, BLOCK_SIZE)
        .map_err(flac_error)?;
    if frame_number == 0 {
        // 0 means "unknown" for frame sizes; flacenc's initial values would be nonsense.
        stream_info.set_frame_sizes(0, 0).map_err(flac_error)?;
    }
    stream_info.set_md5_digest(&md5.finalize().into());
    stream_info.set_total_samples(pcm.frames());
    out.seek(SeekFrom::Start(STREAMINFO_OFFSET))?;
    write_stream_info(&mut out, &stream_info)?;
    out.seek(SeekFrom::End(0))?;
    out.flush()?;
    Ok(())
}

fn flac_error(err: impl std::fmt::Display) -> EncodeError {
    EncodeError::Flac(err.to_string())
}

fn write_block_header<W: Write>(
    out: &mut W,
    block_type: u8,
    is_last: bool,
    len: usize,
) -> Result<(), EncodeError> {
    if len >= 1 << 24 {
        return Err(EncodeError::invalid_option("FLAC metadata block too large"));
    }
    let flag = if is_last { LAST_METADATA_BLOCK } else { 0 };
    let len = (len as u32).to_be_bytes();
    out.write_all(&[block_type | flag, len[1], len[2], len[3]])?;
    Ok(())
}

fn write_stream_info<W: Write>(out: &mut W, info: &StreamInfo) -> Result<(), EncodeError> {
    let mut sink = MemSink::<u8>::new();
    info.write(&mut sink).map_err(flac_error)?;
    out.write_all(sink.as_slice())?;
    Ok(())
}

/// A VORBIS_COMMENT block body: little-endian lengths, UTF-8 `FIELD=value` entries.
fn vorbis_comment(tags: &Tags) -> Result<Vec<u8>, EncodeError> {
    let vendor = concat!("msaas ", env!("CARGO_PKG_VERSION"));
    let entries: Vec<String> = tags
        .fields()
        .map(|(field, value)| format!("{field}={value}"))
        .collect();
    let mut body = Vec::new();
    push_string(&mut body, vendor)?;
    body.extend_from_slice(&le_len(entries.len())?);
    for entry in &entries {
        push_string(&mut body, entry)?;
    }
    Ok(body)
}

fn push_string(body: &mut Vec<u8>, text: &str) -> Result<(), EncodeError> {
    body.extend_from_slice(&le_len(text.len())?);
    body.extend_from_slice(text.as_bytes());
    Ok(())
}

fn le_len(len: usize) -> Result<[u8; 4], EncodeError> {
    u32::try_from(len)
        .map(u32::to_le_bytes)
        .map_err(|_| EncodeError::invalid_option("tag too long for FLAC"))
}
