//! S3 (or any S3-compatible server: SeaweedFS, MinIO, …) as the blob store (distributed
//! mode), through aws-sdk-s3.
//!
//! - Uploads stream: a body is cut into [`PART_SIZE`] parts, [`PARTS_IN_FLIGHT`] sent at
//!   once (so at most that many + 1 parts are in memory). A body that fits one part is a
//!   single `PutObject`; a longer one a multipart upload. With a limit, the upload stops as
//!   soon as the body passes it and the multipart upload is aborted, so nothing is stored.
//!   S3 makes an object visible only when its `PutObject` or `CompleteMultipartUpload`
//!   succeeds: readers see the old object or the whole new one.
//! - Every request goes through the SDK's standard retry policy (a few attempts, exponential
//!   backoff with jitter) for connection errors, timeouts, 5xx and throttling. Each part is
//!   held as bytes, so a part upload can be retried too.
//! - Keys are checked with [`validate_key`] and stored under the configured prefix.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{
    BucketLocationConstraint, CompletedMultipartUpload, CompletedPart, CreateBucketConfiguration,
    Delete, ObjectIdentifier,
};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio_util::io::ReaderStream;

use crate::validate_key;
use pipeline::config::S3Config;
use pipeline::traits::{BackendError, BlobStore, ByteStream, Location, ObjectInfo, PutOutcome};

/// Size of each part of a multipart upload (S3's minimum for all parts but the last).
pub const PART_SIZE: usize = 5 * 1024 * 1024;

/// Parts of one upload sent at once: a streaming upload holds at most this many parts + 1 in
/// memory.
pub const PARTS_IN_FLIGHT: usize = 3;

/// `DeleteObjects` takes at most this many keys per request.
const DELETE_BATCH: usize = 1000;

/// Connection and retry settings; [`Default`] suits a service.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// Fixed credentials instead of the standard AWS chain (env, profile, web identity,
    /// container, instance metadata). For tests and tools.
    pub static_credentials: Option<(String, String)>,
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
    /// How long a response may take to start (and the gap between two reads of it).
    pub read_timeout: Duration,
    /// Tries per request, the first included.
    pub max_attempts: u32,
    /// First retry delay; it doubles (with jitter) on each further retry.
    pub initial_backoff: Duration,
}

impl Default for S3Options {
    fn default() -> Self {
        Self {
            static_credentials: None,
            connect_timeout: Duration::from_secs(3),
            read_timeout: Duration::from_secs(60),
            max_attempts: 4,
            initial_backoff: Duration::from_millis(200),
        }
    }
}

/// The S3 [`BlobStore`]. Cheap to clone (shared client).
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Empty, or ends with `/`.
    prefix: String,
    region: String,
}

impl S3Store {
    /// A store for `config`'s bucket with the standard AWS credential chain
    /// (`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, profiles, …). Sends nothing yet.
    pub async fn connect(config: &S3Config) -> Result<Self, BackendError> {
        Self::connect_with(config, S3Options::default()).await
    }

    /// [`S3Store::connect`] with explicit connection settings.
    pub async fn connect_with(config: &S3Config, options: S3Options) -> Result<Self, BackendError> {
        if config.bucket.is_empty() {
            return Err(BackendError::Storage(
                "no S3 bucket configured (storage.s3.bucket)".to_owned(),
            ));
        }
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(Region::new(config.region.clone()));
        if let Some((access_key, secret_key)) = &options.static_credentials {
            loader = loader.credentials_provider(Credentials::new(
                access_key.clone(),
                secret_key.clone(),
                None,
                None,
                "msaas-static",
            ));
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(config.path_style)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(options.max_attempts.max(1))
                    .with_initial_backoff(options.initial_backoff),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(options.connect_timeout)
                    .read_timeout(options.read_timeout)
                    .build(),
            )
            // Checksums only where S3 requires them: the newer default (trailing checksums in
            // aws-chunked bodies) is not understood by every S3-compatible server.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let prefix = match config.prefix.trim_matches('/') {
            "" => String::new(),
            trimmed => format!("{trimmed}/"),
        };
        Ok(Self {
            client: Client::from_conf(builder.build()),
            bucket: config.bucket.clone(),
            prefix,
            region: config.region.clone(),
        })
    }

    /// Creates the bucket if it does not exist (dev and test setups; production buckets are
    /// provisioned).
    pub async fn ensure_bucket(&self) -> Result<(), BackendError> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => return Ok(()),
            Err(err) if status_of(&err) == Some(404) => {}
            Err(err) => return Err(storage_error("HeadBucket", &self.bucket, err)),
        }
        let mut request = self.client.create_bucket().bucket(&self.bucket);
        // us-east-1 is the one region that must not be named as a location constraint.
        if self.region != "us-east-1" {
            request = request.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(self.region.as_str()))
                    .build(),
            );
        }
        match request.send().await {
            Ok(_) => Ok(()),
            Err(err)
                if matches!(
                    err.code(),
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                ) =>
            {
                Ok(())
            }
            Err(err) => Err(storage_error("CreateBucket", &self.bucket, err)),
        }
    }

    /// The SDK client (for tools and tests that need a request the store does not make).
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The object key a store key is kept under (the configured prefix + the key).
    pub fn object_key(&self, key: &str) -> Result<String, BackendError> {
        validate_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    async fn put_object(&self, object_key: &str, body: Bytes) -> Result<(), BackendError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(object_key)
            .content_length(body.len() as i64)
            .body(S3Body::from(body))
            .send()
            .await
            .map_err(|err| storage_error("PutObject", object_key, err))?;
        Ok(())
    }

    /// Uploads `body` under `object_key`: one `PutObject` if it fits a part, else a multipart
    /// upload. Stops reading once `limit` is passed.
    async fn upload(
        &self,
        object_key: &str,
        body: ByteStream,
        limit: Option<u64>,
    ) -> Result<PutOutcome, BackendError> {
        let mut multipart: Option<MultipartUpload> = None;
        let outcome = self
            .upload_parts(object_key, body, limit, &mut multipart)
            .await;
        // Anything but a stored object leaves nothing behind.
        if let Some(upload) = multipart.take()
            && !matches!(outcome, Ok(PutOutcome::Stored { .. }))
        {
            upload.abort().await;
        }
        outcome
    }

    /// The body of [`S3Store::upload`]; the multipart upload it opens (if any) is left in
    /// `multipart` for the caller to abort when this does not store the object.
    async fn upload_parts(
        &self,
        object_key: &str,
        mut body: ByteStream,
        limit: Option<u64>,
        multipart: &mut Option<MultipartUpload>,
    ) -> Result<PutOutcome, BackendError> {
        let mut part = BytesMut::with_capacity(PART_SIZE);
        let mut in_flight = FuturesUnordered::new();
        let mut total: u64 = 0;
        while let Some(chunk) = body.next().await {
            let mut chunk = chunk?;
            total = total.saturating_add(chunk.len() as u64);
            if let Some(limit) = limit
                && total > limit
            {
                return Ok(PutOutcome::OverLimit { limit });
            }
            while !chunk.is_empty() {
                // A full part is sent only once more data follows, so the last part is never
                // empty and a body of exactly one part stays a single PutObject.
                if part.len() == PART_SIZE {
                    let full = part.split().freeze();
                    part.reserve(PART_SIZE);
                    let upload = match multipart {
                        Some(upload) => upload,
                        None => multipart.insert(MultipartUpload::create(self, object_key).await?),
                    };
                    in_flight.push(upload.start_part(full));
                    // Bounded memory: wait for one to finish before reading on.
                    if in_flight.len() >= PARTS_IN_FLIGHT
                        && let Some(sent) = in_flight.next().await
                    {
                        upload.parts.push(sent?);
                    }
                }
                let take = (PART_SIZE - part.len()).min(chunk.len());
                part.extend_from_slice(&chunk.split_to(take));
            }
        }
        match multipart {
            None => self.put_object(object_key, part.freeze()).await?,
            Some(upload) => {
                in_flight.push(upload.start_part(part.freeze()));
                while let Some(sent) = in_flight.next().await {
                    upload.parts.push(sent?);
                }
                upload.complete().await?;
            }
        }
        Ok(PutOutcome::Stored { bytes: total })
    }

    /// Size of an object by its full key, `None` when absent.
    async fn head_size(&self, object_key: &str) -> Result<Option<u64>, BackendError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(object_key)
            .send()
            .await
        {
            Ok(head) => Ok(Some(head.content_length().unwrap_or(0).max(0) as u64)),
            Err(err) if status_of(&err) == Some(404) => Ok(None),
            Err(err) => Err(storage_error("HeadObject", object_key, err)),
        }
    }

    /// What `get_stream` does for a range S3 cannot express or refused (416): an empty
    /// stream when `start..end` is empty and within the object, else the same errors as the
    /// local store.
    async fn empty_or_invalid_range(
        &self,
        key: &str,
        object_key: &str,
        start: u64,
        end: u64,
    ) -> Result<ByteStream, BackendError> {
        let size = self
            .head_size(object_key)
            .await?
            .ok_or_else(|| BackendError::NotFound(key.to_owned()))?;
        if start > end || start > size {
            return Err(BackendError::InvalidRange {
                key: key.to_owned(),
                start,
                end,
                size,
            });
        }
        Ok(futures::stream::empty().boxed())
    }
}

/// An open multipart upload. Aborted explicitly on failure; if the future driving it is
/// dropped midway, `Drop` spawns the abort so no parts are left behind.
struct MultipartUpload {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    parts: Vec<CompletedPart>,
    next_part_number: i32,
    open: bool,
}

impl MultipartUpload {
    async fn create(store: &S3Store, object_key: &str) -> Result<Self, BackendError> {
        let created = store
            .client
            .create_multipart_upload()
            .bucket(&store.bucket)
            .key(object_key)
            .send()
            .await
            .map_err(|err| storage_error("CreateMultipartUpload", object_key, err))?;
        let upload_id = created.upload_id().ok_or_else(|| {
            BackendError::Storage(format!(
                "CreateMultipartUpload {object_key}: no upload id in the answer"
            ))
        })?;
        Ok(Self {
            client: store.client.clone(),
            bucket: store.bucket.clone(),
            key: object_key.to_owned(),
            upload_id: upload_id.to_owned(),
            parts: Vec::new(),
            next_part_number: 0,
            open: true,
        })
    }

    /// Starts sending the next part; the future owns what it needs, so several can run at
    /// once.
    fn start_part(
        &mut self,
        bytes: Bytes,
    ) -> impl Future<Output = Result<CompletedPart, BackendError>> + Send + 'static {
        // Part numbers are 1-based; S3 allows 10 000 parts (48 GiB at 5 MiB).
        self.next_part_number = self.next_part_number.saturating_add(1);
        let number = self.next_part_number;
        let request = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .content_length(bytes.len() as i64)
            .body(S3Body::from(bytes));
        let key = self.key.clone();
        async move {
            let sent = request
                .send()
                .await
                .map_err(|err| storage_error("UploadPart", &key, err))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(sent.e_tag().map(str::to_owned))
                .build())
        }
    }

    async fn complete(&mut self) -> Result<(), BackendError> {
        // Parts finish in any order; S3 wants them listed in ascending order.
        self.parts.sort_by_key(|part| part.part_number());
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(std::mem::take(&mut self.parts)))
                    .build(),
            )
            .send()
            .await
            .map_err(|err| storage_error("CompleteMultipartUpload", &self.key, err))?;
        self.open = false;
        Ok(())
    }

    /// Best effort: a failed abort leaves parts that a bucket lifecycle rule cleans up.
    async fn abort(mut self) {
        self.open = false;
        abort_upload(&self.client, &self.bucket, &self.key, &self.upload_id).await;
    }
}

impl Drop for MultipartUpload {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(key = %self.key, "multipart upload dropped outside a runtime; not aborted");
            return;
        };
        let (client, bucket, key, upload_id) = (
            self.client.clone(),
            self.bucket.clone(),
            self.key.clone(),
            self.upload_id.clone(),
        );
        runtime.spawn(async move { abort_upload(&client, &bucket, &key, &upload_id).await });
    }
}

async fn abort_upload(client: &Client, bucket: &str, key: &str, upload_id: &str) {
    if let Err(err) = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
    {
        tracing::warn!(%key, err = %DisplayErrorContext(&err), "could not abort multipart upload");
    }
}

/// The HTTP status of a failed request, when a response came back.
fn status_of<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response()
        .map(|response| response.status().as_u16())
}

/// An SDK error as a [`BackendError`]: a missing object is `NotFound`, everything else
/// (connection refused, timeouts, 5xx after the retries, access denied, missing bucket) is
/// `Storage`, i.e. `storage_unavailable`.
fn storage_error<E>(operation: &str, what: &str, err: SdkError<E, HttpResponse>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let missing_object = matches!(err.code(), Some("NoSuchKey" | "NotFound"))
        || (status_of(&err) == Some(404) && err.code() != Some("NoSuchBucket"));
    if missing_object {
        BackendError::NotFound(what.to_owned())
    } else {
        BackendError::Storage(format!(
            "S3 {operation} {what}: {}",
            DisplayErrorContext(&err)
        ))
    }
}

#[async_trait]
impl BlobStore for S3Store {
    async fn put_stream(
        &self,
        key: &str,
        body: ByteStream,
        limit: Option<u64>,
    ) -> Result<PutOutcome, BackendError> {
        let object_key = self.object_key(key)?;
        self.upload(&object_key, body, limit).await
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<u64, BackendError> {
        let object_key = self.object_key(key)?;
        let file = tokio::fs::File::open(path).await.map_err(|err| {
            if err.kind() == std::io::ErrorKind::NotFound {
                BackendError::NotFound(path.display().to_string())
            } else {
                BackendError::Io(err)
            }
        })?;
        let body = ReaderStream::with_capacity(file, 256 * 1024)
            .map(|chunk| chunk.map_err(BackendError::from))
            .boxed();
        match self.upload(&object_key, body, None).await? {
            PutOutcome::Stored { bytes } => Ok(bytes),
            PutOutcome::OverLimit { limit } => Err(BackendError::Storage(format!(
                "unlimited upload reported over limit {limit}"
            ))),
        }
    }

    async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<(), BackendError> {
        let object_key = self.object_key(key)?;
        if bytes.len() <= PART_SIZE {
            return self.put_object(&object_key, bytes).await;
        }
        let body = futures::stream::once(async move { Ok(bytes) }).boxed();
        self.upload(&object_key, body, None).await.map(|_| ())
    }

    async fn get_stream(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<ByteStream, BackendError> {
        let object_key = self.object_key(key)?;
        let mut request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&object_key);
        if let Some((start, end)) = range {
            if start >= end {
                return self
                    .empty_or_invalid_range(key, &object_key, start, end)
                    .await;
            }
            // HTTP ranges are inclusive; S3 clamps an end past the object's size.
            request = request.range(format!("bytes={start}-{}", end - 1));
        }
        let object = match request.send().await {
            Ok(object) => object,
            Err(err) if status_of(&err) == Some(416) => {
                let (start, end) = range.unwrap_or((0, 0));
                return self
                    .empty_or_invalid_range(key, &object_key, start, end)
                    .await;
            }
            Err(err) => return Err(storage_error("GetObject", key, err)),
        };
        let key = key.to_owned();
        let stream = futures::stream::unfold((object.body, key), |(mut body, key)| async move {
            match body.try_next().await {
                Ok(Some(bytes)) => Some((Ok(bytes), (body, key))),
                Ok(None) => None,
                Err(err) => Some((
                    Err(BackendError::Storage(format!(
                        "S3 GetObject {key}: reading the body failed: {}",
                        DisplayErrorContext(&err)
                    ))),
                    (body, key),
                )),
            }
        });
        Ok(stream.boxed())
    }

    async fn get_to_file(&self, key: &str, path: &Path) -> Result<u64, BackendError> {
        let body = self.get_stream(key, None).await?;
        crate::local_dir::copy_to_file(body, path).await
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, BackendError> {
        let object_key = self.object_key(key)?;
        self.head_size(&object_key).await
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        let object_key = self.object_key(key)?;
        // S3 answers 204 for an absent key too.
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if status_of(&err) == Some(404) && err.code() != Some("NoSuchBucket") => {
                Ok(())
            }
            Err(err) => Err(storage_error("DeleteObject", key, err)),
        }
    }

    /// `prefix` is a plain key prefix: `"work/{job}/"` removes everything under that
    /// "directory", `"work/ab"` every key starting with it.
    async fn delete_prefix(&self, prefix: &str) -> Result<(), BackendError> {
        validate_key(prefix.strip_suffix('/').unwrap_or(prefix))?;
        let full_prefix = format!("{}{prefix}", self.prefix);
        let mut continuation: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .set_continuation_token(continuation.take())
                .send()
                .await
                .map_err(|err| storage_error("ListObjectsV2", prefix, err))?;
            let keys: Vec<ObjectIdentifier> = page
                .contents()
                .iter()
                .filter_map(|object| object.key())
                .filter_map(|key| ObjectIdentifier::builder().key(key).build().ok())
                .collect();
            for batch in keys.chunks(DELETE_BATCH) {
                let delete = Delete::builder()
                    .set_objects(Some(batch.to_vec()))
                    .quiet(true)
                    .build()
                    .map_err(|err| {
                        BackendError::Storage(format!("DeleteObjects request: {err}"))
                    })?;
                let deleted = self
                    .client
                    .delete_objects()
                    .bucket(&self.bucket)
                    .delete(delete)
                    .send()
                    .await
                    .map_err(|err| storage_error("DeleteObjects", prefix, err))?;
                if let Some(failure) = deleted.errors().first() {
                    return Err(BackendError::Storage(format!(
                        "S3 DeleteObjects under {prefix}: {} of {} keys not deleted, first {:?}: {} {}",
                        deleted.errors().len(),
                        batch.len(),
                        failure.key().unwrap_or_default(),
                        failure.code().unwrap_or_default(),
                        failure.message().unwrap_or_default(),
                    )));
                }
            }
            match page.next_continuation_token() {
                Some(token) if page.is_truncated() == Some(true) => {
                    continuation = Some(token.to_owned());
                }
                _ => return Ok(()),
            }
        }
    }

    /// A presigned GET URL; `NotFound` for an absent object (like the local store), so a
    /// caller never hands out a link to nothing.
    async fn locate(&self, key: &str, expires: Duration) -> Result<Location, BackendError> {
        let object_key = self.object_key(key)?;
        if self.head_size(&object_key).await?.is_none() {
            return Err(BackendError::NotFound(key.to_owned()));
        }
        let presigning = PresigningConfig::expires_in(expires).map_err(|err| {
            BackendError::Storage(format!("cannot presign {key} for {expires:?}: {err}"))
        })?;
        let presigned = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .presigned(presigning)
            .await
            .map_err(|err| storage_error("presign GetObject", key, err))?;
        Ok(Location::Url(presigned.uri().to_owned()))
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectInfo>, BackendError> {
        let full_prefix = format!("{}{prefix}", self.prefix);
        let mut objects = Vec::new();
        let mut continuation: Option<String> = None;
        while objects.len() < limit {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .set_start_after(start_after.map(|key| format!("{}{key}", self.prefix)))
                .set_continuation_token(continuation.take())
                .max_keys(i32::try_from(limit - objects.len()).unwrap_or(i32::MAX))
                .send()
                .await
                .map_err(|err| storage_error("ListObjectsV2", prefix, err))?;
            for object in page.contents() {
                let Some(key) = object.key().and_then(|key| key.strip_prefix(&self.prefix)) else {
                    continue;
                };
                let modified_ms = object
                    .last_modified()
                    .and_then(|time| time.to_millis().ok())
                    .and_then(|ms| u64::try_from(ms).ok())
                    .unwrap_or(0);
                objects.push(ObjectInfo {
                    key: key.to_owned(),
                    modified_ms,
                });
            }
            match page.next_continuation_token() {
                Some(token) if page.is_truncated() == Some(true) => {
                    continuation = Some(token.to_owned());
                }
                _ => break,
            }
        }
        objects.truncate(limit);
        Ok(objects)
    }
}
