//! All the stems of one song: read, bring to the output layout, clip-prepare together, and
//! encode — each step in parallel across stems (one thread per stem; a song has a handful).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use audio::format::OutputFormat;
use audio::{Pcm, SourceInfo};

use crate::encoder::encode;
use crate::error::EncodeError;
use crate::layout::to_output_layout;
use crate::tags::Tags;
use crate::{clip, options};

/// One encoded stem on local disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedStem {
    pub stem: String,
    pub path: PathBuf,
    pub bytes: u64,
}

/// The song the stems belong to: names the output tags.
#[derive(Debug, Clone, Copy)]
pub struct Song<'a> {
    /// The name the user gave the input (e.g. "Artist - Title.mp3").
    pub source_name: &'a str,
    pub source: Option<&'a SourceInfo>,
}

/// Reads the stems' f32 WAVs (as separate writes them) and encodes them with
/// [`encode_stems`].
pub fn encode_stem_files(
    inputs: Vec<(String, PathBuf)>,
    format: &OutputFormat,
    song: Song<'_>,
    out_dir: &Path,
    is_cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<Vec<EncodedStem>, EncodeError> {
    options::validate(format)?;
    let stems = parallel_map(inputs, is_cancelled, |(stem, path)| {
        let file = File::open(&path)?;
        let pcm =
            audio::read_wav_f32(BufReader::with_capacity(1 << 16, file)).map_err(|source| {
                EncodeError::Intermediate {
                    stem: stem.clone(),
                    source,
                }
            })?;
        Ok((stem, pcm))
    })?;
    encode_stems(stems, format, song, out_dir, is_cancelled)
}

/// Encodes the stems of one song into `out_dir` (as `<index>.<ext>`, so stem names never
/// become paths): output layout (`--output-rate`), then [`clip::prepare`] over all stems
/// together, then one encoder per stem, in parallel. Returns the files in input order.
pub fn encode_stems(
    stems: Vec<(String, Pcm)>,
    format: &OutputFormat,
    song: Song<'_>,
    out_dir: &Path,
    is_cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<Vec<EncodedStem>, EncodeError> {
    options::validate(format)?;
    let mut stems = parallel_map(stems, is_cancelled, |(stem, pcm)| {
        Ok((stem, to_output_layout(pcm, format.rate, song.source)?))
    })?;
    let scale = clip::prepare(&mut stems, format)?;
    tracing::debug!(stems = stems.len(), scale, "stems prepared");

    let extension = format.format.extension();
    let jobs: Vec<_> = stems
        .into_iter()
        .enumerate()
        .map(|(index, (stem, pcm))| (out_dir.join(format!("{index}.{extension}")), stem, pcm))
        .collect();
    parallel_map(jobs, is_cancelled, |(path, stem, pcm)| {
        let started = std::time::Instant::now();
        let tags = Tags::for_stem(song.source_name, &stem, song.source);
        let mut file = File::create(&path)?;
        encode(&pcm, format, &tags, &mut file)?;
        // No fsync: these are scratch files, read back from the page cache by the upload;
        // durability is the blob store's job.
        let bytes = file.metadata()?.len();
        tracing::debug!(
            stem,
            bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "stem encoded"
        );
        Ok(EncodedStem { stem, path, bytes })
    })
}

/// Runs `f` on every item, each on a thread of its own, and returns the results in order;
/// the first error (in item order) wins. An item whose thread starts after `is_cancelled`
/// turns true gives `Cancelled` without running. A panicking worker becomes an error, not a panic.
fn parallel_map<T, U, F>(
    items: Vec<T>,
    is_cancelled: &(dyn Fn() -> bool + Sync),
    f: F,
) -> Result<Vec<U>, EncodeError>
where
    T: Send,
    U: Send,
    F: Fn(T) -> Result<U, EncodeError> + Sync,
{
    let f = |item: T| {
        if is_cancelled() {
            return Err(EncodeError::Cancelled);
        }
        f(item)
    };
    if items.len() <= 1 {
        return items.into_iter().map(&f).collect();
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .into_iter()
            .map(|item| scope.spawn(move || f(item)))
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle.join().unwrap_or_else(|panic| {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".to_owned());
                    Err(EncodeError::Panicked(message))
                })
            })
            .collect()
    })
}
