//! What both mask families share when they load: the one graph checked against the manifest,
//! run through the executor every job on the model shares, and the errors that name the model.

use crate::SeparateError;
use crate::batch::BatchedGraph;
use crate::manifest::Manifest;
use crate::runtime::RuntimeOptions;
use crate::stft::Stft;

/// The one ONNX graph a mask model must have, checked to take one input and give `outputs`
/// outputs (`family` names the kind of graph in the error), with the manifest's STFT. Its
/// runs hold the device's batch size ([`RuntimeOptions::batch_capacity`]) of rows, at most the
/// manifest's `batch` (the model's own bound on memory per run), packed from every job on it.
pub(super) fn single_graph(
    manifest: &Manifest,
    options: &RuntimeOptions,
    family: &str,
    outputs: usize,
    max_batch: usize,
) -> Result<(BatchedGraph, Stft), SeparateError> {
    let stft = Stft::new(manifest.stft).map_err(|e| model_error(&manifest.name, e.to_string()))?;
    let graph = match manifest.files.as_slice() {
        [file] => crate::runtime::OnnxModel::load(&manifest.file_path(file), options)?,
        files => {
            return Err(model_error(
                &manifest.name,
                format!(
                    "a mask model is one ONNX graph, the manifest lists {}",
                    files.len()
                ),
            ));
        }
    };
    if graph.input_names().len() != 1 || graph.output_names().len() != outputs {
        return Err(model_error(
            &manifest.name,
            format!(
                "a {family} graph takes one input and gives {outputs} output(s); {} has {} inputs and {} outputs",
                graph.path().display(),
                graph.input_names().len(),
                graph.output_names().len()
            ),
        ));
    }
    let capacity = options.batch_capacity().min(max_batch);
    Ok((
        BatchedGraph::new(manifest.name.clone(), graph, capacity),
        stft,
    ))
}

pub(super) fn model_error(manifest_name: &str, message: impl Into<String>) -> SeparateError {
    SeparateError::Model {
        model: manifest_name.to_string(),
        message: message.into(),
    }
}

pub(super) fn stft_error(manifest_name: &str, err: crate::stft::StftError) -> SeparateError {
    match err {
        crate::stft::StftError::SignalTooShort { .. } => SeparateError::Input {
            code: audio::ErrorCode::TooShort,
            message: err.to_string(),
        },
        other => model_error(manifest_name, other.to_string()),
    }
}
