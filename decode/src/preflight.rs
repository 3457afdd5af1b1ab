//! Checks symphonia 0.5 does not make before it allocates: a FLAC VORBIS_COMMENT or PICTURE
//! block declares the lengths of its parts, and symphonia allocates each declared length (up
//! to 4 GiB) before reading it. A crafted 100-byte file could make a worker reserve gigabytes
//! (found by the fuzzer). Here every declared length is checked against its block first.

use std::io::{Read, Seek, SeekFrom};

use crate::error::DecodeError;

const VORBIS_COMMENT: u8 = 4;
const PICTURE: u8 = 6;

/// Validates the metadata blocks of a FLAC stream that starts the file (optionally after an
/// ID3v2 tag). Leaves the reader at 0. Other formats pass untouched.
pub(crate) fn check_flac_metadata<R: Read + Seek>(
    reader: &mut R,
    len: u64,
) -> Result<(), DecodeError> {
    let result = walk_flac(reader, len);
    reader.seek(SeekFrom::Start(0))?;
    result
}

fn walk_flac<R: Read + Seek>(reader: &mut R, len: u64) -> Result<(), DecodeError> {
    let mut offset = 0u64;
    let mut head = [0u8; 10];
    reader.seek(SeekFrom::Start(0))?;
    if reader.read_exact(&mut head).is_err() {
        return Ok(());
    }
    if &head[0..3] == b"ID3" {
        // Synch-safe size: 7 bits per byte.
        let size = head[6..10]
            .iter()
            .fold(0u64, |acc, &b| (acc << 7) | u64::from(b & 0x7f));
        offset = 10 + size;
        reader.seek(SeekFrom::Start(offset))?;
        if reader.read_exact(&mut head[..4]).is_err() {
            return Ok(());
        }
    }
    if &head[0..4] != b"fLaC" {
        return Ok(());
    }
    offset += 4;
    loop {
        let mut block_header = [0u8; 4];
        reader.seek(SeekFrom::Start(offset))?;
        if reader.read_exact(&mut block_header).is_err() {
            return Ok(()); // truncated: symphonia reports it
        }
        let last = block_header[0] & 0x80 != 0;
        let kind = block_header[0] & 0x7f;
        let size = u64::from(u32::from_be_bytes([
            0,
            block_header[1],
            block_header[2],
            block_header[3],
        ]));
        if offset + 4 + size > len {
            return Ok(());
        }
        if kind == VORBIS_COMMENT || kind == PICTURE {
            // At most 16 MiB (24-bit size), and within the file.
            let mut block = vec![0u8; size as usize];
            reader.read_exact(&mut block)?;
            let fits = if kind == VORBIS_COMMENT {
                vorbis_comment_fits(&block)
            } else {
                picture_fits(&block)
            };
            if !fits {
                return Err(DecodeError::CorruptAudio(format!(
                    "FLAC {} block declares more data than its {size} bytes",
                    if kind == PICTURE {
                        "picture"
                    } else {
                        "comment"
                    }
                )));
            }
        }
        offset += 4 + size;
        if last {
            return Ok(());
        }
    }
}

/// Reads a u32 at `*pos` (little- or big-endian) and advances; `None` past the end.
fn read_u32(block: &[u8], pos: &mut usize, little_endian: bool) -> Option<u64> {
    let bytes: [u8; 4] = block.get(*pos..*pos + 4)?.try_into().ok()?;
    *pos += 4;
    Some(u64::from(if little_endian {
        u32::from_le_bytes(bytes)
    } else {
        u32::from_be_bytes(bytes)
    }))
}

/// Skips `n` bytes at `*pos`; `None` if that leaves the block.
fn skip(block: &[u8], pos: &mut usize, n: u64) -> Option<()> {
    let end = (*pos as u64).checked_add(n)?;
    if end > block.len() as u64 {
        return None;
    }
    *pos = end as usize;
    Some(())
}

fn vorbis_comment_fits(block: &[u8]) -> bool {
    let mut pos = 0;
    let mut walk = || -> Option<()> {
        let vendor = read_u32(block, &mut pos, true)?;
        skip(block, &mut pos, vendor)?;
        let count = read_u32(block, &mut pos, true)?;
        for _ in 0..count {
            let length = read_u32(block, &mut pos, true)?;
            skip(block, &mut pos, length)?;
        }
        Some(())
    };
    walk().is_some()
}

fn picture_fits(block: &[u8]) -> bool {
    let mut pos = 0;
    let mut walk = || -> Option<()> {
        read_u32(block, &mut pos, false)?; // picture type
        let mime = read_u32(block, &mut pos, false)?;
        skip(block, &mut pos, mime)?;
        let description = read_u32(block, &mut pos, false)?;
        skip(block, &mut pos, description)?;
        skip(block, &mut pos, 16)?; // width, height, depth, colours
        let data = read_u32(block, &mut pos, false)?;
        skip(block, &mut pos, data)?;
        Some(())
    };
    walk().is_some()
}
