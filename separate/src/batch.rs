//! One executor per loaded graph, shared by every job running on it. Jobs hand in *rows*
//! (Demucs: chunks; Spleeter and MDX-Net: spectrogram segments) a window at a time; the rows of
//! every waiting window are packed into graph runs of up to `capacity` rows, taken round-robin
//! across windows one row at a time, so a short job never waits behind a long one's whole song
//! and a partial window of one job is filled with another's rows.
//!
//! There is no thread of its own: the first caller that finds the graph idle runs the next
//! batch (of anyone's rows) and hands the results out; the others wait on a condition variable.
//! A row's outputs depend on its own inputs only (no operator of these graphs mixes the batch
//! axis), and every run has the same shape (a partial batch is padded with zero rows: kernels
//! are chosen by shape, and round differently at another batch size). At batch size 1 (the CPU
//! default) a job's output is therefore the same bytes alone or beside other jobs. At larger
//! sizes a chunk packed beside other jobs' may sit elsewhere in its batch than alone, and ONNX
//! Runtime's CPU kernels can round its last bits differently there: measured on the full-size
//! htdemucs, at most 8.7e-6 of the peak (BENCHMARKS.md); the tiny test model stays bit-exact.
//!
//! Out of memory on the device halves the capacity and runs the same rows again in smaller
//! batches; only a single row that does not fit is an error (`device_out_of_memory`, retried
//! by the worker like any fault of the moment).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::runtime::{OnnxModel, RuntimeError, TensorData};

/// One graph run, as reported to the observer [`set_observer`] installs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchRun<'a> {
    /// The model the graph belongs to.
    pub model: &'a str,
    /// Rows run.
    pub rows: usize,
    /// Rows the batch could hold (the capacity at the time).
    pub capacity: usize,
    /// Distinct jobs (windows) whose rows were in the batch.
    pub windows: usize,
    /// Time inside the runtime.
    pub busy: Duration,
}

type Observer = Box<dyn Fn(&BatchRun<'_>) + Send + Sync>;
static OBSERVER: OnceLock<Observer> = OnceLock::new();

/// Installs the process-wide observer of graph runs (the service turns them into metrics);
/// the first call wins.
pub fn set_observer(observer: impl Fn(&BatchRun<'_>) + Send + Sync + 'static) {
    let _ = OBSERVER.set(Box::new(observer));
}

/// Tells the observer about one graph run.
fn report(run: &BatchRun<'_>) {
    if let Some(observer) = OBSERVER.get() {
        observer(run);
    }
}

/// Totals since the graph was loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchTotals {
    pub runs: u64,
    pub rows: u64,
    /// Sum of the capacity of every run: `rows / slots` is the fill ratio.
    pub slots: u64,
    /// Runs that held rows of more than one window (job).
    pub shared_runs: u64,
    pub busy: Duration,
}

/// The outputs of one row: each graph output without its batch axis.
#[derive(Debug, Clone)]
pub struct RowOutput {
    batch: Arc<Vec<TensorData>>,
    row: usize,
}

impl RowOutput {
    /// Output `index` of this row, row-major, checked to have the shape `want` (without the
    /// batch axis); else a message saying what the graph gave instead.
    pub fn shaped(&self, index: usize, want: &[usize]) -> Result<&[f32], String> {
        match (self.shape(index), self.output(index)) {
            (Some(shape), Some(values)) if shape == want => Ok(values),
            (None, _) | (_, None) => Err(format!(
                "the graph gave {} outputs, expected an output {index} of shape {want:?}",
                self.batch.len()
            )),
            (Some(shape), Some(_)) => Err(format!(
                "output {index} of the graph has rows of shape {shape:?}, expected {want:?}"
            )),
        }
    }

    /// Output `index` of this row, row-major; `None` past the graph's outputs.
    fn output(&self, index: usize) -> Option<&[f32]> {
        let tensor = self.batch.get(index)?;
        let rows = *tensor.shape.first()?;
        let size = tensor.data.len() / rows.max(1);
        tensor.data.get(self.row * size..(self.row + 1) * size)
    }

    /// The shape of output `index` without the batch axis.
    fn shape(&self, index: usize) -> Option<&[usize]> {
        self.batch.get(index).and_then(|t| t.shape.get(1..))
    }
}

/// One input row: one buffer per graph input, each shaped as [`BatchedGraph::run_rows`] says.
pub type Row = Vec<Vec<f32>>;

/// A window of one caller: its rows, and what came back for them.
struct Window {
    shapes: Vec<Vec<usize>>,
    /// Rows not yet run, with their index in the window.
    pending: VecDeque<(usize, Row)>,
    outputs: Vec<Option<RowOutput>>,
    failed: Option<RuntimeError>,
}

impl Window {
    /// Every row has run, or one failed (which ends the window).
    fn finished(&self) -> bool {
        self.failed.is_some() || self.outputs.iter().all(Option::is_some)
    }
}

#[derive(Default)]
struct Queue {
    windows: BTreeMap<u64, Window>,
    next_id: u64,
    /// The window whose row was taken last: the next batch starts after it.
    last_served: Option<u64>,
    running: bool,
    /// Holds of [`BatchedGraph::hold`]: no batch starts while any is alive.
    holds: usize,
}

/// Rows taken for one graph run: (window, row index in it, inputs).
struct Batch {
    shapes: Vec<Vec<usize>>,
    rows: Vec<(u64, usize, Row)>,
}

impl Queue {
    /// The next batch: round-robin over the windows with pending rows, starting after the
    /// last one served, one row per window per turn, of the first window's shapes.
    fn take_batch(&mut self, capacity: usize) -> Option<Batch> {
        let mut order: Vec<u64> = self
            .windows
            .iter()
            .filter(|(_, w)| !w.pending.is_empty() && w.failed.is_none())
            .map(|(&id, _)| id)
            .collect();
        if let Some(after) = self.last_served {
            let split = order.partition_point(|&id| id <= after);
            order.rotate_left(split);
        }
        let first = *order.first()?;
        let shapes = self.windows.get(&first)?.shapes.clone();
        order.retain(|id| self.windows.get(id).is_some_and(|w| w.shapes == shapes));
        let mut rows = Vec::with_capacity(capacity);
        while rows.len() < capacity {
            let mut took = false;
            for &id in &order {
                if rows.len() == capacity {
                    break;
                }
                if let Some((index, row)) = self
                    .windows
                    .get_mut(&id)
                    .and_then(|w| w.pending.pop_front())
                {
                    rows.push((id, index, row));
                    self.last_served = Some(id);
                    took = true;
                }
            }
            if !took {
                break;
            }
        }
        Some(Batch { shapes, rows })
    }

    /// Hands a batch's outputs to its windows.
    fn deliver(&mut self, rows: Vec<(u64, usize, Row)>, outputs: &Arc<Vec<TensorData>>) {
        for (row, (id, index, _)) in rows.into_iter().enumerate() {
            if let Some(window) = self.windows.get_mut(&id) {
                window.outputs[index] = Some(RowOutput {
                    batch: outputs.clone(),
                    row,
                });
            }
        }
    }

    /// What a finished run means for the windows in it. Out of memory with more than one row:
    /// the capacity halves for good and the rows run again, in smaller batches.
    fn settle(
        &mut self,
        batch: Batch,
        result: Result<Arc<Vec<TensorData>>, RuntimeError>,
        capacity: &AtomicUsize,
        model: &str,
    ) {
        match result {
            Ok(outputs) => self.deliver(batch.rows, &outputs),
            Err(RuntimeError::OutOfMemory(message)) if batch.rows.len() > 1 => {
                let smaller = (batch.rows.len() / 2).max(1);
                capacity.fetch_min(smaller, Ordering::Relaxed);
                tracing::warn!(
                    model,
                    rows = batch.rows.len(),
                    capacity = smaller,
                    %message,
                    "the device ran out of memory: smaller batches from now on"
                );
                self.requeue(batch.rows);
            }
            Err(error) => self.fail(&batch.rows, &error),
        }
    }

    /// Puts the rows of a batch back at the front of their windows, in their order.
    fn requeue(&mut self, rows: Vec<(u64, usize, Row)>) {
        for (id, index, row) in rows.into_iter().rev() {
            if let Some(window) = self.windows.get_mut(&id) {
                window.pending.push_front((index, row));
            }
        }
    }

    /// Fails every window that had a row in the batch (their other rows are dropped).
    fn fail(&mut self, rows: &[(u64, usize, Row)], error: &RuntimeError) {
        for (id, _, _) in rows {
            if let Some(window) = self.windows.get_mut(id) {
                window.pending.clear();
                window.failed.get_or_insert_with(|| error.clone());
            }
        }
    }
}

/// A graph whose every input and output has a leading batch axis, run for many callers at once.
pub struct BatchedGraph {
    model: String,
    graph: OnnxModel,
    capacity: AtomicUsize,
    queue: Mutex<Queue>,
    turn: Condvar,
    totals: Mutex<BatchTotals>,
}

impl std::fmt::Debug for BatchedGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchedGraph")
            .field("model", &self.model)
            .field("graph", &self.graph)
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}

impl BatchedGraph {
    /// `capacity`: rows per graph run (at least 1).
    pub fn new(model: impl Into<String>, graph: OnnxModel, capacity: usize) -> Self {
        Self {
            model: model.into(),
            graph,
            capacity: AtomicUsize::new(capacity.max(1)),
            queue: Mutex::new(Queue::default()),
            turn: Condvar::new(),
            totals: Mutex::new(BatchTotals::default()),
        }
    }

    /// Rows per graph run now (smaller after the device ran out of memory).
    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }

    pub fn totals(&self) -> BatchTotals {
        *self.totals.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Windows with rows waiting to run.
    pub fn waiting_windows(&self) -> usize {
        self.lock()
            .windows
            .values()
            .filter(|w| !w.pending.is_empty())
            .count()
    }

    /// Keeps batches from starting until the returned guard is dropped, so that the windows of
    /// several callers line up (how a test makes jobs share batches without racing them).
    pub fn hold(&self) -> Hold<'_> {
        self.lock().holds += 1;
        Hold { graph: self }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `rows` — each one buffer per graph input, input `i` shaped `shapes[i]` (without
    /// the batch axis) — possibly together with other callers' rows, and returns each row's
    /// outputs in order. Blocks until every row has run.
    pub fn run_rows(
        &self,
        shapes: &[Vec<usize>],
        rows: Vec<Row>,
    ) -> Result<Vec<RowOutput>, RuntimeError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let sizes: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
        if let Some(bad) = rows.iter().position(|row| {
            row.len() != sizes.len() || row.iter().zip(&sizes).any(|(d, &n)| d.len() != n)
        }) {
            return Err(RuntimeError::Inference(format!(
                "row {bad} does not match the input shapes {shapes:?}"
            )));
        }
        let count = rows.len();
        let mut queue = self.lock();
        let id = queue.next_id;
        queue.next_id += 1;
        queue.windows.insert(
            id,
            Window {
                shapes: shapes.to_vec(),
                pending: rows.into_iter().enumerate().collect(),
                outputs: vec![None; count],
                failed: None,
            },
        );
        loop {
            let finished = queue.windows.get(&id).is_none_or(Window::finished);
            if finished {
                let window = queue.windows.remove(&id);
                drop(queue);
                let window = window
                    .ok_or_else(|| RuntimeError::Inference("a batch window went missing".into()))?;
                if let Some(error) = window.failed {
                    return Err(error);
                }
                return window
                    .outputs
                    .into_iter()
                    .map(|o| o.ok_or_else(|| RuntimeError::Inference("a row has no output".into())))
                    .collect();
            }
            if !queue.running
                && queue.holds == 0
                && let Some(batch) = queue.take_batch(self.capacity())
            {
                queue.running = true;
                drop(queue);
                let result = self.execute(&batch);
                queue = self.lock();
                queue.running = false;
                queue.settle(batch, result, &self.capacity, &self.model);
                self.turn.notify_all();
                continue;
            }
            queue = self
                .turn
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// One graph run of a batch: its rows stacked on the batch axis, padded with zero rows up
    /// to the capacity. Runtimes pick kernels by shape (ONNX Runtime's CPU kernels round
    /// differently at batch 1 and 2 on the full-size htdemucs), so every run has one shape and a
    /// row's outputs do not depend on how many rows ran beside it (on GPUs, one shape also keeps
    /// cuDNN's algorithm choice stable).
    fn execute(&self, batch: &Batch) -> Result<Arc<Vec<TensorData>>, RuntimeError> {
        let count = batch.rows.len();
        let padded = self.capacity().max(count);
        let shapes: Vec<Vec<usize>> = batch
            .shapes
            .iter()
            .map(|s| std::iter::once(padded).chain(s.iter().copied()).collect())
            .collect();
        let stacked: Vec<Vec<f32>> = (0..batch.shapes.len())
            .map(|input| {
                let row_size: usize = batch.shapes[input].iter().product();
                let mut data = Vec::with_capacity(padded * row_size);
                for (_, _, row) in &batch.rows {
                    data.extend_from_slice(&row[input]);
                }
                data.resize(padded * row_size, 0.0);
                data
            })
            .collect();
        let inputs: Vec<(&[usize], &[f32])> = shapes
            .iter()
            .zip(&stacked)
            .map(|(s, d)| (s.as_slice(), d.as_slice()))
            .collect();
        let started = Instant::now();
        // A panic inside the runtime must not leave the graph marked running forever.
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.graph.run(&inputs)))
                .unwrap_or_else(|_| Err(RuntimeError::Inference("the runtime panicked".into())));
        let busy = started.elapsed();
        let outputs = result?;
        if let Some(bad) = outputs.iter().find(|o| o.shape.first() != Some(&padded)) {
            return Err(RuntimeError::Inference(format!(
                "{} gave an output of shape {:?} for a batch of {padded}",
                self.graph.path().display(),
                bad.shape
            )));
        }
        let windows = {
            let mut ids: Vec<u64> = batch.rows.iter().map(|(id, _, _)| *id).collect();
            ids.sort_unstable();
            ids.dedup();
            ids.len()
        };
        {
            let mut totals = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
            totals.runs += 1;
            totals.rows += count as u64;
            totals.slots += padded as u64;
            totals.shared_runs += u64::from(windows > 1);
            totals.busy += busy;
        }
        report(&BatchRun {
            model: &self.model,
            rows: count,
            capacity: padded,
            windows,
            busy,
        });
        Ok(Arc::new(outputs))
    }
}

/// See [`BatchedGraph::hold`].
#[must_use = "batches are held back only while the guard lives"]
pub struct Hold<'a> {
    graph: &'a BatchedGraph,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        let mut queue = self.graph.lock();
        queue.holds = queue.holds.saturating_sub(1);
        drop(queue);
        self.graph.turn.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(rows: usize, shape: usize) -> Window {
        Window {
            shapes: vec![vec![shape]],
            pending: (0..rows)
                .map(|i| (i, vec![vec![i as f32; shape]]))
                .collect(),
            outputs: vec![None; rows],
            failed: None,
        }
    }

    fn queue(windows: Vec<Window>) -> Queue {
        let mut queue = Queue::default();
        for w in windows {
            let id = queue.next_id;
            queue.next_id += 1;
            queue.windows.insert(id, w);
        }
        queue
    }

    fn taken(batch: &Batch) -> Vec<(u64, usize)> {
        batch.rows.iter().map(|(id, row, _)| (*id, *row)).collect()
    }

    #[test]
    fn a_row_output_is_its_slice_of_the_batch_when_the_shape_is_the_expected_one() {
        // Two rows of shape [2, 3]: row 1 is values 6..12.
        let batch = Arc::new(vec![TensorData {
            shape: vec![2, 2, 3],
            data: (0..12).map(|v| v as f32).collect(),
        }]);
        let row = RowOutput { batch, row: 1 };
        let values: Vec<f32> = (6..12).map(|v| v as f32).collect();
        assert_eq!(row.shaped(0, &[2, 3]), Ok(&values[..]));
        let wrong = row.shaped(0, &[3, 2]).expect_err("other shape");
        assert!(
            wrong.contains("[2, 3]") && wrong.contains("[3, 2]"),
            "{wrong}"
        );
        let missing = row.shaped(1, &[2, 3]).expect_err("one output only");
        assert!(missing.contains("gave 1 outputs"), "{missing}");
    }

    #[test]
    fn batches_take_one_row_per_window_in_turn_and_resume_after_the_last_served() {
        let mut q = queue(vec![window(3, 2), window(1, 2), window(2, 2)]);
        let first = q.take_batch(4).expect("rows pending");
        assert_eq!(taken(&first), [(0, 0), (1, 0), (2, 0), (0, 1)]);
        // Window 0 was served last: the next batch starts with window 1's successor, 2.
        let second = q.take_batch(4).expect("rows pending");
        assert_eq!(taken(&second), [(2, 1), (0, 2)]);
        assert!(q.take_batch(4).is_none(), "nothing left");
    }

    #[test]
    fn out_of_memory_halves_the_batch_until_one_row_is_left_then_fails_with_its_code() {
        let mut q = queue(vec![window(3, 1), window(2, 1)]);
        let capacity = AtomicUsize::new(4);
        let oom = || {
            Err(RuntimeError::OutOfMemory(
                "CUDA failure 2: out of memory".into(),
            ))
        };
        let batch = q
            .take_batch(capacity.load(Ordering::Relaxed))
            .expect("rows");
        assert_eq!(batch.rows.len(), 4);
        q.settle(batch, oom(), &capacity, "m");
        assert_eq!(capacity.load(Ordering::Relaxed), 2, "halved");
        assert!(
            q.windows.values().all(|w| w.failed.is_none()),
            "nothing failed yet"
        );
        assert_eq!(
            q.windows.values().map(|w| w.pending.len()).sum::<usize>(),
            5,
            "all back"
        );

        let batch = q
            .take_batch(capacity.load(Ordering::Relaxed))
            .expect("rows");
        assert_eq!(batch.rows.len(), 2);
        q.settle(batch, oom(), &capacity, "m");
        assert_eq!(capacity.load(Ordering::Relaxed), 1);

        let batch = q
            .take_batch(capacity.load(Ordering::Relaxed))
            .expect("rows");
        let (id, _, _) = batch.rows[0];
        q.settle(batch, oom(), &capacity, "m");
        let error = q.windows[&id]
            .failed
            .clone()
            .expect("one row that does not fit fails");
        assert_eq!(error.code(), audio::ErrorCode::DeviceOutOfMemory);
        assert!(error.code().is_transient(), "the worker retries it");
    }

    #[test]
    fn rows_of_other_shapes_wait_for_a_batch_of_their_own() {
        let mut q = queue(vec![window(2, 2), window(2, 3)]);
        let first = q.take_batch(4).expect("rows");
        assert_eq!(taken(&first), [(0, 0), (0, 1)]);
        let second = q.take_batch(4).expect("rows");
        assert_eq!(taken(&second), [(1, 0), (1, 1)]);
    }

    #[test]
    fn requeued_rows_run_again_in_their_order_and_a_failure_ends_their_windows() {
        let mut q = queue(vec![window(2, 1), window(2, 1)]);
        let batch = q.take_batch(3).expect("rows");
        assert_eq!(taken(&batch), [(0, 0), (1, 0), (0, 1)]);
        q.requeue(batch.rows);
        q.last_served = None;
        let again = q.take_batch(1).expect("rows");
        assert_eq!(taken(&again), [(0, 0)]);

        q.fail(&again.rows, &RuntimeError::Inference("boom".into()));
        let failed = q.windows.get(&0).expect("window 0");
        assert!(failed.failed.is_some() && failed.pending.is_empty());
        let rest = q.take_batch(4).expect("window 1 still runs");
        assert_eq!(taken(&rest), [(1, 0), (1, 1)]);
    }
}
