//! Helpers shared by the separate crate's integration tests.

use separate::Listener;

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
