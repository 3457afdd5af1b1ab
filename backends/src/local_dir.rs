//! A local directory as the blob store (embedded mode). Keys are relative paths under the
//! root; every write goes to a temporary file in the target's directory, is synced, then
//! renamed over the target, so a reader sees the old object or the whole new one.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use pipeline::traits::{BackendError, BlobStore, ByteStream, Location, ObjectInfo, PutOutcome};

/// Marks temporary files; keys containing it are refused so no object can collide with one.
const TEMP_MARKER: &str = ".msaas-tmp.";

/// The local-directory [`BlobStore`].
#[derive(Debug, Clone)]
pub struct LocalDirStore {
    root: PathBuf,
}

impl LocalDirStore {
    /// Uses (and creates) `root`; a relative root is made absolute against the current
    /// directory so that [`BlobStore::locate`] paths stay valid if it changes.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, BackendError> {
        let root = std::path::absolute(root.into())?;
        std::fs::create_dir_all(&root)?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file a key is stored in (whether or not it exists).
    pub fn path_of(&self, key: &str) -> Result<PathBuf, BackendError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }
}

/// A key is a relative path of non-empty segments, none `.` or `..`; no backslashes or NULs
/// (so it means the same on every platform and every backend).
pub fn validate_key(key: &str) -> Result<(), BackendError> {
    let invalid = key.is_empty()
        || key.starts_with('/')
        || key.contains(['\\', '\0'])
        || key.contains(TEMP_MARKER)
        || key
            .split('/')
            .any(|segment| segment.is_empty() || segment == "." || segment == "..");
    if invalid {
        Err(BackendError::InvalidKey(key.to_owned()))
    } else {
        Ok(())
    }
}

/// Removes the temporary file unless the write completed: on an error, an over-limit body,
/// or when the writing future is dropped (cancelled) midway. In a store it also removes the
/// folders the write made that are left empty, so a refused upload leaves nothing.
struct TempFileGuard {
    path: PathBuf,
    armed: bool,
    store_root: Option<PathBuf>,
}

impl Drop for TempFileGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Err(err) = std::fs::remove_file(&self.path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), %err, "could not remove temporary file");
        }
        if let Some(root) = &self.store_root {
            prune_empty_folders(root, &self.path);
        }
    }
}

/// Removes the now-empty folders between `path` and the store's top-level prefixes
/// (`uploads/`, `work/`, `results/` stay): a store, like object storage, holds no empty
/// folders. A folder something was written to meanwhile is not empty, and stays.
fn prune_empty_folders(root: &Path, path: &Path) {
    let mut folder = path.parent();
    while let Some(dir) = folder {
        let depth = dir
            .strip_prefix(root)
            .map_or(0, |rel| rel.components().count());
        if depth < 2 || std::fs::remove_dir(dir).is_err() {
            break;
        }
        folder = dir.parent();
    }
}

/// Writes `body` to `target` atomically (temp file in the same directory + fsync + rename).
async fn write_atomically(
    target: &Path,
    mut body: ByteStream,
    limit: Option<u64>,
    store_root: Option<&Path>,
) -> Result<PutOutcome, BackendError> {
    let dir = match target.parent() {
        // A bare file name: the current directory.
        Some(parent) if parent.as_os_str().is_empty() => Path::new("."),
        Some(parent) => parent,
        None => return Err(BackendError::InvalidKey(target.display().to_string())),
    };
    let name = target
        .file_name()
        .ok_or_else(|| BackendError::InvalidKey(target.display().to_string()))?;
    tokio::fs::create_dir_all(dir).await?;
    let temp_path = dir.join(format!(
        ".{}{TEMP_MARKER}{}",
        name.to_string_lossy(),
        uuid::Uuid::new_v4().simple()
    ));
    let mut guard = TempFileGuard {
        path: temp_path.clone(),
        armed: true,
        store_root: store_root.map(Path::to_owned),
    };
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    let mut file = match options.open(&temp_path).await {
        // A failed write of the same job pruned the folder in between: make it again.
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            tokio::fs::create_dir_all(dir).await?;
            options.open(&temp_path).await?
        }
        other => other?,
    };
    let mut written: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        written = written.saturating_add(chunk.len() as u64);
        if let Some(limit) = limit
            && written > limit
        {
            // Stop reading right here; the guard removes what was written.
            return Ok(PutOutcome::OverLimit { limit });
        }
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(&temp_path, target).await?;
    guard.armed = false;
    sync_dir(dir).await?;
    Ok(PutOutcome::Stored { bytes: written })
}

/// Copies a stream into a local file, atomically: every store's `get_to_file`.
pub(crate) async fn copy_to_file(body: ByteStream, path: &Path) -> Result<u64, BackendError> {
    match write_atomically(path, body, None, None).await? {
        PutOutcome::Stored { bytes } => Ok(bytes),
        PutOutcome::OverLimit { limit } => Err(BackendError::Storage(format!(
            "unlimited write reported over limit {limit}"
        ))),
    }
}

/// Makes the rename itself durable.
async fn sync_dir(dir: &Path) -> Result<(), BackendError> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(|err| BackendError::Storage(format!("directory sync task failed: {err}")))??;
    Ok(())
}

fn not_found_as(key: &str, err: std::io::Error) -> BackendError {
    if err.kind() == std::io::ErrorKind::NotFound {
        BackendError::NotFound(key.to_owned())
    } else {
        BackendError::Io(err)
    }
}

#[async_trait]
impl BlobStore for LocalDirStore {
    async fn put_stream(
        &self,
        key: &str,
        body: ByteStream,
        limit: Option<u64>,
    ) -> Result<PutOutcome, BackendError> {
        let target = self.path_of(key)?;
        write_atomically(&target, body, limit, Some(&self.root)).await
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<u64, BackendError> {
        let target = self.path_of(key)?;
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|err| not_found_as(&path.display().to_string(), err))?;
        let body = ReaderStream::new(file)
            .map(|chunk| chunk.map_err(BackendError::from))
            .boxed();
        match write_atomically(&target, body, None, Some(&self.root)).await? {
            PutOutcome::Stored { bytes } => Ok(bytes),
            PutOutcome::OverLimit { limit } => Err(BackendError::Storage(format!(
                "unlimited write reported over limit {limit}"
            ))),
        }
    }

    async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<(), BackendError> {
        let target = self.path_of(key)?;
        let body = futures::stream::once(async move { Ok(bytes) }).boxed();
        write_atomically(&target, body, None, Some(&self.root))
            .await
            .map(|_| ())
    }

    async fn get_stream(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<ByteStream, BackendError> {
        let path = self.path_of(key)?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|err| not_found_as(key, err))?;
        let metadata = file.metadata().await?;
        if !metadata.is_file() {
            return Err(BackendError::NotFound(key.to_owned()));
        }
        let size = metadata.len();
        let Some((start, end)) = range else {
            return Ok(ReaderStream::new(file)
                .map(|chunk| chunk.map_err(BackendError::from))
                .boxed());
        };
        if start > end || start > size {
            return Err(BackendError::InvalidRange {
                key: key.to_owned(),
                start,
                end,
                size,
            });
        }
        let end = end.min(size);
        file.seek(SeekFrom::Start(start)).await?;
        Ok(ReaderStream::new(file.take(end - start))
            .map(|chunk| chunk.map_err(BackendError::from))
            .boxed())
    }

    async fn get_to_file(&self, key: &str, path: &Path) -> Result<u64, BackendError> {
        let body = self.get_stream(key, None).await?;
        copy_to_file(body, path).await
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, BackendError> {
        let path = self.path_of(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(metadata) if metadata.is_file() => Ok(Some(metadata.len())),
            Ok(_) => Ok(None),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err.into()),
            _ => {
                prune_empty_folders(&self.root, &path);
                Ok(())
            }
        }
    }

    /// `prefix` is a key prefix as in object storage: `"work/{job}/"` removes that
    /// directory, `"work/ab"` removes every entry of `work/` whose name starts with `ab`.
    async fn delete_prefix(&self, prefix: &str) -> Result<(), BackendError> {
        let (parent, partial) = match prefix.strip_suffix('/') {
            Some(dir) => {
                validate_key(dir)?;
                let path = self.root.join(dir);
                return match tokio::fs::remove_dir_all(&path).await {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err.into()),
                    _ => Ok(()),
                };
            }
            None => {
                validate_key(prefix)?;
                match prefix.rsplit_once('/') {
                    Some((parent, partial)) => (self.root.join(parent), partial),
                    None => (self.root.clone(), prefix),
                }
            }
        };
        let mut entries = match tokio::fs::read_dir(&parent).await {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(err.into()),
        };
        while let Some(entry) = entries.next_entry().await? {
            if !entry.file_name().to_string_lossy().starts_with(partial) {
                continue;
            }
            let result = if entry.file_type().await?.is_dir() {
                tokio::fs::remove_dir_all(entry.path()).await
            } else {
                tokio::fs::remove_file(entry.path()).await
            };
            match result {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err.into()),
                _ => {}
            }
        }
        Ok(())
    }

    async fn locate(&self, key: &str, _expires: Duration) -> Result<Location, BackendError> {
        let path = self.path_of(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(metadata) if metadata.is_file() => Ok(Location::Path(path)),
            Ok(_) => Err(BackendError::NotFound(key.to_owned())),
            Err(err) => Err(not_found_as(key, err)),
        }
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectInfo>, BackendError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        let start_after = start_after.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            let mut listing = Listing {
                prefix: &prefix,
                start_after: start_after.as_deref(),
                limit,
                objects: Vec::new(),
            };
            listing.walk(&root, "")?;
            Ok(listing.objects)
        })
        .await
        .map_err(|err| BackendError::Storage(format!("listing the local store: {err}")))?
    }
}

/// A page of [`LocalDirStore::list`]: the tree walked in key order, entering only folders
/// that can hold keys of the page, and stopping once the page is full.
struct Listing<'a> {
    prefix: &'a str,
    start_after: Option<&'a str>,
    limit: usize,
    objects: Vec<ObjectInfo>,
}

impl Listing<'_> {
    /// Collects the objects (files with a valid key: no write in progress) under `dir`, whose
    /// keys start with `relative`.
    fn walk(&mut self, dir: &Path, relative: &str) -> Result<(), BackendError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(err.into()),
        };
        // A folder's keys are its name and '/' followed by more: sorted by that, the walk
        // yields keys in order.
        let mut children = Vec::new();
        for entry in entries {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let file_type = entry.file_type()?;
            let key = if file_type.is_dir() {
                format!("{relative}{name}/")
            } else if file_type.is_file() {
                format!("{relative}{name}")
            } else {
                continue;
            };
            children.push((key, file_type.is_dir(), entry));
        }
        children.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, is_dir, entry) in children {
            if self.objects.len() >= self.limit {
                return Ok(());
            }
            if is_dir {
                let may_hold_prefix = key.starts_with(self.prefix) || self.prefix.starts_with(&key);
                // Every key inside sorts before the cursor unless the cursor lies inside.
                let before_cursor = self
                    .start_after
                    .is_some_and(|after| key.as_str() < after && !after.starts_with(&key));
                if may_hold_prefix && !before_cursor {
                    self.walk(&entry.path(), &key)?;
                }
            } else if key.starts_with(self.prefix)
                && self.start_after.is_none_or(|after| key.as_str() > after)
                && validate_key(&key).is_ok()
            {
                let modified_ms = entry
                    .metadata()?
                    .modified()
                    .ok()
                    .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |since| {
                        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
                    });
                self.objects.push(ObjectInfo { key, modified_ms });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(store: &LocalDirStore, key: &str, range: Option<(u64, u64)>) -> Vec<u8> {
        let mut stream = store.get_stream(key, range).await.unwrap();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    fn chunks(parts: Vec<Vec<u8>>) -> ByteStream {
        futures::stream::iter(parts.into_iter().map(|p| Ok(Bytes::from(p)))).boxed()
    }

    /// Files in the tree, temp files included.
    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                found.extend(files_under(&path));
            } else {
                found.push(path);
            }
        }
        found
    }

    #[test]
    fn keys_must_be_safe_relative_paths() {
        for bad in [
            "",
            "/etc/passwd",
            "../outside",
            "a/../../b",
            "a/./b",
            "a//b",
            "a/b/",
            "a\\b",
            "a\0b",
            "work/.x.msaas-tmp.123",
        ] {
            let err = validate_key(bad).unwrap_err();
            assert!(matches!(err, BackendError::InvalidKey(_)), "{bad:?}: {err}");
            assert_eq!(err.code(), pipeline::ErrorCode::BadRequest);
        }
        for good in [
            "uploads/abc/source",
            "work/j/stems/vocals.wav",
            "x",
            "a/.hidden",
        ] {
            validate_key(good).unwrap();
        }
    }

    #[tokio::test]
    async fn invalid_keys_are_refused_by_every_operation() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::new(dir.path()).unwrap();
        let key = "../escape";
        assert!(matches!(
            store.put_bytes(key, Bytes::from_static(b"x")).await,
            Err(BackendError::InvalidKey(_))
        ));
        assert!(matches!(
            store.get_stream(key, None).await,
            Err(BackendError::InvalidKey(_))
        ));
        assert!(matches!(
            store.size(key).await,
            Err(BackendError::InvalidKey(_))
        ));
        assert!(matches!(
            store.delete(key).await,
            Err(BackendError::InvalidKey(_))
        ));
        assert!(matches!(
            store.delete_prefix("../").await,
            Err(BackendError::InvalidKey(_))
        ));
        assert!(matches!(
            store.delete_prefix("").await,
            Err(BackendError::InvalidKey(_))
        ));
        assert!(!dir.path().parent().unwrap().join("escape").exists());
    }

    #[tokio::test]
    async fn put_get_size_locate_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::new(dir.path()).unwrap();
        let key = "results/j1/vocals.wav";
        assert_eq!(store.size(key).await.unwrap(), None);
        assert!(matches!(
            store.get_stream(key, None).await,
            Err(BackendError::NotFound(_))
        ));
        assert!(matches!(
            store.locate(key, Duration::from_secs(1)).await,
            Err(BackendError::NotFound(_))
        ));

        let outcome = store
            .put_stream(
                key,
                chunks(vec![b"hello ".to_vec(), b"world".to_vec()]),
                Some(11),
            )
            .await
            .unwrap();
        assert_eq!(outcome, PutOutcome::Stored { bytes: 11 });
        assert_eq!(read_all(&store, key, None).await, b"hello world");
        assert_eq!(store.size(key).await.unwrap(), Some(11));
        let Location::Path(path) = store.locate(key, Duration::from_secs(1)).await.unwrap() else {
            panic!("local store locates by path");
        };
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
        assert!(path.is_absolute());

        // Overwrite replaces.
        store
            .put_bytes(key, Bytes::from_static(b"new"))
            .await
            .unwrap();
        assert_eq!(read_all(&store, key, None).await, b"new");

        store.delete(key).await.unwrap();
        store.delete(key).await.unwrap();
        assert_eq!(store.size(key).await.unwrap(), None);
        assert!(files_under(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn ranges() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::new(dir.path()).unwrap();
        let data: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        store
            .put_bytes("k", Bytes::from(data.clone()))
            .await
            .unwrap();
        assert_eq!(read_all(&store, "k", Some((10, 20))).await, &data[10..20]);
        assert_eq!(
            read_all(&store, "k", Some((99_990, 200_000))).await,
            &data[99_990..]
        );
        assert_eq!(read_all(&store, "k", Some((0, 100_000))).await, data);
        assert!(read_all(&store, "k", Some((5, 5))).await.is_empty());
        assert!(matches!(
            store.get_stream("k", Some((20, 10))).await,
            Err(BackendError::InvalidRange { size: 100_000, .. })
        ));
        assert!(matches!(
            store.get_stream("k", Some((100_001, 100_002))).await,
            Err(BackendError::InvalidRange { .. })
        ));
    }

    #[tokio::test]
    async fn limit_stops_reading_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::new(dir.path()).unwrap();
        let pulled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = pulled.clone();
        // An endless body: only stopping at the limit ends this put.
        let body = futures::stream::repeat_with(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Bytes::from(vec![7u8; 1000]))
        })
        .boxed();
        let outcome = store
            .put_stream("uploads/j/source", body, Some(10_500))
            .await
            .unwrap();
        assert_eq!(outcome, PutOutcome::OverLimit { limit: 10_500 });
        assert_eq!(pulled.load(std::sync::atomic::Ordering::SeqCst), 11);
        assert_eq!(store.size("uploads/j/source").await.unwrap(), None);
        assert!(
            files_under(dir.path()).is_empty(),
            "{:?}",
            files_under(dir.path())
        );

        // Exactly at the limit is fine; an old object survives a refused overwrite.
        let exact = chunks(vec![vec![1u8; 500], vec![2u8; 500]]);
        assert_eq!(
            store.put_stream("a", exact, Some(1000)).await.unwrap(),
            PutOutcome::Stored { bytes: 1000 }
        );
        let over = chunks(vec![vec![3u8; 1001]]);
        assert_eq!(
            store.put_stream("a", over, Some(1000)).await.unwrap(),
            PutOutcome::OverLimit { limit: 1000 }
        );
        assert_eq!(store.size("a").await.unwrap(), Some(1000));
    }

    #[tokio::test]
    async fn failing_body_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::new(dir.path()).unwrap();
        let body = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"part")),
            Err(BackendError::Storage("client went away".into())),
        ])
        .boxed();
        assert!(store.put_stream("x/y", body, None).await.is_err());
        assert!(files_under(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn cancelled_put_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::new(dir.path()).unwrap();
        let body = futures::stream::iter(vec![Bytes::from_static(b"first")])
            .map(Ok)
            .chain(futures::stream::pending())
            .boxed();
        let put = store.put_stream("x/y", body, None);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), put)
                .await
                .is_err()
        );
        assert!(
            files_under(dir.path()).is_empty(),
            "{:?}",
            files_under(dir.path())
        );
    }

    #[tokio::test]
    async fn put_file_and_get_to_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::new(dir.path().join("store")).unwrap();
        let source = dir.path().join("in.bin");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&source, &data).unwrap();
        assert_eq!(
            store.put_file("uploads/j/source", &source).await.unwrap(),
            300_000
        );
        let copy = dir.path().join("out/copy.bin");
        assert_eq!(
            store.get_to_file("uploads/j/source", &copy).await.unwrap(),
            300_000
        );
        assert_eq!(std::fs::read(&copy).unwrap(), data);
        assert!(matches!(
            store.put_file("k", &dir.path().join("missing")).await,
            Err(BackendError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn delete_prefix_removes_exactly_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::new(dir.path()).unwrap();
        for key in [
            "work/j1/mix.wav",
            "work/j1/stems/a.wav",
            "work/j10/mix.wav",
            "work/j2/mix.wav",
        ] {
            store
                .put_bytes(key, Bytes::from_static(b"x"))
                .await
                .unwrap();
        }
        store.delete_prefix("work/j1/").await.unwrap();
        assert_eq!(store.size("work/j1/mix.wav").await.unwrap(), None);
        assert_eq!(store.size("work/j1/stems/a.wav").await.unwrap(), None);
        assert_eq!(store.size("work/j10/mix.wav").await.unwrap(), Some(1));
        store.delete_prefix("work/j1").await.unwrap();
        assert_eq!(store.size("work/j10/mix.wav").await.unwrap(), None);
        assert_eq!(store.size("work/j2/mix.wav").await.unwrap(), Some(1));
        store.delete_prefix("nothing/here/").await.unwrap();
        store.delete_prefix("nothing/her").await.unwrap();
    }

    /// A reader polling while a slow write is under way sees nothing or the whole object —
    /// first for a new key, then for an overwrite (old whole or new whole).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reader_never_sees_a_partial_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::new(dir.path()).unwrap();
        let key = "work/j/mix.wav";
        let chunk_count = 40usize;
        let chunk_len = 16 * 1024;
        let new_content: Vec<u8> = (0..chunk_count * chunk_len)
            .map(|i| (i % 253) as u8)
            .collect();
        let old_content = b"old complete object".to_vec();

        for existing in [None, Some(old_content.clone())] {
            if let Some(old) = &existing {
                store
                    .put_bytes(key, Bytes::from(old.clone()))
                    .await
                    .unwrap();
            } else {
                store.delete(key).await.unwrap();
            }
            let parts: Vec<Bytes> = new_content
                .chunks(chunk_len)
                .map(Bytes::copy_from_slice)
                .collect();
            let slow_body = futures::stream::iter(parts)
                .then(|part| async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok(part)
                })
                .boxed();
            let writer = {
                let store = store.clone();
                tokio::spawn(async move { store.put_stream(key, slow_body, None).await })
            };
            let mut reads = 0usize;
            let mut saw_new = false;
            loop {
                let done = writer.is_finished();
                let seen = match store.get_stream(key, None).await {
                    Ok(mut stream) => {
                        let mut out = Vec::new();
                        while let Some(chunk) = stream.next().await {
                            out.extend_from_slice(&chunk.unwrap());
                        }
                        Some(out)
                    }
                    Err(BackendError::NotFound(_)) => None,
                    Err(err) => panic!("read failed: {err}"),
                };
                match (&seen, &existing) {
                    (None, None) => {}
                    (Some(bytes), _) if *bytes == new_content => saw_new = true,
                    (Some(bytes), Some(old)) if bytes == old => {}
                    (other, _) => panic!(
                        "reader saw a partial object: {:?} bytes",
                        other.as_ref().map(Vec::len)
                    ),
                }
                reads += 1;
                if done {
                    break;
                }
                tokio::task::yield_now().await;
            }
            writer.await.unwrap().unwrap();
            assert!(saw_new, "the final read sees the new object");
            assert!(
                reads > 10,
                "the reader polled during the write ({reads} reads)"
            );
        }
    }
}
