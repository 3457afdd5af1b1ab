//! API keys → tenants. Keys are never kept or compared in clear: each is looked up by its
//! SHA-256, so a lookup takes the same path whatever the presented key shares with a real one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use pipeline::{BackendError, ErrorCode};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, IngestError};

/// Tenant of the callers without a key when `auth.anonymous` is on.
pub const ANONYMOUS_TENANT: &str = "anonymous";

/// A directory of API keys kept outside the process (Redis hash `{ns}:apikeys`).
#[async_trait]
pub trait KeyDirectory: Send + Sync {
    /// The tenant of the key whose hex SHA-256 is `key_sha256_hex`, if any.
    async fn tenant_of(&self, key_sha256_hex: &str) -> Result<Option<String>, BackendError>;
}

pub(crate) struct Auth {
    /// hex SHA-256 of a key → tenant.
    keys: HashMap<String, String>,
    directory: Option<Arc<dyn KeyDirectory>>,
    anonymous: bool,
}

/// Hex SHA-256 of a key, as the keys file and the key directory index them.
pub fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= 64
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Parses `tenant:key` lines; `#` starts a comment, blank lines are skipped.
pub(crate) fn parse_keys_file(
    path: &Path,
    text: &str,
) -> Result<HashMap<String, String>, IngestError> {
    let mut keys = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |reason: &str| IngestError::KeysFileLine {
            path: path.to_path_buf(),
            line: index + 1,
            reason: reason.to_owned(),
        };
        let Some((tenant, key)) = line.split_once(':') else {
            return Err(bad("expected tenant:key"));
        };
        let (tenant, key) = (tenant.trim(), key.trim());
        if !valid_tenant(tenant) {
            return Err(bad(
                "tenant must be 1-64 characters of letters, digits, '_', '-', '.'",
            ));
        }
        if key.is_empty() {
            return Err(bad("empty key"));
        }
        if keys.insert(key_hash(key), tenant.to_owned()).is_some() {
            return Err(bad("the same key is listed twice"));
        }
    }
    Ok(keys)
}

impl Auth {
    pub(crate) fn new(
        keys_file: Option<&Path>,
        directory: Option<Arc<dyn KeyDirectory>>,
        anonymous: bool,
    ) -> Result<Self, IngestError> {
        let keys = match keys_file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| IngestError::KeysFile {
                        path: path.to_path_buf(),
                        source,
                    })?;
                parse_keys_file(path, &text)?
            }
            None => HashMap::new(),
        };
        if keys_file.is_none() && directory.is_none() && !anonymous {
            return Err(IngestError::NoAuth);
        }
        Ok(Self {
            keys,
            directory,
            anonymous,
        })
    }

    fn unauthorized(message: &str) -> ApiError {
        ApiError::new(ErrorCode::Unauthorized, message)
    }

    /// The tenant of a request from its `Authorization` header.
    pub(crate) async fn tenant(&self, authorization: Option<&str>) -> Result<String, ApiError> {
        let Some(header) = authorization else {
            if self.anonymous {
                return Ok(ANONYMOUS_TENANT.to_owned());
            }
            return Err(Self::unauthorized(
                "missing API key: send Authorization: Bearer <key>",
            ));
        };
        // The scheme is case-insensitive (RFC 9110 §11.1): `Bearer`, `bearer`, `BEARER`.
        let key = header
            .trim()
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim())
            .filter(|key| !key.is_empty())
            .ok_or_else(|| Self::unauthorized("expected Authorization: Bearer <key>"))?;
        if self.anonymous && self.keys.is_empty() && self.directory.is_none() {
            return Ok(ANONYMOUS_TENANT.to_owned());
        }
        let hash = key_hash(key);
        if let Some(tenant) = self.keys.get(&hash) {
            return Ok(tenant.clone());
        }
        if let Some(directory) = &self.directory {
            match directory.tenant_of(&hash).await {
                Ok(Some(tenant)) => return Ok(tenant),
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(%err, "key directory unavailable");
                    return Err(ApiError::new(
                        err.code(),
                        "cannot check the API key right now; try again",
                    ));
                }
            }
        }
        Err(Self::unauthorized("invalid API key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_file_lines_and_their_errors() {
        let path = Path::new("keys");
        let keys = parse_keys_file(path, "# ops\nacme:k1\n\n beta : k2 # note\n").unwrap();
        assert_eq!(keys.get(&key_hash("k1")).map(String::as_str), Some("acme"));
        assert_eq!(keys.get(&key_hash("k2")).map(String::as_str), Some("beta"));
        for (text, needle) in [
            ("nocolon", "tenant:key"),
            ("a/b:k", "tenant must be"),
            ("a:", "empty key"),
            ("a:k\nb:k", "twice"),
        ] {
            let err = parse_keys_file(path, text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[tokio::test]
    async fn bearer_keys_map_to_tenants() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "acme:secret\n").unwrap();
        let auth = Auth::new(Some(&path), None, false).unwrap();
        assert_eq!(auth.tenant(Some("Bearer secret")).await.unwrap(), "acme");
        assert_eq!(auth.tenant(Some("BEARER secret")).await.unwrap(), "acme");
        assert_eq!(auth.tenant(Some("bearer  secret ")).await.unwrap(), "acme");
        assert!(auth.tenant(Some("Basic secret")).await.is_err());
        assert!(auth.tenant(Some("Bearersecret")).await.is_err());
        for header in [
            None,
            Some("Bearer wrong"),
            Some("Basic abc"),
            Some("Bearer "),
        ] {
            let err = auth.tenant(header).await.unwrap_err();
            assert_eq!(err.code, ErrorCode::Unauthorized, "{header:?}");
        }
        let anonymous = Auth::new(None, None, true).unwrap();
        assert_eq!(anonymous.tenant(None).await.unwrap(), ANONYMOUS_TENANT);
        assert!(matches!(
            Auth::new(None, None, false),
            Err(IngestError::NoAuth)
        ));
    }

    /// Knows one key; fails for another (a directory that is down).
    struct Directory;

    #[async_trait]
    impl KeyDirectory for Directory {
        async fn tenant_of(&self, key_sha256_hex: &str) -> Result<Option<String>, BackendError> {
            if key_sha256_hex == key_hash("dir-key") {
                Ok(Some("gamma".into()))
            } else if key_sha256_hex == key_hash("boom") {
                Err(BackendError::Queue("down".into()))
            } else {
                Ok(None)
            }
        }
    }

    #[tokio::test]
    async fn key_directory_is_asked_by_hash() {
        let auth = Auth::new(None, Some(Arc::new(Directory)), false).unwrap();
        assert_eq!(auth.tenant(Some("Bearer dir-key")).await.unwrap(), "gamma");
        let unknown = auth.tenant(Some("Bearer other")).await.unwrap_err();
        assert_eq!(unknown.code, ErrorCode::Unauthorized);
        let down = auth.tenant(Some("Bearer boom")).await.unwrap_err();
        assert_eq!(down.status, warp::http::StatusCode::SERVICE_UNAVAILABLE);
    }
}
