//! The alert rules and dashboards hold together: `promtool check rules` and `promtool test
//! rules` pass, every dashboard is valid JSON with its datasource as a variable, every panel
//! query is valid PromQL (checked by promtool as a recording rule) and names only series the
//! process registry really exposes (or the DCGM exporter's / the process collector's), so a
//! renamed metric breaks this test. The README documents every `msaas_` family.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// GPU series of NVIDIA's DCGM exporter that the dashboards may use.
const DCGM_SERIES: &[&str] = &[
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
];

fn observe_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// promtool from PATH, else `$MSAAS_TOOLS/bin` (default `~/.cache/msaas/tools/bin`).
fn promtool() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("promtool"))
            .find(|candidate| candidate.is_file())
    });
    let tools = std::env::var_os("MSAAS_TOOLS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/msaas/tools"))
        })
        .map(|tools| tools.join("bin/promtool"));
    on_path
        .or(tools.filter(|candidate| candidate.is_file()))
        .expect(
            "promtool not found on PATH nor in $MSAAS_TOOLS/bin: run tools/install.d/20-promtool",
        )
}

fn run_promtool(args: &[&str], cwd: &Path) -> String {
    let output = Command::new(promtool())
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

fn files_with_extension(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

#[test]
fn alert_rules_check_and_their_unit_tests_pass() {
    let alerts = observe_dir().join("alerts");
    let out = run_promtool(&["check", "rules", "msaas.rules.yml"], &alerts);
    assert!(out.contains("SUCCESS"), "{out}");
    let tests = files_with_extension(&alerts.join("tests"), "yml");
    assert!(!tests.is_empty(), "no rule unit tests");
    for test in tests {
        let test = test.to_string_lossy().into_owned();
        let out = run_promtool(&["test", "rules", &test], &alerts);
        assert!(out.contains("SUCCESS"), "{out}");
    }
}

/// Every series name the process exposes once each metric has a child: histogram families
/// as `_bucket`, `_sum` and `_count`.
fn exposed_series() -> BTreeSet<String> {
    use observe::metrics::*;
    // Touch every labelled family so that it is exposed.
    job_finished("done");
    stage_attempt("decode");
    stage_duration("decode", 1.0);
    drop(InFlight::start("decode"));
    stage_retried("decode", "io");
    dead_lettered("decode", "io");
    job_failed("decode", "io");
    queue_depth("decode", 0, 0, 0.0);
    queue_poll_failed("decode");
    separation_finished("m", 1.0, 1.0);
    model_loaded("m", 1.0);
    stage_queue_wait("separate", 1.0);
    separate_batch("m", 3, 4, 0.5);
    http_request("/healthz", "GET", 200, 0.001);
    upload_accepted(1);
    upload_rejected("too_large");

    let mut names = BTreeSet::new();
    for line in render().lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            } else {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// Identifiers of a PromQL expression outside string literals (metric names, functions,
/// label names, keywords).
fn identifiers(expr: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut chars = expr.chars().peekable();
    let mut current = String::new();
    while let Some(c) = chars.next() {
        if c == '"' || c == '\'' {
            for inner in chars.by_ref() {
                if inner == c {
                    break;
                }
            }
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            current.push(c);
        } else if !current.is_empty() {
            found.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        found.push(current);
    }
    found
}

/// Grafana's variables replaced by values PromQL accepts.
fn substitute_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("${stage}", "separate")
        .replace("$stage", "separate")
        .replace("${model}", ".*")
        .replace("$model", ".*")
}

struct DashboardQuery {
    dashboard: String,
    panel: String,
    expr: String,
}

fn dashboard_queries() -> Vec<DashboardQuery> {
    let dashboards = files_with_extension(&observe_dir().join("dashboards"), "json");
    assert!(
        dashboards.len() >= 3,
        "overview, stage and model dashboards expected"
    );
    let mut queries = Vec::new();
    for path in dashboards {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).expect("dashboard readable");
        let board: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: invalid JSON: {e}"));
        assert!(board["title"].is_string(), "{name}: no title");
        assert!(board["uid"].is_string(), "{name}: no uid");
        let variables = board["templating"]["list"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no templating list"));
        assert!(
            variables
                .iter()
                .any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
            "{name}: the datasource must be a variable"
        );
        let panels = board["panels"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no panels"));
        let mut seen_ids = BTreeSet::new();
        for panel in panels {
            let id = panel["id"].as_u64().expect("panel id");
            assert!(seen_ids.insert(id), "{name}: panel id {id} twice");
            if panel["type"] == "row" {
                continue;
            }
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{name}/{title}: datasource not the variable"
            );
            let targets = panel["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}/{title}: no targets"));
            assert!(!targets.is_empty(), "{name}/{title}: no targets");
            for target in targets {
                let expr = target["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}/{title}: a target without expr"));
                queries.push(DashboardQuery {
                    dashboard: name.clone(),
                    panel: title.clone(),
                    expr: expr.to_owned(),
                });
            }
        }
    }
    queries
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    let queries = dashboard_queries();
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for (index, query) in queries.iter().enumerate() {
        // A JSON string is a valid YAML scalar: no quoting pitfalls.
        let expr = serde_json::to_string(&substitute_variables(&query.expr)).unwrap();
        rules.push_str(&format!(
            "      # {} / {}\n      - record: dashboard:query_{index}\n        expr: {expr}\n",
            query.dashboard, query.panel
        ));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("dashboards.rules.yml"), &rules).expect("rules written");
    let out = run_promtool(&["check", "rules", "dashboards.rules.yml"], dir.path());
    assert!(
        out.contains(&format!("{} rules found", queries.len())),
        "{out}\n{rules}"
    );
}

#[test]
fn dashboards_and_alerts_use_only_series_that_exist() {
    let exposed = exposed_series();
    assert!(exposed.contains("msaas_jobs_total"), "{exposed:?}");
    let mut exprs: Vec<(String, String)> = dashboard_queries()
        .into_iter()
        .map(|q| (format!("{} / {}", q.dashboard, q.panel), q.expr))
        .collect();
    let rules = std::fs::read_to_string(observe_dir().join("alerts/msaas.rules.yml")).unwrap();
    exprs.push(("alerts/msaas.rules.yml".into(), rules));

    let mut used = BTreeSet::new();
    for (place, expr) in &exprs {
        for name in identifiers(expr) {
            let ours = name.starts_with("msaas_") || name.starts_with("process_");
            if ours {
                assert!(
                    exposed.contains(&name),
                    "{place}: {name} is not exposed by the registry"
                );
                used.insert(name);
            } else if name.starts_with("DCGM_") {
                assert!(
                    DCGM_SERIES.contains(&name.as_str()),
                    "{place}: unknown {name}"
                );
            }
        }
    }
    // The dashboards show the core series.
    for core in [
        "msaas_jobs_total",
        "msaas_stage_duration_seconds_bucket",
        "msaas_queue_waiting",
        "msaas_queue_oldest_age_seconds",
        "msaas_dead_letters_total",
        "msaas_separation_realtime_factor_bucket",
    ] {
        assert!(used.contains(core), "{core} is on no dashboard or alert");
    }
}

#[test]
fn the_readme_documents_every_metric_family() {
    let readme = std::fs::read_to_string(observe_dir().join("README.md")).expect("README.md");
    let families: BTreeSet<String> = exposed_series()
        .into_iter()
        .filter(|name| name.starts_with("msaas_"))
        .map(|name| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .map_or(name.clone(), str::to_owned)
        })
        .collect();
    for family in families {
        assert!(
            readme.contains(&format!("`{family}`")),
            "observe/README.md does not document `{family}`"
        );
    }
}
