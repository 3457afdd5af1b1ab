//! WAV files whose size fields overrun the file (recorders and streams that never went back to
//! fill them in write 0xFFFFFFFF; truncated downloads keep the original sizes). symphonia 0.5
//! refuses such a file; ffmpeg decodes up to the real end. This reader does what ffmpeg does by
//! presenting corrected RIFF and `data` sizes over the untouched bytes.

use std::io::{Read, Seek, SeekFrom};

/// How far into the file the `data` chunk is looked for (`LIST`/`bext` chunks come first).
const MAX_HEADER_SCAN: u64 = 1 << 20;

/// A reader that overlays replacement bytes at fixed offsets.
pub(crate) struct PatchedReader<R> {
    inner: R,
    pos: u64,
    patches: Vec<(u64, [u8; 4])>,
}

impl<R: Read + Seek> PatchedReader<R> {
    /// Wraps `inner` (positioned anywhere; left at 0) with the size fixes a RIFF/WAVE file of
    /// `len` bytes needs, if any.
    pub(crate) fn new(mut inner: R, len: u64) -> std::io::Result<Self> {
        let patches = wav_size_patches(&mut inner, len).unwrap_or_default();
        inner.seek(SeekFrom::Start(0))?;
        Ok(Self {
            inner,
            pos: 0,
            patches,
        })
    }

    pub(crate) fn is_patched(&self) -> bool {
        !self.patches.is_empty()
    }
}

/// The patches (offset, new little-endian u32) for a WAV whose sizes overrun `len`; `None`
/// when the file is not RIFF/WAVE or its header cannot be walked.
fn wav_size_patches<R: Read + Seek>(reader: &mut R, len: u64) -> Option<Vec<(u64, [u8; 4])>> {
    let mut head = [0u8; 12];
    reader.seek(SeekFrom::Start(0)).ok()?;
    reader.read_exact(&mut head).ok()?;
    if &head[0..4] != b"RIFF" || &head[8..12] != b"WAVE" {
        return None;
    }
    let mut patches = Vec::new();
    let riff_size = u64::from(u32::from_le_bytes([head[4], head[5], head[6], head[7]]));
    if riff_size + 8 > len {
        patches.push((4, clamp_u32(len - 8)));
    }
    let mut offset = 12u64;
    while offset + 8 <= len.min(MAX_HEADER_SCAN) {
        let mut chunk = [0u8; 8];
        reader.seek(SeekFrom::Start(offset)).ok()?;
        reader.read_exact(&mut chunk).ok()?;
        let size = u64::from(u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]));
        let available = len - (offset + 8);
        if &chunk[0..4] == b"data" {
            if size > available {
                // Whole frames are not known here; the decoder drops a trailing partial frame.
                patches.push((offset + 4, clamp_u32(available)));
            }
            return Some(patches);
        }
        // Chunks are padded to an even length.
        offset += 8 + size + (size & 1);
    }
    None
}

fn clamp_u32(value: u64) -> [u8; 4] {
    u32::try_from(value).unwrap_or(u32::MAX).to_le_bytes()
}

impl<R: Read> Read for PatchedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let start = self.pos;
        let end = start + n as u64;
        for (offset, bytes) in &self.patches {
            for (i, byte) in bytes.iter().enumerate() {
                let at = offset + i as u64;
                if (start..end).contains(&at) {
                    // `at - start < n`, which is a usize.
                    buf[(at - start) as usize] = *byte;
                }
            }
        }
        self.pos = end;
        Ok(n)
    }
}

impl<R: Seek> Seek for PatchedReader<R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.pos = self.inner.seek(pos)?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn wav(data_len: u32, riff_len: u32, actual_data: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"RIFF");
        bytes.extend_from_slice(&riff_len.to_le_bytes());
        bytes.extend_from_slice(b"WAVEfmt ");
        bytes.extend_from_slice(&16u32.to_le_bytes());
        bytes.extend_from_slice(&[1, 0, 1, 0, 0x44, 0xac, 0, 0, 0x88, 0x58, 1, 0, 2, 0, 16, 0]);
        bytes.extend_from_slice(b"data");
        bytes.extend_from_slice(&data_len.to_le_bytes());
        bytes.extend(std::iter::repeat_n(7u8, actual_data));
        bytes
    }

    fn read_all(bytes: Vec<u8>) -> (bool, Vec<u8>) {
        let len = bytes.len() as u64;
        let mut reader = PatchedReader::new(Cursor::new(bytes), len).expect("reader");
        let mut out = Vec::new();
        // Small reads, so that patches straddle read boundaries.
        let mut buf = [0u8; 3];
        loop {
            let n = reader.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        (reader.is_patched(), out)
    }

    #[test]
    fn overrunning_sizes_are_corrected() {
        let (patched, out) = read_all(wav(u32::MAX, u32::MAX, 100));
        assert!(patched);
        assert_eq!(
            u32::from_le_bytes(out[4..8].try_into().expect("4")),
            out.len() as u32 - 8
        );
        assert_eq!(u32::from_le_bytes(out[40..44].try_into().expect("4")), 100);
        assert!(out[44..].iter().all(|&b| b == 7), "audio bytes untouched");
    }

    #[test]
    fn honest_and_foreign_files_pass_through() {
        let honest = wav(100, 136, 100);
        assert_eq!(read_all(honest.clone()), (false, honest));
        let other = b"ID3\x04 not a wav at all".to_vec();
        assert_eq!(read_all(other.clone()), (false, other));
    }
}
