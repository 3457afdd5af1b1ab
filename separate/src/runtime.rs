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
    /// A CUDA GPU (needs ONNX Runtime's GPU build: `tools/setup --cuda`).
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
    /// Rows (chunks) per graph run, shared by every job on the model; `None`: the device's
    /// default (1 on a CPU, where batching gains nothing and costs memory; 4 on a GPU).
    pub batch_size: Option<usize>,
    /// Most bytes of device memory ONNX Runtime's arena may hold, per loaded graph (CUDA
    /// only; `None`: as much as the device has). A run that needs more fails as out of memory,
    /// and the executor halves its batch ([`crate::batch`]).
    pub device_memory_limit: Option<usize>,
}

impl RuntimeOptions {
    /// Rows per graph run: `batch_size`, else the device's default.
    pub fn batch_capacity(&self) -> usize {
        self.batch_size.unwrap_or(match self.device {
            Device::Cpu => 1,
            Device::Cuda { .. } => 4,
        })
    }
}

#[derive(Debug, Clone, thiserror::Error)]
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
    #[error("the device ran out of memory: {0}")]
    OutOfMemory(String),
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
            Self::OutOfMemory(_) => ErrorCode::DeviceOutOfMemory,
        }
    }

    /// A failed run, told apart by its message: ONNX Runtime reports an exhausted arena
    /// ("Failed to allocate memory"), CUDA "out of memory", cuBLAS / cuDNN their alloc status.
    fn from_run(message: String) -> Self {
        const OUT_OF_MEMORY: [&str; 4] = [
            "failed to allocate memory",
            "out of memory",
            "cublas_status_alloc_failed",
            "cudnn_status_alloc_failed",
        ];
        let lower = message.to_ascii_lowercase();
        if OUT_OF_MEMORY.iter().any(|m| lower.contains(m)) {
            Self::OutOfMemory(message)
        } else {
            Self::Inference(message)
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
/// `<data dir>/lib/libonnxruntime.so.1.31.1` (CPU) or `<data dir>/lib/cuda/…` (the GPU build
/// that `tools/setup --cuda` installs beside the NVIDIA libraries it needs).
pub fn library_path(options: &RuntimeOptions) -> PathBuf {
    if let Some(path) = &options.library {
        return path.clone();
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        return PathBuf::from(path);
    }
    let lib = data_dir().join("lib");
    let dir = match options.device {
        Device::Cpu => lib,
        Device::Cuda { .. } => lib.join("cuda"),
    };
    dir.join(format!("libonnxruntime.so.{ORT_VERSION}"))
}

/// Loads, process-wide, the NVIDIA libraries (CUDA runtime, cuBLAS, cuFFT, cuRAND, cuDNN…)
/// that sit beside ONNX Runtime's GPU build, so that its CUDA provider finds them without a
/// system CUDA or `LD_LIBRARY_PATH` (which the loader reads only at process start). Each is
/// opened by full path with `RTLD_GLOBAL`; a later lookup of the same soname (the provider's
/// `NEEDED` entries, cuDNN's own `dlopen` of its parts) finds the loaded copy. Libraries are
/// tried until none more loads, so their order does not matter. Returns how many loaded; 0
/// when the folder has none (a system CUDA may still serve).
fn preload_cuda_libraries(dir: &Path) -> Result<usize, RuntimeError> {
    let mut pending: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("lib") && n.contains(".so") && !n.starts_with("libonnxruntime")
            })
        })
        .collect();
    pending.sort();
    let mut loaded = 0;
    let mut last_errors = Vec::new();
    while !pending.is_empty() {
        last_errors.clear();
        let before = pending.len();
        pending.retain(|path| {
            // SAFETY: these are the NVIDIA runtime libraries `tools/setup --cuda` installed
            // (from NVIDIA's wheels); their initialisers only register themselves. The handle
            // is leaked on purpose: the provider uses them for the life of the process.
            let opened = unsafe {
                libloading::os::unix::Library::open(
                    Some(path),
                    libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
                )
            };
            match opened {
                Ok(library) => {
                    std::mem::forget(library);
                    false
                }
                Err(err) => {
                    // libloading says only "dlopen failed"; the loader's own words are its source.
                    let reason = std::error::Error::source(&err)
                        .map_or_else(|| err.to_string(), ToString::to_string);
                    last_errors.push(reason);
                    true
                }
            }
        });
        loaded += before - pending.len();
        if pending.len() == before {
            break;
        }
    }
    if let Some(first) = last_errors.first() {
        let driver = last_errors.iter().any(|e| e.contains("libcuda.so"));
        return Err(RuntimeError::DeviceUnavailable(if driver {
            format!(
                "no NVIDIA driver on this machine (libcuda.so.1 is missing), so the CUDA libraries in {} cannot load: {first}",
                dir.display()
            )
        } else {
            format!(
                "cannot load the CUDA libraries in {} ({} of them): {first}",
                dir.display(),
                last_errors.len()
            )
        }));
    }
    Ok(loaded)
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
    check_library(&path, options.device)?;
    if matches!(options.device, Device::Cuda { .. })
        && let Some(dir) = path.parent()
    {
        let loaded = preload_cuda_libraries(dir)?;
        tracing::info!(dir = %dir.display(), loaded, "loaded the CUDA libraries beside ONNX Runtime");
    }
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

/// A clear error when the library file is absent (`ort` would only say "dlopen failed"). For
/// CUDA that means the GPU build is not installed, so the device is unavailable (the CPU build
/// is no fallback: a GPU worker must say so).
fn check_library(path: &Path, device: Device) -> Result<(), RuntimeError> {
    if path.is_file() {
        return Ok(());
    }
    Err(match device {
        Device::Cpu => RuntimeError::LibraryMissing {
            path: path.to_path_buf(),
        },
        Device::Cuda { .. } => RuntimeError::DeviceUnavailable(format!(
            "ONNX Runtime's GPU build is not at {}: run tools/setup --cuda (it installs it and the CUDA libraries under $MSAAS_HOME/lib/cuda), or point models.ort_library / ORT_DYLIB_PATH at one",
            path.display()
        )),
    })
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
        builder = with_device(builder, options.device, options.device_memory_limit)?;
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
            .map_err(|e| RuntimeError::from_run(e.to_string()))?;
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

fn with_device(
    builder: ort::session::builder::SessionBuilder,
    device: Device,
    device_memory_limit: Option<usize>,
) -> Result<ort::session::builder::SessionBuilder, RuntimeError> {
    use ort::ep::ExecutionProvider;
    match device {
        Device::Cpu => Ok(builder),
        Device::Cuda { device_id } => {
            let available = ort::ep::CUDA::is_available().unwrap_or(false);
            if !available {
                return Err(RuntimeError::DeviceUnavailable(
                    "this ONNX Runtime library has no CUDA execution provider (tools/setup --cuda installs the GPU build under $MSAAS_HOME/lib/cuda)".into(),
                ));
            }
            // The arena grows by what a run asks for, not to the next power of two: with every
            // run of one shape (see crate::batch) it stops growing after the first run, at what
            // the model needs.
            let mut cuda = ort::ep::CUDA::default()
                .with_device_id(device_id)
                .with_arena_extend_strategy(ort::ep::ArenaExtendStrategy::SameAsRequested);
            if let Some(limit) = device_memory_limit {
                cuda = cuda.with_memory_limit(limit);
            }
            builder
                .with_execution_providers([cuda.build().error_on_failure()])
                .map_err(|e| {
                    RuntimeError::DeviceUnavailable(format!("CUDA device {device_id}: {e}"))
                })
        }
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
        let err = check_library(path, Device::Cpu).expect_err("no library there");
        assert_eq!(err.code(), ErrorCode::ModelLoadFailed);
        let message = err.to_string();
        assert!(
            message.contains("/nonexistent/libonnxruntime.so.1.31.1"),
            "{message}"
        );
        assert!(message.contains("tools/setup"), "{message}");
        // For CUDA the GPU build is missing: the device is unavailable until it is installed.
        let err = check_library(path, Device::Cuda { device_id: 0 }).expect_err("no GPU build");
        assert_eq!(err.code(), ErrorCode::DeviceUnavailable);
        let message = err.to_string();
        assert!(
            message.contains("/nonexistent/libonnxruntime.so.1.31.1")
                && message.contains("tools/setup --cuda"),
            "{message}"
        );
    }

    #[test]
    fn cuda_libraries_beside_the_runtime_are_loaded_and_a_bad_one_is_named() {
        let empty = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            preload_cuda_libraries(empty.path()).expect("nothing to load"),
            0
        );

        // A real shared library (zlib, which cuDNN itself needs) loads by full path.
        let good = tempfile::tempdir().expect("tempdir");
        let zlib = [
            "/lib/x86_64-linux-gnu/libz.so.1",
            "/usr/lib/x86_64-linux-gnu/libz.so.1",
            "/lib64/libz.so.1",
        ]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .expect("zlib on this machine");
        std::fs::copy(zlib, good.path().join("libz.so.1")).expect("copy zlib");
        std::fs::write(
            good.path().join("libonnxruntime.so.1.31.1"),
            b"not loaded here",
        )
        .expect("write");
        assert_eq!(preload_cuda_libraries(good.path()).expect("zlib loads"), 1);

        let bad = tempfile::tempdir().expect("tempdir");
        std::fs::write(bad.path().join("libcudart.so.13"), b"not an ELF file").expect("write");
        let err = preload_cuda_libraries(bad.path()).expect_err("garbage does not load");
        assert_eq!(err.code(), ErrorCode::DeviceUnavailable);
        assert!(err.to_string().contains("libcudart.so.13"), "{err}");
    }

    #[test]
    fn the_cuda_build_is_looked_for_in_its_own_folder() {
        let options = RuntimeOptions {
            device: Device::Cuda { device_id: 0 },
            ..RuntimeOptions::default()
        };
        if std::env::var_os("ORT_DYLIB_PATH").is_none() {
            let path = library_path(&options);
            assert!(
                path.ends_with("lib/cuda/libonnxruntime.so.1.31.1"),
                "{}",
                path.display()
            );
        }
    }

    #[test]
    fn out_of_memory_is_told_apart_from_other_failures() {
        let oom = RuntimeError::from_run(
            "Non-zero status code returned while running Conv node. Failed to allocate memory for requested buffer of size 1073741824".into(),
        );
        assert_eq!(oom.code(), ErrorCode::DeviceOutOfMemory);
        assert!(oom.code().is_transient());
        let other = RuntimeError::from_run("Invalid rank for input: mix".into());
        assert_eq!(other.code(), ErrorCode::ModelRuntime);
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
