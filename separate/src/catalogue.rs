//! The model catalogue (DESIGN.md "Models"): the official Demucs v4 models `msaas models pull`
//! can fetch, where their files are, and how checkpoint files become an installed model.
//!
//! Nothing here touches the network — the binary downloads; this module says what to download
//! ([`CatalogueModel::hf_files`], [`CatalogueModel::legacy_files`]), checks what arrived
//! ([`verify`]), converts it without PyTorch (`tools/demucs/convert.py`, embedded, run with the
//! converter venv's Python) and installs the result atomically ([`import`]): a failed or
//! interrupted install leaves the previous state, never half a model.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::manifest::Manifest;

/// The catalogue compiled into the binary.
pub const BUILTIN_CATALOGUE: &str = include_str!("catalogue.toml");

/// The converter, compiled in so an installed binary needs no checkout: written next to the
/// staging folder and run with the converter venv's Python (numpy + onnx, no torch).
const CONVERTER: &str = include_str!("../../tools/demucs/convert.py");

/// What the weights' owner says about them; printed on pull and kept in the manifest.
pub const WEIGHTS_LICENCE: &str = "The Demucs weights are provided by their authors for research \
     purposes; they are not covered by the MIT licence of the Demucs code (demucs issues #327, \
     #508). MSaaS downloads them on your machine and never redistributes converted weights.";

/// Where a stem of the catalogue comes from on Hugging Face by default.
pub const DEFAULT_HF_BASE: &str = "https://huggingface.co";
/// The legacy host of the Demucs files.
pub const DEFAULT_LEGACY_BASE: &str = "https://dl.fbaipublicfiles.com/demucs";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogueError {
    #[error("unknown model {name:?}; the catalogue has: {}", known.join(", "))]
    UnknownModel { name: String, known: Vec<String> },
    #[error("{name}: {reason}")]
    UnsupportedModel { name: String, reason: String },
    #[error(
        "cannot reach {url}: {reason} (on a machine without access, copy the files over and use \
         `msaas models import FILE...`)"
    )]
    HostUnreachable { url: String, reason: String },
    #[error("{url}: HTTP {status}")]
    Http { url: String, status: u16 },
    #[error(
        "{file}: {what} is {actual}, expected {expected}; the file was deleted, nothing was installed"
    )]
    ChecksumMismatch {
        file: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("no space left on the device while {0}")]
    DiskFull(String),
    #[error("{0}")]
    CorruptCheckpoint(String),
    #[error("{0}")]
    ForbiddenGlobal(String),
    #[error("{0}")]
    InvalidOption(String),
    #[error("{0}")]
    ConverterUnavailable(String),
    #[error("invalid catalogue: {0}")]
    InvalidCatalogue(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl CatalogueError {
    /// The stable code, as users and scripts see it.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownModel { .. } => "unknown_model",
            Self::UnsupportedModel { .. } => "unsupported_model",
            Self::HostUnreachable { .. } => "host_unreachable",
            Self::Http { .. } => "http_error",
            Self::ChecksumMismatch { .. } => "checksum_mismatch",
            Self::DiskFull(_) => "disk_full",
            Self::CorruptCheckpoint(_) => "corrupt_checkpoint",
            Self::ForbiddenGlobal(_) => "forbidden_global",
            Self::InvalidOption(_) => "invalid_option",
            Self::ConverterUnavailable(_) => "converter_unavailable",
            Self::InvalidCatalogue(_) => "invalid_catalogue",
            Self::Io { .. } => "io",
        }
    }

    /// An I/O failure while doing `what`; a full disk gets its own code.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        let what = what.into();
        if source.kind() == io::ErrorKind::StorageFull {
            Self::DiskFull(what)
        } else {
            Self::Io { what, source }
        }
    }
}

/// The models one catalogue file lists.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalogue {
    #[serde(rename = "model", default)]
    pub models: Vec<CatalogueModel>,
}

/// One pullable model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueModel {
    pub name: String,
    pub description: String,
    pub sources: Vec<String>,
    /// Hugging Face repository (`owner/name`), tried first.
    pub hf_repo: Option<String>,
    /// The bag description in the repository (`{name}.yaml` when unset).
    pub yaml: Option<String>,
    /// The legacy files, in bag order: `<signature>-<sha256 prefix>.th`.
    #[serde(default)]
    pub legacy_files: Vec<String>,
    /// Folder of the legacy files under the legacy base URL.
    #[serde(default = "default_legacy_dir")]
    pub legacy_dir: String,
    /// Per-member, per-source weights for the legacy path.
    pub weights: Option<Vec<Vec<f32>>>,
    /// Full SHA-256 (hex) of files where it is known.
    #[serde(default)]
    pub sha256: BTreeMap<String, String>,
    /// Sizes in bytes of files where they are known.
    #[serde(default)]
    pub sizes: BTreeMap<String, u64>,
    pub approx_download_bytes: Option<u64>,
    /// Why the model cannot be installed, when it cannot.
    pub unsupported: Option<String>,
}

fn default_legacy_dir() -> String {
    "hybrid_transformer".to_owned()
}

/// A bag of models as its yaml describes it (`models`, optional `weights` and `segment`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BagSpec {
    pub models: Vec<String>,
    #[serde(default)]
    pub weights: Option<Vec<Vec<f32>>>,
    #[serde(default)]
    pub segment: Option<f64>,
}

impl BagSpec {
    pub fn parse(yaml: &str) -> Result<Self, CatalogueError> {
        let bag: Self = serde_yaml_ng::from_str(yaml)
            .map_err(|e| CatalogueError::CorruptCheckpoint(format!("bag yaml: {e}")))?;
        if bag.models.is_empty() {
            return Err(CatalogueError::CorruptCheckpoint(
                "bag yaml lists no models".into(),
            ));
        }
        if let Some(bad) = bag.models.iter().find(|sig| !valid_signature(sig)) {
            return Err(CatalogueError::CorruptCheckpoint(format!(
                "bag yaml names model {bad:?}, not a signature (letters, digits, _ and -)"
            )));
        }
        if let Some(weights) = &bag.weights
            && weights.len() != bag.models.len()
        {
            return Err(CatalogueError::CorruptCheckpoint(format!(
                "bag yaml has {} weight rows for {} models",
                weights.len(),
                bag.models.len()
            )));
        }
        Ok(bag)
    }
}

/// A signature names a file: nothing that could climb out of a folder or a URL path.
fn valid_signature(sig: &str) -> bool {
    !sig.is_empty()
        && sig.len() <= 64
        && sig
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// What a downloaded file must be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// Lower-case hex the file's SHA-256 starts with (the legacy names carry 8 digits).
    pub sha256_prefix: Option<String>,
    pub sha256: Option<String>,
    pub size: Option<u64>,
}

/// One file to fetch: `path` under a base URL, saved as `file_name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub path: String,
    pub file_name: String,
    pub expected: Expected,
}

impl Catalogue {
    pub fn builtin() -> Self {
        // The built-in catalogue is checked by a unit test, so this cannot fail in a release.
        Self::parse(BUILTIN_CATALOGUE).unwrap_or(Self { models: Vec::new() })
    }

    pub fn parse(text: &str) -> Result<Self, CatalogueError> {
        let catalogue: Self =
            toml::from_str(text).map_err(|e| CatalogueError::InvalidCatalogue(e.to_string()))?;
        for model in &catalogue.models {
            if !valid_signature(&model.name) {
                return Err(CatalogueError::InvalidCatalogue(format!(
                    "model name {:?} (letters, digits, _ and -)",
                    model.name
                )));
            }
            for file in &model.legacy_files {
                legacy_expectation(file).ok_or_else(|| {
                    CatalogueError::InvalidCatalogue(format!(
                        "{}: legacy file {file:?} is not <signature>-<8 hex digits>.th",
                        model.name
                    ))
                })?;
            }
            if let Some(weights) = &model.weights
                && weights.len() != model.legacy_files.len()
            {
                return Err(CatalogueError::InvalidCatalogue(format!(
                    "{}: {} weight rows for {} legacy files",
                    model.name,
                    weights.len(),
                    model.legacy_files.len()
                )));
            }
        }
        Ok(catalogue)
    }

    pub fn load(path: &Path) -> Result<Self, CatalogueError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CatalogueError::io(format!("reading {}", path.display()), e))?;
        Self::parse(&text)
    }

    pub fn names(&self) -> Vec<String> {
        self.models.iter().map(|m| m.name.clone()).collect()
    }

    pub fn find(&self, name: &str) -> Result<&CatalogueModel, CatalogueError> {
        self.models
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| CatalogueError::UnknownModel {
                name: name.to_owned(),
                known: self.names(),
            })
    }

    /// The model whose members are exactly these signatures (for `models import` without
    /// `--name`).
    pub fn by_signatures(&self, signatures: &[String]) -> Option<&CatalogueModel> {
        self.models.iter().find(|model| {
            let members: Vec<String> = model
                .legacy_files
                .iter()
                .filter_map(|file| file.split_once('-').map(|(sig, _)| sig.to_owned()))
                .collect();
            !members.is_empty() && members == signatures
        })
    }
}

impl CatalogueModel {
    pub fn check_supported(&self) -> Result<(), CatalogueError> {
        match &self.unsupported {
            Some(reason) => Err(CatalogueError::UnsupportedModel {
                name: self.name.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Path of the bag yaml under the Hugging Face base, if the model is on Hugging Face.
    pub fn hf_yaml_path(&self) -> Option<String> {
        let repo = self.hf_repo.as_ref()?;
        let yaml = self
            .yaml
            .clone()
            .unwrap_or_else(|| format!("{}.yaml", self.name));
        Some(format!("{repo}/resolve/main/{yaml}"))
    }

    /// The safetensors of every member `bag` lists, under the Hugging Face base.
    pub fn hf_files(&self, bag: &BagSpec) -> Vec<RemoteFile> {
        let repo = self.hf_repo.as_deref().unwrap_or_default();
        bag.models
            .iter()
            .map(|sig| {
                let file_name = format!("{sig}.safetensors");
                RemoteFile {
                    path: format!("{repo}/resolve/main/{file_name}"),
                    expected: self.known_expectation(&file_name, Expected::default()),
                    file_name,
                }
            })
            .collect()
    }

    /// The legacy `.th` files, under the legacy base; each carries its hash prefix.
    pub fn legacy_files(&self) -> Vec<RemoteFile> {
        self.legacy_files
            .iter()
            .map(|file_name| RemoteFile {
                path: format!("{}/{file_name}", self.legacy_dir),
                expected: self.known_expectation(
                    file_name,
                    legacy_expectation(file_name).unwrap_or_default(),
                ),
                file_name: file_name.clone(),
            })
            .collect()
    }

    fn known_expectation(&self, file_name: &str, mut expected: Expected) -> Expected {
        expected.sha256 = self.sha256.get(file_name).map(|h| h.to_ascii_lowercase());
        expected.size = self.sizes.get(file_name).copied();
        expected
    }
}

/// `<signature>-<8 hex>.th` → the hash prefix the file must have.
fn legacy_expectation(file_name: &str) -> Option<Expected> {
    let stem = file_name.strip_suffix(".th")?;
    let (sig, prefix) = stem.rsplit_once('-')?;
    let hex = prefix.len() == 8 && prefix.chars().all(|c| c.is_ascii_hexdigit());
    (valid_signature(sig) && hex).then(|| Expected {
        sha256_prefix: Some(prefix.to_ascii_lowercase()),
        ..Expected::default()
    })
}

/// The SHA-256 of a file, in lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String, CatalogueError> {
    let what = || format!("reading {}", path.display());
    let mut file = std::fs::File::open(path).map_err(|e| CatalogueError::io(what(), e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(|e| CatalogueError::io(what(), e))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    let mut hex = String::with_capacity(64);
    for byte in hasher.finalize() {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{byte:02x}");
    }
    Ok(hex)
}

/// Checks a downloaded file against what it must be; a file that fails is deleted, so a later
/// pull downloads it afresh rather than resuming a bad one.
pub fn verify(path: &Path, name: &str, expected: &Expected) -> Result<(), CatalogueError> {
    let mismatch = |what, expected: String, actual: String| {
        let _ = std::fs::remove_file(path);
        Err(CatalogueError::ChecksumMismatch {
            file: name.to_owned(),
            what,
            expected,
            actual,
        })
    };
    if let Some(size) = expected.size {
        let actual = std::fs::metadata(path)
            .map_err(|e| CatalogueError::io(format!("reading {}", path.display()), e))?
            .len();
        if actual != size {
            return mismatch("size", format!("{size} bytes"), format!("{actual} bytes"));
        }
    }
    if expected.sha256.is_none() && expected.sha256_prefix.is_none() {
        return Ok(());
    }
    let actual = sha256_file(path)?;
    if let Some(full) = &expected.sha256
        && &actual != full
    {
        return mismatch("SHA-256", full.clone(), actual);
    }
    if let Some(prefix) = &expected.sha256_prefix
        && !actual.starts_with(prefix.as_str())
    {
        return mismatch("SHA-256 prefix", prefix.clone(), actual[..8].to_owned());
    }
    Ok(())
}

/// How [`import`] converts and where it installs.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The converter venv's interpreter (numpy + onnx).
    pub python: PathBuf,
    pub models_dir: PathBuf,
    /// The installed model's name (its folder under `models_dir`).
    pub name: String,
    /// Per-member, per-source bag weights.
    pub weights: Option<Vec<Vec<f32>>>,
    /// Overrides the checkpoints' segment (seconds).
    pub segment: Option<f64>,
    /// Where the files came from, recorded in the manifest.
    pub source: String,
}

/// Converts checkpoint files (`.safetensors` or `.th`, one per bag member, in order) to the
/// core graph + manifest and installs them as `models_dir/name`, replacing a previous install
/// only once the new one is complete and loads. Returns the installed manifest.
pub fn import(files: &[PathBuf], options: &ImportOptions) -> Result<Manifest, CatalogueError> {
    if !valid_signature(&options.name) {
        return Err(CatalogueError::InvalidOption(format!(
            "model name {:?}: letters, digits, _ and - only",
            options.name
        )));
    }
    if files.is_empty() {
        return Err(CatalogueError::InvalidOption(
            "no checkpoint files to import".into(),
        ));
    }
    if !options.python.is_file() {
        return Err(CatalogueError::ConverterUnavailable(format!(
            "the model converter needs Python with numpy and onnx at {} (run tools/setup, or set \
             models.converter_python); PyTorch is not needed",
            options.python.display()
        )));
    }
    let dir = &options.models_dir;
    std::fs::create_dir_all(dir)
        .map_err(|e| CatalogueError::io(format!("creating {}", dir.display()), e))?;
    let tag = format!("{}-{}", options.name, std::process::id());
    let staging = dir.join(format!(".staging-{tag}"));
    let script = dir.join(format!(".convert-{tag}.py"));
    let result = convert_into(files, options, &staging, &script)
        .and_then(|()| swap_into_place(&staging, &dir.join(&options.name), &tag));
    let _ = std::fs::remove_file(&script);
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn convert_into(
    files: &[PathBuf],
    options: &ImportOptions,
    staging: &Path,
    script: &Path,
) -> Result<(), CatalogueError> {
    let _ = std::fs::remove_dir_all(staging);
    std::fs::write(script, CONVERTER)
        .map_err(|e| CatalogueError::io(format!("writing {}", script.display()), e))?;
    let mut command = Command::new(&options.python);
    command
        .arg(script)
        .arg("--out")
        .arg(staging)
        .arg("--name")
        .arg(&options.name)
        .arg("--source")
        .arg(&options.source);
    if let Some(weights) = &options.weights {
        let json = serde_json_weights(weights);
        command.arg("--weights").arg(json);
    }
    if let Some(segment) = options.segment {
        command.arg("--segment").arg(segment.to_string());
    }
    command.args(files);
    tracing::debug!(?command, "converting");
    let output = command.output().map_err(|e| {
        CatalogueError::ConverterUnavailable(format!(
            "cannot run {}: {e}",
            options.python.display()
        ))
    })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(converter_error(&stderr))
}

/// `[code] message`, the converter's last line on failure, as a typed error.
fn converter_error(stderr: &str) -> CatalogueError {
    let line = stderr
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("the converter failed without a message")
        .trim();
    let (code, message) = match line
        .strip_prefix('[')
        .and_then(|rest| rest.split_once("] "))
    {
        Some((code, message)) => (code, message.to_owned()),
        None if stderr.contains("No space left on device") => ("disk_full", line.to_owned()),
        None => ("", format!("the converter failed: {line}")),
    };
    match code {
        "unsupported_model" => CatalogueError::UnsupportedModel {
            name: "checkpoint".into(),
            reason: message,
        },
        "corrupt_checkpoint" => CatalogueError::CorruptCheckpoint(message),
        "forbidden_global" => CatalogueError::ForbiddenGlobal(message),
        "invalid_option" => CatalogueError::InvalidOption(message),
        "disk_full" => CatalogueError::DiskFull(format!("converting: {message}")),
        "io_error" => CatalogueError::Io {
            what: "converting the checkpoint".into(),
            source: io::Error::other(message),
        },
        _ => CatalogueError::Io {
            what: "converting the checkpoint".into(),
            source: io::Error::other(message),
        },
    }
}

/// The weights as the JSON the converter takes (`[[1.0,0.0],...]`).
fn serde_json_weights(weights: &[Vec<f32>]) -> String {
    let rows: Vec<String> = weights
        .iter()
        .map(|row| {
            let cells: Vec<String> = row.iter().map(|w| format!("{w:?}")).collect();
            format!("[{}]", cells.join(","))
        })
        .collect();
    format!("[{}]", rows.join(","))
}

/// Moves a complete, loadable model from `staging` to `target`: the previous install is moved
/// aside first and removed only after the new one is in place (restored if that fails).
fn swap_into_place(staging: &Path, target: &Path, tag: &str) -> Result<Manifest, CatalogueError> {
    Manifest::load(&staging.join("manifest.toml")).map_err(|e| {
        CatalogueError::CorruptCheckpoint(format!("the converted model does not load: {e}"))
    })?;
    let parent = target.parent().unwrap_or(Path::new("."));
    let previous = parent.join(format!(".previous-{tag}"));
    let had_previous = target.exists();
    if had_previous {
        std::fs::rename(target, &previous)
            .map_err(|e| CatalogueError::io(format!("moving {} aside", target.display()), e))?;
    }
    if let Err(err) = std::fs::rename(staging, target) {
        if had_previous {
            let _ = std::fs::rename(&previous, target);
        }
        return Err(CatalogueError::io(
            format!("installing {}", target.display()),
            err,
        ));
    }
    if had_previous {
        let _ = std::fs::remove_dir_all(&previous);
    }
    Manifest::load(&target.join("manifest.toml")).map_err(|e| {
        CatalogueError::CorruptCheckpoint(format!("the installed model does not load: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_catalogue_parses_and_has_the_demucs_models() {
        let catalogue = Catalogue::parse(BUILTIN_CATALOGUE).expect("built-in catalogue");
        for name in ["htdemucs", "htdemucs_ft", "htdemucs_6s", "hdemucs_mmi"] {
            catalogue.find(name).expect(name);
        }
        let ft = catalogue.find("htdemucs_ft").unwrap();
        assert_eq!(ft.legacy_files().len(), 4);
        assert!(
            catalogue
                .find("hdemucs_mmi")
                .unwrap()
                .check_supported()
                .is_err()
        );
        let err = catalogue.find("htdemucs_8s").unwrap_err();
        assert_eq!(err.code(), "unknown_model");
        assert!(err.to_string().contains("htdemucs_6s"), "{err}");
    }

    #[test]
    fn urls_follow_both_hosts_layouts() {
        let catalogue = Catalogue::builtin();
        let model = catalogue.find("htdemucs").unwrap();
        assert_eq!(
            model.hf_yaml_path().unwrap(),
            "adefossez/HTDemucs/resolve/main/htdemucs.yaml"
        );
        let bag = BagSpec::parse("models: ['955717e8']\n").unwrap();
        let hf = model.hf_files(&bag);
        assert_eq!(
            hf[0].path,
            "adefossez/HTDemucs/resolve/main/955717e8.safetensors"
        );
        let legacy = model.legacy_files();
        assert_eq!(legacy[0].path, "hybrid_transformer/955717e8-8726e21a.th");
        assert_eq!(
            legacy[0].expected.sha256_prefix.as_deref(),
            Some("8726e21a")
        );
        assert_eq!(legacy[0].expected.size, Some(84_141_911));
    }

    #[test]
    fn bag_yaml_is_read_as_demucs_writes_it() {
        let bag = BagSpec::parse(
            "models: ['f7e0c4bc', 'd12395a8']\nweights: [[1., 0.], [0., 1.]]\nsegment: 7.8\n",
        )
        .unwrap();
        assert_eq!(bag.models, ["f7e0c4bc", "d12395a8"]);
        assert_eq!(bag.weights.unwrap()[1], [0.0, 1.0]);
        assert_eq!(bag.segment, Some(7.8));
        for bad in [
            "models: []\n",
            "models: ['../etc']\n",
            "nope",
            "models: ['a', 'b']\nweights: [[1.0]]\n",
        ] {
            assert_eq!(
                BagSpec::parse(bad).unwrap_err().code(),
                "corrupt_checkpoint",
                "{bad}"
            );
        }
    }

    #[test]
    fn a_bad_file_is_refused_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.th");
        std::fs::write(&path, b"abc").unwrap();
        // sha256("abc") = ba7816bf...
        verify(
            &path,
            "x.th",
            &Expected {
                sha256_prefix: Some("ba7816bf".into()),
                size: Some(3),
                ..Expected::default()
            },
        )
        .unwrap();
        let err = verify(
            &path,
            "x.th",
            &Expected {
                sha256_prefix: Some("00000000".into()),
                ..Expected::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.code(), "checksum_mismatch");
        assert!(err.to_string().contains("ba7816bf"), "{err}");
        assert!(!path.exists(), "a file that fails its check is deleted");
    }

    #[test]
    fn converter_failures_keep_their_codes() {
        let cases = [
            (
                "[forbidden_global] os.system is not allowed\n",
                "forbidden_global",
            ),
            (
                "Traceback...\n[corrupt_checkpoint] truncated\n",
                "corrupt_checkpoint",
            ),
            ("[unsupported_model] HDemucs is v3\n", "unsupported_model"),
            ("OSError: [Errno 28] No space left on device\n", "disk_full"),
            ("something else\n", "io"),
        ];
        for (stderr, code) in cases {
            assert_eq!(converter_error(stderr).code(), code, "{stderr}");
        }
    }

    #[test]
    fn weights_are_passed_as_json() {
        assert_eq!(
            serde_json_weights(&[vec![1.0, 0.0], vec![0.0, 0.5]]),
            "[[1.0,0.0],[0.0,0.5]]"
        );
    }

    #[test]
    fn a_failed_import_leaves_the_previous_install() {
        let dir = tempfile::tempdir().unwrap();
        let previous = dir.path().join("m");
        std::fs::create_dir_all(&previous).unwrap();
        std::fs::write(previous.join("manifest.toml"), "old").unwrap();
        let err = import(
            &[dir.path().join("missing.th")],
            &ImportOptions {
                python: dir.path().join("no-python"),
                models_dir: dir.path().to_owned(),
                name: "m".into(),
                weights: None,
                segment: None,
                source: "test".into(),
            },
        )
        .unwrap_err();
        assert_eq!(err.code(), "converter_unavailable");
        assert_eq!(
            std::fs::read_to_string(previous.join("manifest.toml")).unwrap(),
            "old"
        );
    }
}
