//! What `msaas run` shows while it works: progress bars on a terminal (one per file, with the
//! stage and the separation's chunk progress), plain log lines otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use pipeline::JobId;
use pipeline::traits::{EventKind, JobEvent};

/// Tracks and displays the progress of the files of one `msaas run`.
pub struct RunProgress {
    bars: Option<MultiProgress>,
    files: HashMap<JobId, FileProgress>,
}

struct FileProgress {
    name: String,
    bar: Option<ProgressBar>,
    /// Last progress percentage logged, to log every 10 % when not on a terminal.
    last_logged_percent: u64,
}

impl RunProgress {
    /// Bars when stderr is a terminal, log lines otherwise.
    pub fn new() -> Self {
        let bars = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Self {
            bars,
            files: HashMap::new(),
        }
    }

    pub fn add_file(&mut self, job: JobId, name: String) {
        let bar = self.bars.as_ref().map(|bars| {
            let bar = bars.add(ProgressBar::new(1));
            bar.set_style(file_style());
            bar.set_prefix(name.clone());
            bar.set_message("queued");
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        self.files.insert(
            job,
            FileProgress {
                name,
                bar,
                last_logged_percent: 0,
            },
        );
    }

    /// Prints a line above the bars (or to stderr when there are none).
    pub fn println(&self, line: &str) {
        match &self.bars {
            Some(bars) => {
                // A failed redraw only loses a line of decoration; the line itself is retried plainly.
                if bars.println(line).is_err() {
                    eprintln!("{line}");
                }
            }
            None => eprintln!("{line}"),
        }
    }

    pub fn on_event(&mut self, event: &JobEvent) {
        let Some(file) = self.files.get_mut(&event.job_id) else {
            return;
        };
        let stage = event.stage.map_or("", |s| s.as_str());
        match event.kind {
            EventKind::StageStarted => {
                file.last_logged_percent = 0;
                match &file.bar {
                    Some(bar) => {
                        bar.set_length(1);
                        bar.set_position(0);
                        bar.set_message(stage_verb(stage));
                    }
                    None => tracing::info!(file = %file.name, stage, "stage started"),
                }
            }
            EventKind::Progress => {
                let Some(progress) = event.progress else {
                    return;
                };
                match &file.bar {
                    Some(bar) => {
                        bar.set_length(progress.total.max(1));
                        bar.set_position(progress.done);
                    }
                    None => {
                        let percent = progress.done * 100 / progress.total.max(1);
                        if percent >= file.last_logged_percent + 10
                            || progress.done == progress.total
                        {
                            file.last_logged_percent = percent;
                            tracing::info!(
                                file = %file.name,
                                stage,
                                done = progress.done,
                                total = progress.total,
                                "{percent}%"
                            );
                        }
                    }
                }
            }
            EventKind::StageFinished => {
                if file.bar.is_none() {
                    tracing::info!(file = %file.name, stage, "stage finished");
                }
            }
            EventKind::Retrying => {
                let reason = event
                    .job
                    .as_ref()
                    .and_then(|job| job.error.as_ref())
                    .map_or_else(String::new, ToString::to_string);
                tracing::warn!(file = %file.name, stage, %reason, "retrying");
            }
            EventKind::Queued | EventKind::Done | EventKind::Failed | EventKind::Cancelled => {}
        }
    }

    /// Marks a file finished and removes its bar.
    pub fn finish_file(&mut self, job: &JobId, outcome: &str) {
        if let Some(file) = self.files.get(job) {
            match &file.bar {
                Some(bar) => bar.finish_and_clear(),
                None => tracing::info!(file = %file.name, outcome, "finished"),
            }
        }
    }

    pub fn clear(&self) {
        if let Some(bars) = &self.bars {
            // Clearing is cosmetic; a terminal that went away needs no clearing.
            let _ = bars.clear();
        }
    }
}

fn stage_verb(stage: &str) -> &'static str {
    match stage {
        "decode" => "decoding",
        "separate" => "separating",
        "encode" => "encoding",
        _ => "working",
    }
}

fn file_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix:30!} {msg:11} [{bar:30}] {pos}/{len} {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}
