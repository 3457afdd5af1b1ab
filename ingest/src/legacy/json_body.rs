//! The legacy `POST /apiv1/separate` body, read as it arrives: a JSON object whose `"mp3"`
//! field is the song in base64. The base64 is decoded straight into a stream for the store,
//! so memory stays bounded whatever the body's size; every other field is kept (at most
//! [`MAX_OTHER_FIELDS`] bytes of JSON in all) and parsed with serde once read.

use std::future::Future;

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use pipeline::BackendError;
use pipeline::traits::ByteStream;
use serde_json::{Map, Value};

/// JSON of all the fields but `mp3`, together (model, songhash, callback with its data, ...).
pub(crate) const MAX_OTHER_FIELDS: usize = 64 * 1024;

/// The field that carries the audio.
const AUDIO_FIELD: &str = "mp3";

/// Base64 characters decoded at a time (a multiple of 4): ~24 KiB of audio per chunk sent.
const DECODE_BATCH: usize = 32 * 1024;

/// Decoded chunks in flight between the reader and the store.
const CHANNEL_DEPTH: usize = 4;

/// Nesting a field value may have (serde_json's own limit is 128).
const MAX_DEPTH: usize = 64;

/// Longest `data:<type>;base64,` prefix looked for before the payload.
const MAX_DATA_URL_HEADER: usize = 256;

/// Standard base64, padded or not, as the old service's clients sent it.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why the body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// Not the JSON object expected, or `mp3` not base64: the client's fault (400).
    #[error("{0}")]
    Malformed(String),
    /// Over the body limit (413).
    #[error("the body is larger than its limit")]
    TooLarge,
    /// The body could not be read (cut short, timed out): the client's side (400).
    #[error("the request could not be read: {0}")]
    Read(BackendError),
    /// The consumer of the audio stopped taking it (it refused the upload): its answer is
    /// the one to give.
    #[error("the upload was refused while it was read")]
    Abandoned,
}

fn malformed(message: impl Into<String>) -> BodyError {
    BodyError::Malformed(message.into())
}

/// Reads a whole legacy body of at most `limit` bytes. When the `mp3` string begins,
/// `on_audio` gets the fields read so far and the decoded audio as a stream, and its future
/// runs alongside the rest of the read. Returns the other fields (or why the body is bad)
/// and what `on_audio` came to, if it was called. Should the read fail once `on_audio` has
/// the stream, the stream ends with an error, so nothing partial is taken for the song.
pub(crate) async fn read<F, Fut, T>(
    body: ByteStream,
    limit: u64,
    on_audio: F,
) -> (Result<Map<String, Value>, BodyError>, Option<T>)
where
    F: FnOnce(Map<String, Value>, ByteStream) -> Fut,
    Fut: Future<Output = T>,
{
    let mut reader = Reader::new(body, limit);
    let mut fields = Map::new();
    let mut on_audio = Some(on_audio);
    let mut outcome = None;
    let result = async {
        reader
            .expect_next(b'{', "the body is not a JSON object")
            .await?;
        if reader.next_non_space().await? == Some(b'}') {
            reader.advance(1);
            return reader.expect_end().await;
        }
        loop {
            let key = reader.key().await?;
            if fields.contains_key(&key) || (key == AUDIO_FIELD && on_audio.is_none()) {
                return Err(malformed(format!("the JSON gives {key:?} more than once")));
            }
            let audio_here = key == AUDIO_FIELD && reader.next_non_space().await? == Some(b'"');
            match on_audio.take_if(|_| audio_here) {
                Some(on_audio) => {
                    reader.advance(1);
                    let (sender, receiver) = mpsc::channel(CHANNEL_DEPTH);
                    let consumer = on_audio(fields.clone(), receiver.boxed());
                    let (streamed, consumed) =
                        futures::join!(reader.audio_string(sender), consumer);
                    outcome = Some(consumed);
                    streamed?;
                }
                // `mp3` that is not a string is kept as a field, for the caller to refuse.
                None => {
                    let value = reader.value().await?;
                    fields.insert(key, value);
                }
            }
            match reader.next_non_space().await? {
                Some(b',') => reader.advance(1),
                Some(b'}') => {
                    reader.advance(1);
                    return reader.expect_end().await;
                }
                _ => return Err(malformed("expected ',' or '}' after a field of the JSON")),
            }
        }
    }
    .await;
    (result.map(|()| fields), outcome)
}

/// The body as bytes, one buffered chunk at a time, counted against the limit.
struct Reader {
    body: ByteStream,
    chunk: Bytes,
    pos: usize,
    read: u64,
    limit: u64,
    /// Bytes of JSON kept for the fields other than `mp3`.
    kept: usize,
}

impl Reader {
    fn new(body: ByteStream, limit: u64) -> Self {
        Self {
            body,
            chunk: Bytes::new(),
            pos: 0,
            read: 0,
            limit,
            kept: 0,
        }
    }

    /// The unread part of the current chunk, reading the next one when it is used up;
    /// empty at the end of the body.
    async fn fill(&mut self) -> Result<&[u8], BodyError> {
        while self.pos >= self.chunk.len() {
            match self.body.next().await {
                None => return Ok(&[]),
                Some(Err(err)) => return Err(BodyError::Read(err)),
                Some(Ok(chunk)) => {
                    self.read += chunk.len() as u64;
                    if self.read > self.limit {
                        return Err(BodyError::TooLarge);
                    }
                    self.chunk = chunk;
                    self.pos = 0;
                }
            }
        }
        Ok(&self.chunk[self.pos..])
    }

    fn advance(&mut self, n: usize) {
        self.pos += n;
    }

    async fn peek(&mut self) -> Result<Option<u8>, BodyError> {
        Ok(self.fill().await?.first().copied())
    }

    /// The next byte that is not JSON whitespace, left unread.
    async fn next_non_space(&mut self) -> Result<Option<u8>, BodyError> {
        loop {
            match self.peek().await? {
                Some(b' ' | b'\t' | b'\n' | b'\r') => self.advance(1),
                other => return Ok(other),
            }
        }
    }

    async fn expect_next(&mut self, byte: u8, message: &str) -> Result<(), BodyError> {
        if self.next_non_space().await? == Some(byte) {
            self.advance(1);
            Ok(())
        } else {
            Err(malformed(message))
        }
    }

    async fn expect_end(&mut self) -> Result<(), BodyError> {
        match self.next_non_space().await? {
            None => Ok(()),
            Some(_) => Err(malformed("the body goes on after its JSON object")),
        }
    }

    /// Counts `n` more bytes against the budget of the fields other than `mp3`.
    fn keep(&mut self, n: usize) -> Result<(), BodyError> {
        self.kept += n;
        if self.kept > MAX_OTHER_FIELDS {
            return Err(malformed(format!(
                "the fields other than \"mp3\" are over {MAX_OTHER_FIELDS} bytes of JSON"
            )));
        }
        Ok(())
    }

    /// One byte of a kept token.
    async fn take_byte(&mut self, token: &mut Vec<u8>) -> Result<u8, BodyError> {
        let Some(byte) = self.peek().await? else {
            return Err(malformed("the JSON ends in the middle of a value"));
        };
        self.advance(1);
        self.keep(1)?;
        token.push(byte);
        Ok(byte)
    }

    /// A field name and its `:`.
    async fn key(&mut self) -> Result<String, BodyError> {
        if self.next_non_space().await? != Some(b'"') {
            return Err(malformed("expected a field name in quotes in the JSON"));
        }
        let mut token = Vec::new();
        self.raw_string(&mut token).await?;
        let key = serde_json::from_slice::<String>(&token)
            .map_err(|err| malformed(format!("a field name of the JSON is invalid: {err}")))?;
        self.expect_next(b':', "expected ':' after a field name of the JSON")
            .await?;
        Ok(key)
    }

    /// A JSON string token, quotes and escapes as they are, appended to `token`.
    async fn raw_string(&mut self, token: &mut Vec<u8>) -> Result<(), BodyError> {
        self.take_byte(token).await?; // the opening quote
        loop {
            match self.take_byte(token).await? {
                b'"' => return Ok(()),
                b'\\' => {
                    self.take_byte(token).await?;
                }
                _ => {}
            }
        }
    }

    /// A field value (of any JSON type), parsed.
    async fn value(&mut self) -> Result<Value, BodyError> {
        let mut token = Vec::new();
        match self.next_non_space().await? {
            None => return Err(malformed("the JSON ends where a value should be")),
            Some(b'"') => self.raw_string(&mut token).await?,
            Some(b'{' | b'[') => {
                let mut depth = 0usize;
                loop {
                    match self.peek().await? {
                        Some(b'"') => self.raw_string(&mut token).await?,
                        Some(_) => match self.take_byte(&mut token).await? {
                            b'{' | b'[' => {
                                depth += 1;
                                if depth > MAX_DEPTH {
                                    return Err(malformed(format!(
                                        "a value of the JSON nests deeper than {MAX_DEPTH}"
                                    )));
                                }
                            }
                            b'}' | b']' => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            _ => {}
                        },
                        None => return Err(malformed("the JSON ends in the middle of a value")),
                    }
                }
            }
            Some(_) => {
                // A number, true, false or null: up to the next delimiter.
                while let Some(byte) = self.peek().await? {
                    if matches!(byte, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.take_byte(&mut token).await?;
                }
            }
        }
        serde_json::from_slice(&token)
            .map_err(|err| malformed(format!("the body is not the expected JSON: {err}")))
    }

    /// The rest of the `mp3` string (its opening quote read), decoded from base64 into
    /// `sender`. On any failure the stream gets an error item, so that the consumer never
    /// takes a partial song for a whole one.
    async fn audio_string(
        &mut self,
        mut sender: mpsc::Sender<Result<Bytes, BackendError>>,
    ) -> Result<(), BodyError> {
        let mut decoder = Base64Stream::default();
        let result = self.decode_string(&mut decoder, &mut sender).await;
        match result {
            Ok(()) => Ok(()),
            Err(BodyError::Abandoned) => Err(BodyError::Abandoned),
            Err(err) => {
                // Ignored: a consumer that already stopped has its own answer.
                let _ = sender
                    .send(Err(BackendError::ClientBody(err.to_string())))
                    .await;
                Err(err)
            }
        }
    }

    async fn decode_string(
        &mut self,
        decoder: &mut Base64Stream,
        sender: &mut mpsc::Sender<Result<Bytes, BackendError>>,
    ) -> Result<(), BodyError> {
        loop {
            let available = self.fill().await?;
            if available.is_empty() {
                return Err(malformed("the JSON ends inside the \"mp3\" string"));
            }
            let run = available
                .iter()
                .position(|&b| b == b'"' || b == b'\\')
                .unwrap_or(available.len());
            decoder.push_raw(&available[..run])?;
            let special = available.get(run).copied();
            self.advance(run);
            match special {
                Some(b'"') => {
                    self.advance(1);
                    let last = decoder.finish()?;
                    send(sender, last).await?;
                    sender.close_channel();
                    return Ok(());
                }
                Some(_) => {
                    self.advance(1);
                    let escaped = self.escape().await?;
                    decoder.push_char(escaped)?;
                }
                None => {}
            }
            if decoder.ready() {
                let decoded = decoder.decode_ready()?;
                send(sender, decoded).await?;
            }
        }
    }

    /// The character a string escape stands for (its backslash read).
    async fn escape(&mut self) -> Result<char, BodyError> {
        let Some(kind) = self.peek().await? else {
            return Err(malformed("the JSON ends inside a string escape"));
        };
        self.advance(1);
        Ok(match kind {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let mut code = 0u32;
                for _ in 0..4 {
                    let digit = self
                        .peek()
                        .await?
                        .and_then(|b| char::from(b).to_digit(16))
                        .ok_or_else(|| malformed("a \\u escape of the JSON is invalid"))?;
                    self.advance(1);
                    code = code * 16 + digit;
                }
                // A surrogate is never a base64 character: it fails as one.
                char::from_u32(code).unwrap_or('\u{fffd}')
            }
            _ => return Err(malformed("an escape of the JSON is invalid")),
        })
    }
}

async fn send(
    sender: &mut mpsc::Sender<Result<Bytes, BackendError>>,
    bytes: Vec<u8>,
) -> Result<(), BodyError> {
    if bytes.is_empty() {
        return Ok(());
    }
    sender
        .send(Ok(Bytes::from(bytes)))
        .await
        .map_err(|_| BodyError::Abandoned)
}

/// Base64 decoded as its characters arrive: whitespace skipped, an optional
/// `data:<type>;base64,` prefix dropped, padding allowed only at the end.
#[derive(Default)]
struct Base64Stream {
    /// Characters not decoded yet.
    pending: Vec<u8>,
    /// Whether the payload has begun (the `data:` check is done).
    started: bool,
    /// Inside a `data:` URL's header, before its `,`.
    in_data_header: bool,
    header_len: usize,
    /// Padding seen: nothing but whitespace may follow.
    padded: bool,
}

fn not_base64() -> BodyError {
    malformed("\"mp3\" is not valid base64")
}

impl Base64Stream {
    fn push_raw(&mut self, raw: &[u8]) -> Result<(), BodyError> {
        for &byte in raw {
            if byte < 0x20 {
                return Err(malformed(
                    "the body is not the expected JSON: a control character in a string",
                ));
            }
            self.push_byte(byte)?;
        }
        Ok(())
    }

    fn push_char(&mut self, c: char) -> Result<(), BodyError> {
        match u8::try_from(c) {
            Ok(byte) => self.push_byte(byte),
            Err(_) => Err(not_base64()),
        }
    }

    fn push_byte(&mut self, byte: u8) -> Result<(), BodyError> {
        if byte.is_ascii_whitespace() {
            return Ok(());
        }
        if self.in_data_header {
            self.header_len += 1;
            if byte == b',' {
                self.in_data_header = false;
            } else if self.header_len > MAX_DATA_URL_HEADER {
                return Err(not_base64());
            }
            return Ok(());
        }
        if self.padded && byte != b'=' {
            return Err(malformed(
                "\"mp3\" is not valid base64: padding before its end",
            ));
        }
        if byte == b'=' {
            self.padded = true;
        }
        self.pending.push(byte);
        if !self.started && (self.pending.len() >= 5 || !b"data:".starts_with(&self.pending)) {
            self.started = true;
            if self.pending == b"data:" {
                self.pending.clear();
                self.in_data_header = true;
            }
        }
        Ok(())
    }

    fn ready(&self) -> bool {
        self.started && self.pending.len() >= DECODE_BATCH
    }

    /// Decodes the whole groups of four characters pending.
    fn decode_ready(&mut self) -> Result<Vec<u8>, BodyError> {
        let whole = self.pending.len() / 4 * 4;
        let decoded = LENIENT_BASE64
            .decode(&self.pending[..whole])
            .map_err(|_| not_base64())?;
        self.pending.drain(..whole);
        Ok(decoded)
    }

    /// Decodes what is left at the end of the string.
    fn finish(&mut self) -> Result<Vec<u8>, BodyError> {
        if self.in_data_header {
            return Err(not_base64());
        }
        let decoded = LENIENT_BASE64
            .decode(&self.pending)
            .map_err(|_| not_base64())?;
        self.pending.clear();
        Ok(decoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in chunks of `split` bytes; returns the fields and the decoded audio.
    async fn parse(body: &[u8], split: usize) -> Result<(Map<String, Value>, Vec<u8>), String> {
        let chunks: Vec<Result<Bytes, BackendError>> = body
            .chunks(split.max(1))
            .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
            .collect();
        let stream = futures::stream::iter(chunks).boxed();
        let (fields, audio) = read(stream, 1 << 20, |_, audio: ByteStream| async move {
            let parts: Vec<Result<Bytes, BackendError>> = audio.collect().await;
            parts
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
                .map(|parts| parts.concat())
        })
        .await;
        let fields = fields.map_err(|err| err.to_string())?;
        let audio = audio
            .transpose()
            .map_err(|err| err.to_string())?
            .unwrap_or_default();
        Ok((fields, audio))
    }

    fn encode(audio: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(audio)
    }

    #[tokio::test]
    async fn audio_and_fields_in_any_order_and_any_split() {
        let audio: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let b64 = encode(&audio);
        let bodies = [
            format!(
                r#"{{"mp3": "{b64}", "model": "htdemucs", "callback": {{"url": "http://x/", "data": {{"a": [1, "}}"]}}}}}}"#
            ),
            format!(r#" {{ "songhash" : "abc", "mp3":"{b64}" , "n":null }} "#),
            format!(r#"{{"mp3":"data:audio/mpeg;base64,{b64}","t":true}}"#),
            // Wrapped lines and escaped slashes, as some encoders write them.
            format!(
                r#"{{"mp3":"{}"}}"#,
                b64.as_bytes()
                    .chunks(76)
                    .map(|line| std::str::from_utf8(line).unwrap())
                    .collect::<Vec<_>>()
                    .join("\\n")
                    .replace('/', "\\/")
            ),
            format!(r#"{{"mp3":"{}"}}"#, b64.trim_end_matches('=')),
        ];
        for body in &bodies {
            for split in [1, 7, 4096, body.len()] {
                let (fields, decoded) = parse(body.as_bytes(), split)
                    .await
                    .unwrap_or_else(|err| panic!("{err}: {}, split {split}", &body[..40]));
                assert_eq!(decoded, audio, "split {split}");
                let whole: Value = serde_json::from_str(body).unwrap();
                let mut expected = whole.as_object().unwrap().clone();
                expected.remove("mp3");
                assert_eq!(fields, expected);
            }
        }
    }

    #[tokio::test]
    async fn a_body_without_audio_gives_its_fields() {
        let (fields, audio) = parse(br#"{"model": "x"}"#, 3).await.unwrap();
        assert_eq!(fields["model"], "x");
        assert!(audio.is_empty());
        let (fields, _) = parse(b"{}", 1).await.unwrap();
        assert!(fields.is_empty());
    }

    #[tokio::test]
    async fn malformed_bodies_are_refused() {
        let cases: &[&[u8]] = &[
            b"",
            b"[]",
            b"{",
            b"{\"mp3\": \"QUJD",
            b"{\"mp3\": \"QUJD\"",
            b"{\"mp3\": \"QUJD\"} x",
            b"{\"mp3\": \"QU!D\"}",
            b"{\"mp3\": \"QQ==QUJD\"}",
            b"{\"mp3\": \"Q\"}",
            b"{\"mp3\": \"QU\nJD\"}",
            b"{\"mp3\": \"QUJD\\x\"}",
            b"{\"mp3\": \"QUJD\\u00e9\"}",
            b"{\"mp3\": \"QUJD\", \"mp3\": \"QUJD\"}",
            b"{\"model\": 1, \"model\": 2}",
            b"{\"model\" 1}",
            b"{\"model\": tru}",
            b"{\"model\": {\"a\": 1}",
            b"{model: 1}",
            b"{\"mp3\": \"data:audio/mpeg;base64\"}",
        ];
        for case in cases {
            for split in [1, 5, case.len().max(1)] {
                assert!(
                    parse(case, split).await.is_err(),
                    "{:?} split {split}",
                    String::from_utf8_lossy(case)
                );
            }
        }
    }

    #[tokio::test]
    async fn other_fields_are_bounded() {
        let big = "x".repeat(MAX_OTHER_FIELDS + 1);
        let body = format!(r#"{{"name": "{big}", "mp3": "QUJD"}}"#);
        let err = parse(body.as_bytes(), 1000).await.unwrap_err();
        assert!(err.contains("other than"), "{err}");
        let deep = format!(r#"{{"d": {}{}}}"#, "[".repeat(100), "]".repeat(100));
        let err = parse(deep.as_bytes(), 1000).await.unwrap_err();
        assert!(err.contains("nests"), "{err}");
    }

    #[tokio::test]
    async fn the_limit_holds_while_streaming() {
        let body = format!(r#"{{"mp3": "{}"}}"#, "QUJD".repeat(1000));
        let stream = futures::stream::iter(
            body.as_bytes()
                .chunks(100)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        )
        .boxed();
        let (fields, audio) = read(stream, 1000, |_, audio: ByteStream| async move {
            audio.collect::<Vec<_>>().await
        })
        .await;
        assert!(matches!(fields, Err(BodyError::TooLarge)));
        // The consumer saw an error, never a clean end of a cut song.
        let items = audio.unwrap();
        assert!(items.last().unwrap().is_err());
    }

    #[tokio::test]
    async fn a_consumer_that_stops_ends_the_read() {
        let body = format!(r#"{{"mp3": "{}"}}"#, "QUJD".repeat(100_000));
        // In chunks: the reader has more to send after the consumer is gone.
        let chunks: Vec<Result<Bytes, BackendError>> = body
            .as_bytes()
            .chunks(1000)
            .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
            .collect();
        let stream = futures::stream::iter(chunks).boxed();
        let (fields, outcome) = read(stream, 1 << 30, |_, audio: ByteStream| async move {
            drop(audio);
            "refused"
        })
        .await;
        assert!(matches!(fields, Err(BodyError::Abandoned)));
        assert_eq!(outcome, Some("refused"));
    }
}
