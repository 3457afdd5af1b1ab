//! MP3 through LAME (mp3lame-encoder), with an ID3v2.4 tag (id3 crate, so titles keep any
//! script) and the LAME/Info tag that lets decoders trim the encoder delay and padding
//! (gapless: a decoded stem lines up with the others sample for sample).

use std::io::{BufWriter, Seek, SeekFrom, Write};

use audio::Pcm;
use audio::format::Mp3Mode;
use id3::TagLike;
use mp3lame_encoder::{Bitrate, Builder, DualPcm, FlushGap, MonoPcm, Quality, VbrMode};

use crate::error::EncodeError;
use crate::options::{MP3_CBR_KBPS, MP3_VBR_WORST};
use crate::tags::Tags;

/// Frames handed to LAME per call: bounds the output buffer while keeping calls few.
const CHUNK_FRAMES: usize = 16_384;

/// LAME's algorithm quality, 2 ("near best"), as `demucs --mp3` sets it.
const LAME_QUALITY: Quality = Quality::NearBest;

pub(crate) fn write<W: Write + Seek>(
    pcm: &Pcm,
    mode: Mp3Mode,
    tags: &Tags,
    writer: W,
) -> Result<(), EncodeError> {
    let channels = pcm.num_channels();
    if !(1..=2).contains(&channels) {
        return Err(EncodeError::invalid_option(format!(
            "MP3 holds one or two channels, the stem has {channels}"
        )));
    }
    let mut builder = Builder::new()
        .ok_or_else(|| EncodeError::Mp3("LAME could not allocate an encoder".into()))?;
    let lame = |what: &str, err: mp3lame_encoder::BuildError| {
        EncodeError::Mp3(format!("setting {what}: {err}"))
    };
    builder
        .set_num_channels(channels as u8)
        .map_err(|e| lame("channels", e))?;
    builder
        .set_sample_rate(pcm.sample_rate)
        .map_err(|e| lame("sample rate", e))?;
    builder
        .set_quality(LAME_QUALITY)
        .map_err(|e| lame("quality", e))?;
    match mode {
        Mp3Mode::Cbr(kbps) => {
            builder
                .set_vbr_mode(VbrMode::Off)
                .map_err(|e| lame("CBR mode", e))?;
            builder
                .set_brate(cbr_bitrate(kbps)?)
                .map_err(|e| lame("bit rate", e))?;
        }
        Mp3Mode::Vbr(quality) => {
            builder
                .set_vbr_mode(VbrMode::Mtrh)
                .map_err(|e| lame("VBR mode", e))?;
            builder
                .set_vbr_quality(vbr_quality(quality)?)
                .map_err(|e| lame("VBR quality", e))?;
        }
    }
    builder
        .set_to_write_vbr_tag(true)
        .map_err(|e| lame("LAME tag", e))?;
    let mut encoder = builder.build().map_err(|err| match err {
        mp3lame_encoder::BuildError::BadSampleFreq => {
            EncodeError::invalid_option(format!("MP3 cannot be encoded at {} Hz", pcm.sample_rate))
        }
        other => EncodeError::Mp3(format!("initialising: {other}")),
    })?;

    let mut out = BufWriter::with_capacity(1 << 16, writer);
    if !tags.is_empty() {
        id3_tag(tags)
            .write_to(&mut out, id3::Version::Id3v24)
            .map_err(EncodeError::Id3)?;
    }
    // LAME starts the stream with a blank frame; the LAME tag overwrites it at the end.
    let audio_start = out.stream_position()?;

    let mut buffer = Vec::new();
    let encode_error = |err: mp3lame_encoder::EncodeError| EncodeError::Mp3(format!("{err:?}"));
    for start in (0..pcm.frames()).step_by(CHUNK_FRAMES) {
        let end = (start + CHUNK_FRAMES).min(pcm.frames());
        buffer.clear();
        buffer.reserve(mp3lame_encoder::max_required_buffer_size(end - start));
        match pcm.channels.as_slice() {
            [mono] => encoder.encode_to_vec(MonoPcm(&mono[start..end]), &mut buffer),
            [left, right] => encoder.encode_to_vec(
                DualPcm {
                    left: &left[start..end],
                    right: &right[start..end],
                },
                &mut buffer,
            ),
            other => {
                return Err(EncodeError::InvalidPcm(format!(
                    "{} channels reached the MP3 writer",
                    other.len()
                )));
            }
        }
        .map_err(encode_error)?;
        out.write_all(&buffer)?;
    }
    buffer.clear();
    buffer.reserve(mp3lame_encoder::max_required_buffer_size(0));
    encoder
        .flush_to_vec::<FlushGap>(&mut buffer)
        .map_err(encode_error)?;
    out.write_all(&buffer)?;

    let mut lame_tag = Vec::with_capacity(encoder.lame_tag_size());
    if encoder.lame_tag_encode_to_vec(&mut lame_tag).is_some() {
        out.seek(SeekFrom::Start(audio_start))?;
        out.write_all(&lame_tag)?;
        out.seek(SeekFrom::End(0))?;
    }
    out.flush()?;
    Ok(())
}

fn id3_tag(tags: &Tags) -> id3::Tag {
    let mut tag = id3::Tag::new();
    if let Some(title) = tags.title.as_deref().filter(|t| !t.is_empty()) {
        tag.set_title(title);
    }
    if let Some(artist) = tags.artist.as_deref().filter(|t| !t.is_empty()) {
        tag.set_artist(artist);
    }
    if let Some(album) = tags.album.as_deref().filter(|t| !t.is_empty()) {
        tag.set_album(album);
    }
    tag
}

fn cbr_bitrate(kbps: u16) -> Result<Bitrate, EncodeError> {
    Ok(match kbps {
        128 => Bitrate::Kbps128,
        160 => Bitrate::Kbps160,
        192 => Bitrate::Kbps192,
        224 => Bitrate::Kbps224,
        256 => Bitrate::Kbps256,
        320 => Bitrate::Kbps320,
        _ => {
            return Err(EncodeError::invalid_option(format!(
                "MP3 bit rate {kbps} kbit/s is not offered (expected one of {MP3_CBR_KBPS:?})"
            )));
        }
    })
}

fn vbr_quality(quality: u8) -> Result<Quality, EncodeError> {
    Ok(match quality {
        0 => Quality::Best,
        1 => Quality::SecondBest,
        2 => Quality::NearBest,
        3 => Quality::VeryNice,
        4 => Quality::Nice,
        5 => Quality::Good,
        6 => Quality::Decent,
        7 => Quality::Ok,
        8 => Quality::SecondWorst,
        9 => Quality::Worst,
        _ => {
            return Err(EncodeError::invalid_option(format!(
                "MP3 VBR quality {quality} is out of range (expected 0 = best … {MP3_VBR_WORST})"
            )));
        }
    })
}
