//! WAV: 16-bit, 24-bit integer or 32-bit float through hound, plus a LIST/INFO chunk for tags.

use std::io::{BufWriter, Seek, SeekFrom, Write};

use audio::Pcm;
use audio::format::SampleFormat;

use crate::clip::{quantize_i16, quantize_i24};
use crate::error::EncodeError;
use crate::tags::Tags;

/// RIFF sizes are 32-bit: refuse what would overflow them instead of writing a broken file.
const MAX_RIFF_BYTES: u64 = u32::MAX as u64 - 4096;

pub(crate) fn write<W: Write + Seek>(
    pcm: &Pcm,
    sample_format: SampleFormat,
    tags: &Tags,
    writer: W,
) -> Result<(), EncodeError> {
    let channels = u16::try_from(pcm.num_channels())
        .map_err(|_| EncodeError::InvalidPcm("too many channels for WAV".into()))?;
    let (bits_per_sample, hound_format): (u16, _) = match sample_format {
        SampleFormat::I16 => (16, hound::SampleFormat::Int),
        SampleFormat::I24 => (24, hound::SampleFormat::Int),
        SampleFormat::F32 => (32, hound::SampleFormat::Float),
    };
    let data_bytes =
        pcm.frames() as u64 * u64::from(channels) * u64::from(bits_per_sample.div_ceil(8));
    if data_bytes > MAX_RIFF_BYTES {
        return Err(EncodeError::invalid_option(format!(
            "{data_bytes} bytes of audio exceed what a WAV file can hold (4 GiB): choose FLAC or MP3"
        )));
    }
    let spec = hound::WavSpec {
        channels,
        sample_rate: pcm.sample_rate,
        bits_per_sample,
        sample_format: hound_format,
    };
    // hound does no buffering of its own; BufWriter flushes before it seeks back for the header.
    let mut out = BufWriter::with_capacity(1 << 16, writer);
    let mut wav = hound::WavWriter::new(&mut out, spec)?;
    for frame in 0..pcm.frames() {
        for channel in &pcm.channels {
            let sample = channel[frame];
            match sample_format {
                SampleFormat::I16 => wav.write_sample(quantize_i16(sample))?,
                SampleFormat::I24 => wav.write_sample(quantize_i24(sample))?,
                SampleFormat::F32 => wav.write_sample(sample)?,
            }
        }
    }
    wav.finalize()?;
    if !tags.is_empty() {
        append_info_chunk(&mut out, tags)?;
    }
    out.flush()?;
    Ok(())
}

/// Appends a `LIST`/`INFO` chunk after the data and fixes the RIFF size. After the data
/// rather than before it because hound writes the header itself; RIFF readers (ffmpeg,
/// sox, libsndfile) accept chunks in any order.
fn append_info_chunk<W: Write + Seek>(out: &mut W, tags: &Tags) -> Result<(), EncodeError> {
    let mut end = out.seek(SeekFrom::End(0))?;
    if end % 2 == 1 {
        // Chunks start on even offsets: hound leaves an odd-sized data chunk unpadded.
        out.write_all(&[0])?;
        end += 1;
    }
    let mut info = Vec::from(*b"INFO");
    for (field, value) in tags.fields() {
        let id: &[u8; 4] = match field {
            "TITLE" => b"INAM",
            "ARTIST" => b"IART",
            _ => b"IPRD",
        };
        let mut text = value.as_bytes().to_vec();
        text.push(0);
        info.extend_from_slice(id);
        info.extend_from_slice(&chunk_len(text.len())?.to_le_bytes());
        info.extend_from_slice(&text);
        if text.len() % 2 == 1 {
            info.push(0);
        }
    }
    out.write_all(b"LIST")?;
    out.write_all(&chunk_len(info.len())?.to_le_bytes())?;
    out.write_all(&info)?;
    let riff_size = end + 8 + info.len() as u64 - 8;
    let riff_size = u32::try_from(riff_size)
        .map_err(|_| EncodeError::invalid_option("WAV file would exceed 4 GiB"))?;
    out.seek(SeekFrom::Start(4))?;
    out.write_all(&riff_size.to_le_bytes())?;
    out.seek(SeekFrom::End(0))?;
    Ok(())
}

fn chunk_len(len: usize) -> Result<u32, EncodeError> {
    u32::try_from(len).map_err(|_| EncodeError::invalid_option("tag too long for a WAV chunk"))
}
