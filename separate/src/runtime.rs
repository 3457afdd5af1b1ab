//! ONNX Runtime, loaded dynamically (`ort` with `load-dynamic`): where the library is, the
//! process-wide environment, and a session wrapper that runs an f32 graph.
//!
//! The library comes out of the `onnxruntime==1.31.1` wheel on PyPI; `tools/setup` puts it at
//! `$MSAAS_HOME/lib/libonnxruntime.so.1.31.1`. A missing library is a typed
//! `model_load_failed` error naming the path, never a panic.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use audio::ErrorCode;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

/// The ONNX Runtime release the wheel, the `ort` pin (`api-31`) and `tools/setup` agree on.
pub const ORT_VERSION: &str = "1.31.1";

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// A CUDA GPU (needs the `cuda` cargo feature and a CUDA build of ONNX Runtime).
    Cuda { device_id: i32 },
}

impl std::str::FromStr for Device {
    type Err = RuntimeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        match lower.as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda { device_id: 0 }),
            _ => lower
                .strip_prefix("cuda:")
                .and_then(|id| id.parse().ok())
                .map(|device_id| Self::Cuda { device_id })
                .ok_or_else(|| {
                    RuntimeError::InvalidOption(format!(
                        "unknown device {s:?} (expected cpu, cuda or cuda:N)"
                    ))
                }),
        }
    }
}

/// How sessions are created. `Default` = CPU, ONNX Runtime's own thread count, the library
/// found as [`library_path`] says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuntimeOptions {
    pub device: Device,
    /// Threads inside one operator (`None`: ONNX Runtime's default, one per core).
    pub intra_threads: Option<usize>,
    /// The ONNX Runtime shared library; `None`: `ORT_DYLIB_PATH`, else the data dir's copy.
    pub library: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found at {}: run tools/setup (it extracts libonnxruntime from the onnxruntime=={ORT_VERSION} wheel on PyPI into $MSAAS_HOME/lib), or point ORT_DYLIB_PATH at a copy",
        path.display()
    )]
    LibraryMissing { path: PathBuf },
    #[error("cannot load ONNX Runtime from {}: {message}", path.display())]
    LibraryLoad { path: PathBuf, message: String },
    #[error("cannot load model {}: {message}", path.display())]
    ModelLoad { path: PathBuf, message: String },
    #[error("device unavailable: {0}")]
    DeviceUnavailable(String),
    #[error("{0}")]
    InvalidOption(String),
    #[error("model inference failed: {0}")]
    Inference(String),
}

impl RuntimeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::LibraryMissing { .. } | Self::LibraryLoad { .. } | Self::ModelLoad { .. } => {
                ErrorCode::ModelLoadFailed
            }
            Self::DeviceUnavailable(_) => ErrorCode::DeviceUnavailable,
            Self::InvalidOption(_) => ErrorCode::InvalidOption,
            Self::Inference(_) => ErrorCode::ModelRuntime,
        }
    }
}

/// The data directory (DESIGN.md convention): `$MSAAS_HOME`, else `$XDG_DATA_HOME/msaas`,
/// else `~/.local/share/msaas`.
pub fn data_dir() -> PathBuf {
    let non_empty = |key: &str| std::env::var_os(key).filter(|v| !v.is_empty());
    if let Some(home) = non_empty("MSAAS_HOME") {
        return PathBuf::from(home);
    }
    if let Some(xdg) = non_empty("XDG_DATA_HOME") {
        return PathBuf::from(xdg).join("msaas");
    }
    let home = non_empty("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/msaas")
}

/// Where models live: `<data dir>/models`.
pub fn models_dir() -> PathBuf {
    data_dir().join("models")
}

/// The library sessions load: `options.library`, else `ORT_DYLIB_PATH`, else
/// `<data dir>/lib/libonnxruntime.so.1.31.1`.
pub fn library_path(options: &RuntimeOptions) -> PathBuf {
    if let Some(path) = &options.library {
        return path.clone();
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        return PathBuf::from(path);
    }
    data_dir()
        .join("lib")
        .join(format!("libonnxruntime.so.{ORT_VERSION}"))
}

/// The process-wide environment. ONNX Runtime can be loaded once per process, so the first
/// successful load wins; a failed load is retried next time (e.g. after `tools/setup`).
static ENVIRONMENT: Mutex<Option<(PathBuf, ort::environment::Environment)>> = Mutex::new(None);

fn environment(options: &RuntimeOptions) -> Result<ort::environment::Environment, RuntimeError> {
    let mut slot = ENVIRONMENT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let path = library_path(options);
    if let Some((loaded, env)) = slot.as_ref() {
        if *loaded != path {
            tracing::warn!(
                loaded = %loaded.display(),
                asked = %path.display(),
                "ONNX Runtime is already loaded; a process can load only one copy"
            );
        }
        return Ok(env.clone());
    }
    check_library(&path)?;
    let builder = ort::init_from(&path).map_err(|e| RuntimeError::LibraryLoad {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let env = builder
        .with_name("msaas")
        .build()
        .map_err(|e| RuntimeError::LibraryLoad {
            path: path.clone(),
            message: e.to_string(),
        })?;
    tracing::info!(library = %path.display(), "loaded ONNX Runtime");
    *slot = Some((path, env.clone()));
    Ok(env)
}

/// A clear error when the library file is absent (`ort` would only say "dlopen failed").
fn check_library(path: &Path) -> Result<(), RuntimeError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(RuntimeError::LibraryMissing {
            path: path.to_path_buf(),
        })
    }
}

/// An output of [`OnnxModel::run`]: its shape and its values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorData {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// One ONNX graph with f32 inputs and outputs.
pub struct OnnxModel {
    // `Session::run` needs `&mut`; the mutex makes a loaded model shareable between jobs.
    session: Mutex<Session>,
    path: PathBuf,
    input_names: Vec<String>,
    output_names: Vec<String>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("path", &self.path)
            .field("inputs", &self.input_names)
            .field("outputs", &self.output_names)
            .finish()
    }
}

impl OnnxModel {
    pub fn load(path: &Path, options: &RuntimeOptions) -> Result<Self, RuntimeError> {
        let env = environment(options)?;
        if !path.is_file() {
            return Err(RuntimeError::ModelLoad {
                path: path.to_path_buf(),
                message: "no such file".into(),
            });
        }
        let model_err = |message: String| RuntimeError::ModelLoad {
            path: path.to_path_buf(),
            message,
        };
        let mut builder = Session::builder(&env)
            .map_err(|e| model_err(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| model_err(e.to_string()))?
            // Memory-pattern planning makes the CPU arena grow run after run on large graphs
            // (full htdemucs: 1.05 GB → 1.67 GB peak on the second chunk); off, it stays flat.
            .with_memory_pattern(false)
            .map_err(|e| model_err(e.to_string()))?;
        if let Some(threads) = options.intra_threads {
            builder = builder
                .with_intra_threads(threads.max(1))
                .map_err(|e| model_err(e.to_string()))?;
        }
        builder = with_device(builder, options.device)?;
        let session = builder
            .commit_from_file(path)
            .map_err(|e| model_err(e.to_string()))?;
        let input_names = session
            .inputs()
            .iter()
            .map(|i| i.name().to_string())
            .collect();
        let output_names = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        tracing::debug!(model = %path.display(), device = ?options.device, "model session ready");
        Ok(Self {
            session: Mutex::new(session),
            path: path.to_path_buf(),
            input_names,
            output_names,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn input_names(&self) -> &[String] {
        &self.input_names
    }

    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }

    /// Runs the graph on its inputs in declaration order; returns every output in order.
    pub fn run(&self, inputs: &[(&[usize], &[f32])]) -> Result<Vec<TensorData>, RuntimeError> {
        if inputs.len() != self.input_names.len() {
            return Err(RuntimeError::Inference(format!(
                "{} takes {} inputs, got {}",
                self.path.display(),
                self.input_names.len(),
                inputs.len()
            )));
        }
        let values = inputs
            .iter()
            .map(|&(shape, data)| {
                TensorRef::from_array_view((shape, data))
                    .map(Into::into)
                    .map_err(|e| RuntimeError::Inference(e.to_string()))
            })
            .collect::<Result<Vec<ort::session::SessionInputValue<'_>>, _>>()?;
        let named: Vec<(String, ort::session::SessionInputValue<'_>)> =
            self.input_names.iter().cloned().zip(values).collect();
        let mut session = self
            .session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let outputs = session
            .run(named)
            .map_err(|e| RuntimeError::Inference(e.to_string()))?;
        let mut result = Vec::with_capacity(self.output_names.len());
        for name in &self.output_names {
            let (shape, data) = outputs[name.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(|e| RuntimeError::Inference(format!("output {name}: {e}")))?;
            let shape = shape
                .iter()
                .map(|&d| usize::try_from(d))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    RuntimeError::Inference(format!("output {name} has a negative dimension"))
                })?;
            result.push(TensorData {
                shape,
                data: data.to_vec(),
            });
        }
        Ok(result)
    }
}

#[cfg(feature = "cuda")]
fn with_device(
    builder: ort::session::builder::SessionBuilder,
    device: Device,
) -> Result<ort::session::builder::SessionBuilder, RuntimeError> {
    use ort::ep::ExecutionProvider;
    match device {
        Device::Cpu => Ok(builder),
        Device::Cuda { device_id } => {
            let available = ort::ep::CUDA::is_available().unwrap_or(false);
            if !available {
                return Err(RuntimeError::DeviceUnavailable(
                    "this ONNX Runtime library has no CUDA execution provider (install onnxruntime-gpu: tools/setup --cuda)".into(),
                ));
            }
            builder
                .with_execution_providers([ort::ep::CUDA::default()
                    .with_device_id(device_id)
                    .build()
                    .error_on_failure()])
                .map_err(|e| {
                    RuntimeError::DeviceUnavailable(format!("CUDA device {device_id}: {e}"))
                })
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn with_device(
    builder: ort::session::builder::SessionBuilder,
    device: Device,
) -> Result<ort::session::builder::SessionBuilder, RuntimeError> {
    match device {
        Device::Cpu => Ok(builder),
        Device::Cuda { .. } => Err(RuntimeError::DeviceUnavailable(
            "CUDA was asked for but this build has no CUDA support (build with `--features separate/cuda`)"
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse() {
        assert_eq!("cpu".parse::<Device>().expect("cpu"), Device::Cpu);
        assert_eq!(
            "CUDA".parse::<Device>().expect("cuda"),
            Device::Cuda { device_id: 0 }
        );
        assert_eq!(
            "cuda:1".parse::<Device>().expect("cuda:1"),
            Device::Cuda { device_id: 1 }
        );
        assert_eq!(
            "tpu".parse::<Device>().expect_err("tpu").code(),
            ErrorCode::InvalidOption
        );
    }

    #[test]
    fn a_missing_library_is_a_typed_error_naming_the_path() {
        let path = Path::new("/nonexistent/libonnxruntime.so.1.31.1");
        let err = check_library(path).expect_err("no library there");
        assert_eq!(err.code(), ErrorCode::ModelLoadFailed);
        let message = err.to_string();
        assert!(
            message.contains("/nonexistent/libonnxruntime.so.1.31.1"),
            "{message}"
        );
        assert!(message.contains("tools/setup"), "{message}");
    }

    #[test]
    fn an_explicit_library_path_wins() {
        let options = RuntimeOptions {
            library: Some(PathBuf::from("/opt/ort/libonnxruntime.so")),
            ..RuntimeOptions::default()
        };
        assert_eq!(
            library_path(&options),
            PathBuf::from("/opt/ort/libonnxruntime.so")
        );
    }
}
