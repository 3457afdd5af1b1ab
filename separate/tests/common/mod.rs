//! Helpers shared by the separate crate's integration tests.

// Each test binary includes this module and uses only some of it.
#![allow(dead_code)]

use separate::Listener;
use separate::batch::BatchTotals;

/// Records every progress report; cancels once `cancel_after` chunks are done.
#[derive(Default)]
pub struct Recorder {
    pub calls: Vec<(usize, usize)>,
    pub cancel_after: Option<usize>,
}

impl Listener for Recorder {
    fn progress(&mut self, done: usize, total: usize) {
        self.calls.push((done, total));
    }
    fn cancelled(&self) -> bool {
        self.cancel_after
            .is_some_and(|n| self.calls.last().is_some_and(|&(done, _)| done >= n))
    }
}

/// Runs every job on its own thread with `graph` held until each has queued its first window,
/// so that their chunks share runs without racing; returns their results in order.
pub fn lined_up<T: Send>(
    graph: &separate::batch::BatchedGraph,
    jobs: Vec<impl FnOnce() -> T + Send>,
) -> Vec<T> {
    std::thread::scope(|scope| {
        let hold = graph.hold();
        let count = jobs.len();
        let handles: Vec<_> = jobs.into_iter().map(|job| scope.spawn(job)).collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while graph.waiting_windows() < count {
            assert!(
                std::time::Instant::now() < deadline,
                "the jobs never queued their chunks"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        drop(hold);
        handles
            .into_iter()
            .map(|h| h.join().expect("job thread"))
            .collect()
    })
}

/// Separates every input alone, then all at once on threads whose chunks are lined up behind
/// a hold on the model's graph (so that they share runs without racing), and asserts that each
/// job got the same bytes both ways, that runs held chunks of more than one job, and that every
/// chunk ran once. Returns the graph's totals of the shared part.
pub fn assert_shared_runs_change_nothing(
    separator: &separate::Separator,
    inputs: &[audio::Pcm],
    expected_rows: u64,
) -> separate::batch::BatchTotals {
    let options = separate::SeparateOptions::default();
    let alone: Vec<_> = inputs
        .iter()
        .map(|mix| {
            separator
                .run(mix, &options, &mut separate::NoListener)
                .expect("alone")
        })
        .collect();
    let graph = separator.graphs().next().expect("a graph");
    let before = graph.totals();
    let options = &options;
    let jobs: Vec<_> = inputs
        .iter()
        .map(|mix| move || separator.run(mix, options, &mut separate::NoListener))
        .collect();
    let together = lined_up(graph, jobs);
    for (i, (stems, want)) in together.into_iter().zip(&alone).enumerate() {
        let stems = stems.expect("together");
        assert!(
            stems == *want,
            "job {i}: batched with others, the output changed"
        );
    }
    let after = graph.totals();
    assert!(
        after.shared_runs > before.shared_runs,
        "no run held chunks of two jobs: {before:?} → {after:?}"
    );
    assert_eq!(
        after.rows - before.rows,
        expected_rows,
        "every chunk runs once"
    );
    BatchTotals {
        runs: after.runs - before.runs,
        rows: after.rows - before.rows,
        slots: after.slots - before.slots,
        shared_runs: after.shared_runs - before.shared_runs,
        busy: after.busy - before.busy,
    }
}
