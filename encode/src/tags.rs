//! What each encoded stem is labelled with.

use std::path::Path;

use audio::SourceInfo;

/// Tags written into an encoded stem (WAV LIST/INFO, FLAC Vorbis comment, MP3 ID3v2).
/// Absent or empty fields are not written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tags {
    pub title: Option<String>,
    pub artist: Option<String>,
    pub album: Option<String>,
}

impl Tags {
    /// Title "<song> (<stem>)", where the song is the file stem of the name the user gave the
    /// input; artist and album from the source's own tags where it had them.
    pub fn for_stem(source_name: &str, stem: &str, source: Option<&SourceInfo>) -> Self {
        let song = song_name(source_name);
        let title = if song.is_empty() {
            stem.to_owned()
        } else {
            format!("{song} ({stem})")
        };
        let non_empty =
            |value: Option<&String>| value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        Self {
            title: Some(title),
            artist: non_empty(source.and_then(|s| s.artist.as_ref())),
            album: non_empty(source.and_then(|s| s.album.as_ref())),
        }
    }

    /// The fields that are set, as (Vorbis comment field name, value).
    pub(crate) fn fields(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("TITLE", self.title.as_deref()),
            ("ARTIST", self.artist.as_deref()),
            ("ALBUM", self.album.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.filter(|v| !v.is_empty()).map(|v| (name, v)))
    }

    pub fn is_empty(&self) -> bool {
        self.fields().next().is_none()
    }
}

/// "Artist - Song.final.mp3" → "Artist - Song.final"; a path keeps only its last component.
fn song_name(source_name: &str) -> String {
    // Uploads may come from Windows clients: treat both separators as such.
    let last = source_name
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(source_name);
    Path::new(last)
        .file_stem()
        .map(|s| s.to_string_lossy().trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_is_song_and_stem() {
        let tags = Tags::for_stem("uploads\\My Song.final.mp3", "vocals", None);
        assert_eq!(tags.title.as_deref(), Some("My Song.final (vocals)"));
        assert_eq!(tags.artist, None);
        let source = SourceInfo {
            artist: Some("Artist".into()),
            album: Some("  ".into()),
            ..SourceInfo::default()
        };
        let tags = Tags::for_stem("a/b/song.flac", "drums", Some(&source));
        assert_eq!(tags.title.as_deref(), Some("song (drums)"));
        assert_eq!(tags.artist.as_deref(), Some("Artist"));
        assert_eq!(tags.album, None);
    }
}
