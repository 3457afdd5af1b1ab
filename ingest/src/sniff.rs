//! What the first bytes of an upload say it is. Only containers decode can open pass; the
//! rest is refused (415) before anything is queued.

/// Bytes needed to recognise every format below.
pub const SNIFF_LEN: usize = 12;

/// The audio container the bytes start with, or `None` if they are not audio we decode.
pub fn sniff(head: &[u8]) -> Option<&'static str> {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if (at(0, b"RIFF") || at(0, b"RF64")) && at(8, b"WAVE") {
        Some("wav")
    } else if at(0, b"fLaC") {
        Some("flac")
    } else if at(0, b"OggS") {
        Some("ogg")
    } else if at(0, b"FORM") && (at(8, b"AIFF") || at(8, b"AIFC")) {
        Some("aiff")
    } else if at(4, b"ftyp") {
        Some("mp4")
    } else if at(0, b"ID3") {
        Some("mp3")
    } else if let [first, second, ..] = head
        && *first == 0xFF
        && second & 0xE0 == 0xE0
    {
        // An MPEG audio frame sync (11 set bits): MP3 when the layer bits are set, else ADTS AAC.
        if second & 0x06 != 0 {
            Some("mp3")
        } else {
            Some("aac")
        }
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_audio_containers_and_refuses_the_rest() {
        assert_eq!(sniff(b"RIFF\x24\0\0\0WAVEfmt "), Some("wav"));
        assert_eq!(sniff(b"fLaC\0\0\0\x22"), Some("flac"));
        assert_eq!(sniff(b"OggS\0\x02"), Some("ogg"));
        assert_eq!(sniff(b"FORM\0\0\0\0AIFF"), Some("aiff"));
        assert_eq!(sniff(b"\0\0\0\x20ftypM4A "), Some("mp4"));
        assert_eq!(sniff(b"ID3\x04\0"), Some("mp3"));
        assert_eq!(sniff(&[0xFF, 0xFB, 0x90, 0x64]), Some("mp3"));
        assert_eq!(sniff(&[0xFF, 0xF1, 0x50, 0x80]), Some("aac"));
        for junk in [
            &b"<html><body>"[..],
            b"%PDF-1.7",
            b"RIFF\0\0\0\0AVI ",
            b"",
            b"\xFF",
            b"PK\x03\x04",
        ] {
            assert_eq!(sniff(junk), None, "{junk:?}");
        }
    }
}
