//! `loadtest/run` end to end, on a scale the test suite can afford: the real k6 drives the real
//! binary (`msaas serve --embedded` on loopback) through upload -> status -> stems, and the
//! scenario's thresholds decide. Bigger runs are on demand (loadtest/README.md).

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

use std::path::Path;
use std::process::Command;

#[test]
fn a_small_upload_scenario_passes_its_thresholds_and_writes_a_report() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().expect("temp dir");
    let report = out.path().join("report");
    let run = Command::new(repo.join("loadtest/run"))
        .args([
            "upload",
            "--vus",
            "2",
            "--iterations",
            "4",
            "--clips",
            "2",
            "--clip-seconds",
            "2",
            "--duration",
            "90s",
            "--binary",
            env!("CARGO_BIN_EXE_msaas"),
            "--out",
        ])
        .arg(&report)
        .output()
        .expect("loadtest/run starts (bash)");
    let log = |name: &str| std::fs::read_to_string(report.join(name)).unwrap_or_default();
    assert!(
        run.status.success(),
        "loadtest/run failed ({:?})\nstdout:\n{}\nstderr:\n{}\nk6.log (tail):\n{}\nserver.log (tail):\n{}",
        run.status,
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
        tail(&log("k6.log")),
        tail(&log("server.log")),
    );

    let summary: serde_json::Value =
        serde_json::from_str(&log("summary.json")).expect("summary.json is k6's JSON summary");
    let metrics = &summary["metrics"];
    assert!(
        metrics.is_object(),
        "summary.json has no metrics: {summary}"
    );
    // Every upload became a finished job whose stems were downloaded (k6 Rate `job_success`).
    let job_success = &metrics["job_success"]["values"];
    assert_eq!(
        (
            job_success["passes"].as_u64(),
            job_success["fails"].as_u64()
        ),
        (Some(4), Some(0)),
        "not every job succeeded: {job_success}"
    );
    let report_md = log("report.md");
    assert!(
        report_md.contains("p95") && report_md.contains("upload"),
        "report.md lacks the latency table:\n{report_md}"
    );
}

fn tail(text: &str) -> &str {
    let start = text.len().saturating_sub(3000);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    &text[start..]
}
