//! Checks of the Helm chart (helm/msaas) without a cluster: `helm lint --strict`, `helm template`
//! with each values profile, every rendered manifest through `kubernetes-validate --strict`, and
//! the facts the deployment depends on, asserted on the parsed manifests.
//!
//! Tools: helm (tools/install.d/30-helm) and kubernetes-validate with its Python, which also
//! turns the rendered YAML into JSON here (tools/install.d/50-kubernetes-validate). They are
//! looked up on PATH, then in `$MSAAS_TOOLS/bin` (`make test-deps` installs them).

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

const RELEASE: &str = "stems";
const NAMESPACE: &str = "media";
/// Kubernetes versions the manifests are validated against: the newest schema set the pinned
/// kubernetes-validate ships, and the oldest version Chart.yaml admits.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.37.0", "1.30.0"];
/// Custom resources: kubernetes-validate knows only built-in kinds, so these are checked by the
/// assertions below instead (their CRDs come with KEDA and the Prometheus Operator).
const CUSTOM_KINDS: [&str; 3] = ["ScaledObject", "TriggerAuthentication", "ServiceMonitor"];
const STAGES: [&str; 3] = ["decode", "separate", "encode"];
const ROLES: [&str; 4] = ["ingest", "decode", "separate", "encode"];

/// Values profiles: name and the values files (relative to the chart) layered on the defaults.
const PROFILES: [(&str, &[&str]); 5] = [
    ("default", &[]),
    ("cpu", &["values-cpu.yaml"]),
    ("gpu", &["ci/values-gpu.yaml"]),
    ("external", &["ci/values-external.yaml"]),
    ("minimal", &["ci/values-minimal.yaml"]),
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    repo().join("helm/msaas")
}

/// `name` on PATH, else in `$MSAAS_TOOLS/bin` (default `~/.cache/msaas/tools/bin`).
fn tool(name: &str, install_script: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let tools_dir = std::env::var_os("MSAAS_TOOLS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
                .map(|cache| cache.join("msaas/tools"))
        })
        .map(|tools| tools.join("bin"));
    on_path
        .into_iter()
        .chain(tools_dir)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found on PATH nor in $MSAAS_TOOLS/bin: run `{install_script}` \
                 (or `make test-deps`, which runs every tools/install.d script)"
            )
        })
}

fn helm() -> Command {
    Command::new(tool("helm", "tools/install.d/30-helm"))
}

fn kubernetes_validate() -> Command {
    Command::new(tool(
        "kubernetes-validate",
        "tools/install.d/50-kubernetes-validate",
    ))
}

/// Runs a command to completion; panics with its output when it fails.
fn run_ok(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("{what}: cannot run: {err}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn values_args(files: &[&str]) -> Vec<String> {
    files
        .iter()
        .flat_map(|file| ["-f".to_owned(), chart().join(file).display().to_string()])
        .collect()
}

/// `helm template` output (YAML text) for a profile plus `--set` pairs.
fn render_text(files: &[&str], set: &[&str]) -> String {
    let mut command = helm();
    command
        .args(["template", RELEASE])
        .arg(chart())
        .args(["--namespace", NAMESPACE])
        .args(values_args(files));
    for pair in set {
        command.args(["--set", pair]);
    }
    run_ok(&mut command, &format!("helm template {files:?} {set:?}"))
}

/// The rendered manifests, parsed (YAML -> JSON by kubernetes-validate's Python and PyYAML).
fn parse_manifests(yaml: &str) -> Vec<Value> {
    let python = tool(
        "msaas-yaml-python",
        "tools/install.d/50-kubernetes-validate",
    );
    let mut child = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml\n\
             json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the YAML -> JSON converter");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("converter stdin");
        stdin
            .write_all(yaml.as_bytes())
            .expect("write YAML to the converter");
    }
    let output = child.wait_with_output().expect("YAML -> JSON converter");
    assert!(
        output.status.success(),
        "rendered YAML does not parse: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    match serde_json::from_slice(&output.stdout).expect("converter writes JSON") {
        Value::Array(documents) => documents,
        other => panic!("expected a list of documents, got {other}"),
    }
}

fn render(files: &[&str], set: &[&str]) -> Vec<Value> {
    parse_manifests(&render_text(files, set))
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

fn of_kind<'a>(docs: &'a [Value], wanted: &str) -> Vec<&'a Value> {
    docs.iter().filter(|doc| kind(doc) == wanted).collect()
}

fn find<'a>(docs: &'a [Value], wanted_kind: &str, wanted_name: &str) -> &'a Value {
    docs.iter()
        .find(|doc| kind(doc) == wanted_kind && name(doc) == wanted_name)
        .unwrap_or_else(|| panic!("no {wanted_kind} {wanted_name} rendered"))
}

fn resource_name(role: &str) -> String {
    format!("{RELEASE}-msaas-{role}")
}

fn deployment<'a>(docs: &'a [Value], role: &str) -> &'a Value {
    find(docs, "Deployment", &resource_name(role))
}

/// Pod specs of every workload (Deployment, StatefulSet, Job) with the workload's name.
fn pod_specs(docs: &[Value]) -> Vec<(String, &Value)> {
    docs.iter()
        .filter(|doc| matches!(kind(doc), "Deployment" | "StatefulSet" | "Job"))
        .map(|doc| {
            (
                format!("{} {}", kind(doc), name(doc)),
                &doc["spec"]["template"]["spec"],
            )
        })
        .collect()
}

fn containers(pod: &Value) -> Vec<&Value> {
    list_of(pod, "containers")
}

/// The entries of a list field of `value` (none when it is absent).
fn list_of<'a>(value: &'a Value, key: &str) -> Vec<&'a Value> {
    value[key]
        .as_array()
        .map(|list| list.iter().collect())
        .unwrap_or_default()
}

fn the_container(deployment: &Value) -> &Value {
    let pod = &deployment["spec"]["template"]["spec"];
    let list = containers(pod);
    assert_eq!(
        list.len(),
        1,
        "{}: one container expected",
        name(deployment)
    );
    list[0]
}

fn env_entries(container: &Value) -> Vec<&Value> {
    container["env"]
        .as_array()
        .map(|list| list.iter().collect())
        .unwrap_or_default()
}

fn env_value<'a>(container: &'a Value, wanted: &str) -> Option<&'a str> {
    env_entries(container)
        .into_iter()
        .find(|entry| entry["name"] == wanted)
        .and_then(|entry| entry["value"].as_str())
}

#[test]
fn lint_is_clean_in_strict_mode_for_every_profile() {
    for (profile, files) in PROFILES {
        let mut command = helm();
        command
            .args(["lint", "--strict"])
            .arg(chart())
            .args(values_args(files));
        let output = run_ok(&mut command, &format!("helm lint --strict ({profile})"));
        assert!(output.contains("0 chart(s) failed"), "{profile}: {output}");
    }
}

#[test]
fn values_schema_rejects_bad_values() {
    for bad in [
        "workers.separate.autoscaling.lagCount=0",
        "workers.decode.autoscaling.runningPerPod=0",
        "config.models.inFlight=-1",
        "config.limits.maxInputBytes=0",
        "storage.endpoint=s3.example.com",
        "unknownTopLevelKey=1",
    ] {
        let output = helm()
            .args(["template", RELEASE])
            .arg(chart())
            .args(["--set", bad])
            .output()
            .expect("run helm template");
        assert!(
            !output.status.success(),
            "values.schema.json accepted --set {bad}"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("schema"), "--set {bad}: {stderr}");
    }
}

/// Writes each built-in manifest of `docs` to its own file; returns the files and the custom
/// kinds left out.
fn write_builtin_manifests(docs: &[Value], dir: &Path) -> (Vec<PathBuf>, BTreeSet<String>) {
    let mut files = Vec::new();
    let mut skipped = BTreeSet::new();
    for (index, doc) in docs.iter().enumerate() {
        if CUSTOM_KINDS.contains(&kind(doc)) {
            skipped.insert(kind(doc).to_owned());
            continue;
        }
        let path = dir.join(format!("{index:03}-{}-{}.json", kind(doc), name(doc)));
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(doc).expect("serialise manifest"),
        )
        .expect("write manifest");
        files.push(path);
    }
    (files, skipped)
}

/// `kubernetes-validate --strict` of `files` for `version`: (success, output).
fn validate(files: &[PathBuf], version: &str) -> (bool, String) {
    let output = kubernetes_validate()
        .args(["--strict", "--kubernetes-version", version])
        .args(files)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn every_rendered_manifest_is_valid_kubernetes() {
    for (profile, files) in PROFILES {
        let docs = render(files, &[]);
        assert!(!docs.is_empty(), "{profile}: nothing rendered");
        let dir = tempfile::tempdir().expect("temp dir");
        let (manifests, skipped) = write_builtin_manifests(&docs, dir.path());
        for version in KUBERNETES_VERSIONS {
            let (ok, output) = validate(&manifests, version);
            assert!(ok, "{profile}, Kubernetes {version}:\n{output}");
            // Every built-in kind has a schema: an unknown one would pass with a warning only.
            assert!(
                !output.contains("Couldn't find schema"),
                "{profile}, Kubernetes {version}: {output}"
            );
            assert_eq!(
                output.matches(" passed for resource ").count(),
                manifests.len(),
                "{profile}, Kubernetes {version}: one verdict per manifest expected:\n{output}"
            );
        }
        if profile != "minimal" {
            assert!(
                skipped.contains("ScaledObject"),
                "{profile}: custom kinds skipped: {skipped:?}"
            );
        }
    }
}

#[test]
fn validator_rejects_an_unknown_field() {
    // The validation above can fail: strict mode rejects a field Kubernetes does not know.
    let mut docs = render(&[], &[]);
    let separate = docs
        .iter_mut()
        .find(|doc| kind(doc) == "Deployment" && name(doc) == resource_name("separate"))
        .expect("separate Deployment");
    separate["spec"]["template"]["spec"]["gpuCount"] = Value::from(1);
    let dir = tempfile::tempdir().expect("temp dir");
    let (manifests, _) = write_builtin_manifests(&docs, dir.path());
    let (ok, output) = validate(&manifests, KUBERNETES_VERSIONS[0]);
    assert!(!ok, "an unknown field passed validation:\n{output}");
    assert!(output.contains("gpuCount"), "{output}");
}

fn requests_gpu(container: &Value) -> bool {
    ["limits", "requests"].iter().any(|section| {
        container["resources"][section]
            .as_object()
            .is_some_and(|map| map.keys().any(|key| key.contains("gpu")))
    })
}

#[test]
fn only_separate_requests_a_gpu_and_only_when_enabled() {
    for (profile, files) in PROFILES {
        let docs = render(files, &[]);
        let gpu_profile = matches!(profile, "default" | "gpu" | "external");
        for (workload, pod) in pod_specs(&docs) {
            let is_separate = workload == format!("Deployment {}", resource_name("separate"));
            for container in containers(pod) {
                assert_eq!(
                    requests_gpu(container),
                    is_separate && gpu_profile,
                    "{profile}: {workload} GPU request"
                );
            }
            if !is_separate {
                assert!(
                    pod["tolerations"].is_null() && pod["nodeSelector"].is_null(),
                    "{profile}: {workload} is pinned to nodes: {pod}"
                );
            }
        }
        let separate = deployment(&docs, "separate");
        let pod = &separate["spec"]["template"]["spec"];
        let container = the_container(separate);
        let image = container["image"].as_str().unwrap_or_default();
        if gpu_profile {
            let expected_count = if profile == "gpu" { 2 } else { 1 };
            for section in ["limits", "requests"] {
                assert_eq!(
                    container["resources"][section]["nvidia.com/gpu"], expected_count,
                    "{profile}: separate {section}"
                );
            }
            assert!(image.contains("msaas-cuda:"), "{profile}: image {image}");
            assert_eq!(env_value(container, "MSAAS_MODELS__DEVICE"), Some("cuda"));
            assert!(
                !pod["nodeSelector"]
                    .as_object()
                    .is_none_or(|map| map.is_empty()),
                "{profile}: separate has no GPU nodeSelector"
            );
            let tolerations = pod["tolerations"].to_string();
            let affinity = pod["affinity"]["nodeAffinity"].to_string();
            if profile == "gpu" {
                assert_eq!(pod["nodeSelector"]["cloud.example/pool"], "gpu-a100");
                assert!(tolerations.contains("dedicated"), "{tolerations}");
                assert!(affinity.contains("cloud.example/pool"), "{affinity}");
            } else {
                assert!(tolerations.contains("nvidia.com/gpu"), "{tolerations}");
                assert!(affinity.contains("nvidia.com/gpu.present"), "{affinity}");
            }
        } else {
            assert!(!image.contains("cuda"), "{profile}: image {image}");
            assert_eq!(env_value(container, "MSAAS_MODELS__DEVICE"), None);
            assert!(pod["nodeSelector"].is_null() && pod["tolerations"].is_null());
            assert!(pod["affinity"].is_null(), "{profile}: {}", pod["affinity"]);
        }
    }
}

#[test]
fn one_keda_scaler_per_worker_stage_on_its_waiting_and_running_work() {
    let docs = render(&[], &[]);
    let scalers = of_kind(&docs, "ScaledObject");
    assert_eq!(scalers.len(), STAGES.len(), "one ScaledObject per stage");
    for stage in STAGES {
        let scaler = find(&docs, "ScaledObject", &resource_name(stage));
        let target = &scaler["spec"]["scaleTargetRef"];
        assert_eq!(target["kind"], "Deployment");
        assert_eq!(target["name"], resource_name(stage).as_str());
        deployment(&docs, stage);
        assert_eq!(
            scaler["spec"]["minReplicaCount"], 0,
            "{stage} scales to zero"
        );
        let triggers = scaler["spec"]["triggers"].as_array().expect("triggers");
        assert_eq!(
            triggers.len(),
            2,
            "{stage}: waiting and running: {triggers:?}"
        );
        for trigger in triggers {
            assert_eq!(trigger["type"], "redis-streams");
            let metadata = &trigger["metadata"];
            assert_eq!(metadata["stream"], format!("msaas:stage:{stage}").as_str());
            assert_eq!(metadata["consumerGroup"], stage);
            // KEDA runs in its own namespace: the bundled Redis must be named in full.
            assert_eq!(
                metadata["address"],
                format!("{RELEASE}-msaas-redis.{NAMESPACE}.svc:6379").as_str()
            );
            assert!(trigger["authenticationRef"].is_null());
        }
        let waiting = &triggers[0]["metadata"];
        assert!(waiting["lagCount"].as_str().is_some(), "{stage}: lag-based");
        assert!(waiting["activationLagCount"].as_str().is_some());
        let running = &triggers[1]["metadata"];
        assert!(
            running["pendingEntriesCount"].as_str().is_some(),
            "{stage}: running work"
        );
        assert!(
            running["lagCount"].is_null(),
            "{stage}: one mode per trigger"
        );
    }
    // KEDA owns worker replicas: no HPA for them, no fixed replica count.
    for hpa in of_kind(&docs, "HorizontalPodAutoscaler") {
        assert_eq!(name(hpa), resource_name("ingest"), "unexpected HPA");
    }
    for stage in STAGES {
        assert!(deployment(&docs, stage)["spec"]["replicas"].is_null());
    }

    // With nothing waiting (lag 0) and N jobs running (N pending entries), the replicas KEDA
    // asks for — the largest of the triggers' ceil(metric / target) — are exactly the pods
    // that hold N jobs at the pod's concurrency (its `--concurrency`, the jobs it has in
    // flight): scale-down never takes the stage below its running jobs, nor to zero (the CPU
    // profile's 600 s cooldown would otherwise stop every job longer than that).
    for (profile, files) in [("default", &[][..]), ("cpu", &["values-cpu.yaml"][..])] {
        let docs = render(files, &[]);
        for stage in STAGES {
            let scaler = find(&docs, "ScaledObject", &resource_name(stage));
            let threshold = |trigger: usize, key: &str| -> u64 {
                scaler["spec"]["triggers"][trigger]["metadata"][key]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{profile} {stage}: {key}"))
            };
            let (lag_target, running_target) = (
                threshold(0, "lagCount"),
                threshold(1, "pendingEntriesCount"),
            );
            let args = args_of(the_container(deployment(&docs, stage)));
            let per_pod: u64 = match args.as_slice() {
                ["worker", s, "--concurrency", n] if *s == stage => n.parse().expect("a count"),
                other => panic!("{profile} {stage}: args {other:?}"),
            };
            assert_eq!(
                running_target, per_pod,
                "{profile} {stage}: KEDA and the pod agree"
            );
            // The GPU pod overlaps transfers with the model run; the others run one job each.
            let expected = if stage == "separate" && profile == "default" {
                2
            } else {
                1
            };
            assert_eq!(
                per_pod, expected,
                "{profile} {stage}: jobs in flight per pod"
            );
            let max = scaler["spec"]["maxReplicaCount"].as_u64().expect("max");
            for running in 1..=max * per_pod {
                let lag = 0u64;
                let desired = lag
                    .div_ceil(lag_target)
                    .max(running.div_ceil(running_target));
                assert_eq!(
                    desired,
                    running.div_ceil(per_pod),
                    "{profile} {stage}: {running} running jobs"
                );
            }
        }
    }

    // External Redis: its host, TLS, and the password through a TriggerAuthentication.
    let docs = render(&["ci/values-external.yaml"], &[]);
    let auth = of_kind(&docs, "TriggerAuthentication");
    assert_eq!(auth.len(), 1);
    let secret_ref = &auth[0]["spec"]["secretTargetRef"][0];
    assert_eq!(secret_ref["name"], "msaas-redis");
    assert_eq!(secret_ref["key"], "password");
    for stage in STAGES {
        let scaler = find(&docs, "ScaledObject", &resource_name(stage));
        for trigger in scaler["spec"]["triggers"].as_array().expect("triggers") {
            assert_eq!(
                trigger["metadata"]["address"],
                "redis.data.svc.cluster.local:6380"
            );
            assert_eq!(trigger["metadata"]["databaseIndex"], "2");
            assert_eq!(trigger["metadata"]["enableTLS"], "true");
            assert_eq!(trigger["authenticationRef"]["name"], name(auth[0]));
        }
    }
}

#[test]
fn without_keda_each_worker_gets_a_cpu_hpa_of_at_least_one_replica() {
    let docs = render(&["ci/values-minimal.yaml"], &[]);
    assert!(of_kind(&docs, "ScaledObject").is_empty());
    assert!(of_kind(&docs, "TriggerAuthentication").is_empty());
    for stage in STAGES {
        let hpa = find(&docs, "HorizontalPodAutoscaler", &resource_name(stage));
        assert_eq!(
            hpa["spec"]["scaleTargetRef"]["name"],
            resource_name(stage).as_str()
        );
        assert!(hpa["spec"]["minReplicas"].as_u64().is_some_and(|n| n >= 1));
        assert_eq!(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu");
    }
    // Ingest autoscaling off in this profile: a fixed replica count instead.
    assert_eq!(deployment(&docs, "ingest")["spec"]["replicas"], 1);
}

/// Env variables whose values are credentials.
const SECRET_ENV: [&str; 7] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "MSAAS_CALLBACKS__SECRET",
    "REDIS_PASSWORD",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "SECRET_KEY",
];

#[test]
fn no_secret_values_are_rendered_unless_given() {
    for (profile, files) in PROFILES {
        let docs = render(files, &[]);
        assert!(
            of_kind(&docs, "Secret").is_empty(),
            "{profile}: the chart rendered a Secret nobody asked for"
        );
        for (workload, pod) in pod_specs(&docs) {
            for container in containers(pod) {
                for entry in env_entries(container) {
                    let var = entry["name"].as_str().unwrap_or_default();
                    if SECRET_ENV.contains(&var) || var == "ACCESS_KEY" {
                        assert!(
                            entry["value"].is_null()
                                && entry["valueFrom"]["secretKeyRef"]["name"].is_string(),
                            "{profile}: {workload} sets {var} without a Secret: {entry}"
                        );
                    }
                }
            }
        }
    }

    // Given on the command line (throw-away installs), they land in Secrets only, base64.
    let access_key = "AKIAEXAMPLEACCESS";
    let secret_key = "example-secret-value-0123";
    let api_keys = "acme:example-api-key";
    let set = [
        format!("storage.credentials.accessKeyId={access_key}"),
        format!("storage.credentials.secretAccessKey={secret_key}"),
        format!("auth.keys={api_keys}"),
        "callbacks.secret=example-webhook-key".to_owned(),
    ];
    let set: Vec<&str> = set.iter().map(String::as_str).collect();
    let text = render_text(&[], &set);
    for literal in [access_key, secret_key, api_keys, "example-webhook-key"] {
        assert!(!text.contains(literal), "{literal} rendered in clear text");
    }
    let docs = parse_manifests(&text);
    let secrets = of_kind(&docs, "Secret");
    assert_eq!(secrets.len(), 3, "S3, API keys, callbacks");
    let s3 = find(&docs, "Secret", &format!("{RELEASE}-msaas-s3-credentials"));
    assert_eq!(s3["data"]["AWS_ACCESS_KEY_ID"], "QUtJQUVYQU1QTEVBQ0NFU1M=");
    let ingest = the_container(deployment(&docs, "ingest"));
    let from_secret = |var: &str| {
        env_entries(ingest)
            .into_iter()
            .find(|entry| entry["name"] == var)
            .map(|entry| entry["valueFrom"]["secretKeyRef"]["name"].clone())
    };
    assert_eq!(
        from_secret("AWS_SECRET_ACCESS_KEY"),
        Some(Value::from(name(s3)))
    );
    assert_eq!(
        from_secret("MSAAS_CALLBACKS__SECRET"),
        Some(Value::from(format!("{RELEASE}-msaas-callbacks")))
    );
    let volumes = deployment(&docs, "ingest")["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(
        volumes.contains(&format!("{RELEASE}-msaas-api-keys")),
        "{volumes}"
    );
}

/// The env a role's container gets, as the process would see it: values as rendered,
/// Secret references as a placeholder, `$(VAR)` references expanded the way the kubelet does.
fn process_env(container: &Value) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for entry in env_entries(container) {
        let var = entry["name"].as_str().unwrap_or_default().to_owned();
        let mut value = match entry["value"].as_str() {
            Some(value) => value.to_owned(),
            None => "from-a-secret".to_owned(),
        };
        for (earlier, earlier_value) in &env {
            value = value.replace(&format!("$({earlier})"), earlier_value);
        }
        env.push((var, value));
    }
    env
}

#[test]
fn rendered_env_is_a_valid_msaas_config_for_each_role() {
    use pipeline::config::{QueueKind, StorageKind};
    for (profile, files) in PROFILES {
        let docs = render(files, &[]);
        for role in ROLES {
            let container = the_container(deployment(&docs, role));
            let env = process_env(container);
            let config = pipeline::Config::load_from(None, env.clone())
                .unwrap_or_else(|err| panic!("{profile} {role}: {err}\nenv: {env:?}"));
            config
                .validate()
                .unwrap_or_else(|err| panic!("{profile} {role}: {err}\nenv: {env:?}"));
            assert_eq!(config.queue.kind, QueueKind::Redis, "{profile} {role}");
            assert_eq!(config.storage.kind, StorageKind::S3, "{profile} {role}");
            let args: Vec<&str> = container["args"]
                .as_array()
                .map(|args| args.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let ports = container["ports"].as_array().expect("ports");
            let port = ports[0]["containerPort"].as_u64().expect("containerPort");
            if role == "ingest" {
                assert_eq!(args, ["ingest"]);
                assert_eq!(config.server.listen, format!("0.0.0.0:{port}"));
                assert!(config.auth.keys_file.is_some(), "{profile}: no keys file");
                // A deployed API caps each tenant and bounds slow clients (values.yaml).
                assert_eq!(config.tenants.max_active_jobs, 100, "{profile}");
                assert_eq!(config.tenants.uploads_per_minute, 120, "{profile}");
                assert_eq!(config.server.header_timeout_secs, 30, "{profile}");
                assert_eq!(config.server.body_idle_timeout_secs, 60, "{profile}");
                assert_eq!(config.server.max_connections, 1024, "{profile}");
            } else {
                assert_eq!(args[..2], ["worker", role]);
                assert_eq!(args[2], "--concurrency", "{profile} {role}: {args:?}");
                assert_eq!(config.observe.metrics_listen, format!("0.0.0.0:{port}"));
                // Outages are waited out in place (issue 17), the same budget in every profile.
                assert_eq!(config.worker.outage_budget_secs, 300, "{profile}");
            }
            match profile {
                "external" => {
                    let url = config.queue.url.clone().unwrap_or_default();
                    assert_eq!(
                        url,
                        "rediss://:from-a-secret@redis.data.svc.cluster.local:6380/2"
                    );
                    assert_eq!(
                        config.events.nats_url.as_deref(),
                        Some("nats://nats.messaging.svc.cluster.local:4222")
                    );
                    assert_eq!(config.limits.max_input_bytes, 536_870_912);
                    assert_eq!(config.callbacks.max_attempts, 8);
                    assert_eq!(config.jobs.sweep_after_secs, 7200);
                }
                "minimal" => assert_eq!(config.events.nats_url, None, "{profile}"),
                _ => {
                    assert_eq!(
                        config.queue.url.as_deref(),
                        Some("redis://stems-msaas-redis:6379/0")
                    );
                    assert_eq!(
                        config.storage.s3.endpoint.as_deref(),
                        Some("http://stems-msaas-minio:9000")
                    );
                }
            }
        }
    }
}

#[test]
fn pods_are_hardened_probed_and_drained_gracefully() {
    for (profile, files) in PROFILES {
        let docs = render(files, &[]);
        let visibility_timeout = {
            let env = process_env(the_container(deployment(&docs, "separate")));
            let config = pipeline::Config::load_from(None, env).expect("config");
            config.worker.visibility_timeout_secs
        };
        for role in ROLES {
            let deployment = deployment(&docs, role);
            let pod = &deployment["spec"]["template"]["spec"];
            let container = the_container(deployment);
            assert_eq!(
                pod["securityContext"]["runAsNonRoot"], true,
                "{profile} {role}"
            );
            let security = &container["securityContext"];
            assert_eq!(security["readOnlyRootFilesystem"], true, "{profile} {role}");
            assert_eq!(security["allowPrivilegeEscalation"], false);
            assert_eq!(security["capabilities"]["drop"][0], "ALL");
            let mounts = container["volumeMounts"].to_string();
            assert!(mounts.contains("\"/tmp\""), "{profile} {role}: {mounts}");
            let port_name = if role == "ingest" { "http" } else { "metrics" };
            assert_eq!(container["ports"][0]["name"], port_name);
            for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
                let get = &container[probe]["httpGet"];
                assert_eq!(get["path"], path, "{profile} {role} {probe}");
                assert_eq!(get["port"], port_name, "{profile} {role} {probe}");
            }
            let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
            if role == "separate" {
                // Longer than the longest step (a long track through the model).
                assert!(grace >= 900, "{profile}: separate grace {grace}s");
                assert!(
                    visibility_timeout >= 900,
                    "{profile}: a slow separation would be reclaimed mid-way"
                );
            } else if role != "ingest" {
                assert!(grace >= 120, "{profile}: {role} grace {grace}s");
            }
            if profile != "minimal" || role != "ingest" {
                find(&docs, "PodDisruptionBudget", &resource_name(role));
            }
        }
    }
}

#[test]
fn network_policies_expose_only_ingest() {
    let docs = render(&[], &[]);
    let policies = of_kind(&docs, "NetworkPolicy");
    let ingest = find(&docs, "NetworkPolicy", &resource_name("ingest"));
    let ingress = ingest["spec"]["ingress"].as_array().expect("ingest rules");
    assert_eq!(ingress.len(), 1);
    assert!(
        ingress[0]["from"].is_null(),
        "ingest open to all callers by default"
    );
    assert_eq!(ingress[0]["ports"][0]["port"], "http");
    let workers = find(&docs, "NetworkPolicy", &resource_name("workers"));
    let selector = workers["spec"]["podSelector"].to_string();
    for stage in STAGES {
        assert!(selector.contains(stage), "{selector}");
    }
    assert!(!selector.contains("ingest"));
    let rules = workers["spec"]["ingress"].as_array().expect("worker rules");
    for rule in rules {
        assert_eq!(rule["ports"][0]["port"], "metrics", "workers: {rule}");
        assert!(rule["from"][0]["namespaceSelector"].is_object(), "{rule}");
    }
    let egress = workers["spec"]["egress"].to_string();
    for port in ["53", "6379", "4222", "9000"] {
        assert!(
            egress.contains(&format!("\"port\":{port}")),
            "egress {port}: {egress}"
        );
    }
    // Every bundled dependency only takes msaas pods (and KEDA for Redis).
    for dependency in ["redis", "nats", "minio"] {
        let policy = find(&docs, "NetworkPolicy", &resource_name(dependency));
        for rule in policy["spec"]["ingress"].as_array().expect("rules") {
            assert!(rule["from"].is_array(), "{dependency} open: {rule}");
        }
    }
    assert_eq!(policies.len(), 5);
    let external = render(&["ci/values-external.yaml"], &[]);
    assert_eq!(of_kind(&external, "NetworkPolicy").len(), 2);
    let egress =
        find(&external, "NetworkPolicy", &resource_name("workers"))["spec"]["egress"].to_string();
    assert!(egress.contains("\"port\":6380"), "{egress}");
}

#[test]
fn ingress_body_limit_is_the_upload_limit() {
    for (profile, expected) in [("gpu", 1_073_741_824u64), ("external", 536_870_912)] {
        let files = PROFILES
            .iter()
            .find(|(name, _)| *name == profile)
            .map(|(_, files)| *files)
            .expect("profile");
        let docs = render(files, &[]);
        let ingresses = of_kind(&docs, "Ingress");
        assert_eq!(ingresses.len(), 1, "{profile}");
        let annotations = &ingresses[0]["metadata"]["annotations"];
        assert_eq!(
            annotations["nginx.ingress.kubernetes.io/proxy-body-size"],
            expected.to_string().as_str(),
            "{profile}"
        );
        let ingest = the_container(deployment(&docs, "ingest"));
        assert_eq!(
            env_value(ingest, "MSAAS_LIMITS__MAX_INPUT_BYTES"),
            Some(expected.to_string().as_str())
        );
        let backend = &ingresses[0]["spec"]["rules"][0]["http"]["paths"][0]["backend"];
        assert_eq!(backend["service"]["name"], resource_name("ingest").as_str());
    }
    assert!(of_kind(&render(&[], &[]), "Ingress").is_empty());
}

#[test]
fn service_monitor_scrapes_every_role_when_enabled() {
    assert!(of_kind(&render(&[], &[]), "ServiceMonitor").is_empty());
    let docs = render(&["ci/values-gpu.yaml"], &[]);
    let monitors = of_kind(&docs, "ServiceMonitor");
    assert_eq!(monitors.len(), 1);
    let ports: Vec<&str> = monitors[0]["spec"]["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter_map(|endpoint| endpoint["port"].as_str())
        .collect();
    assert_eq!(ports, ["http", "metrics"]);
    assert_eq!(
        monitors[0]["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    for stage in STAGES {
        let service = find(
            &docs,
            "Service",
            &format!("{}-metrics", resource_name(stage)),
        );
        assert_eq!(service["spec"]["ports"][0]["name"], "metrics");
    }
}

fn json_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .map(|entry| entry.expect("read dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .map(|path| {
            let name = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read(&path).expect("read dashboard"))
        })
        .collect()
}

#[test]
fn chart_dashboards_are_copies_of_observe_dashboards() {
    let source = json_files(&repo().join("observe/dashboards"));
    let copies = json_files(&chart().join("dashboards"));
    let source_names: Vec<&String> = source.keys().collect();
    let copy_names: Vec<&String> = copies.keys().collect();
    assert_eq!(
        copy_names, source_names,
        "helm/msaas/dashboards differs from observe/dashboards: run helm/sync-dashboards"
    );
    for (file, bytes) in &source {
        assert!(
            copies[file] == *bytes,
            "helm/msaas/dashboards/{file} is stale: run helm/sync-dashboards"
        );
    }
    let docs = render(&[], &[]);
    let maps: Vec<&Value> = of_kind(&docs, "ConfigMap")
        .into_iter()
        .filter(|map| map["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    if source.is_empty() {
        assert!(maps.is_empty(), "a dashboards ConfigMap without dashboards");
        return;
    }
    assert_eq!(maps.len(), 1);
    let data = maps[0]["data"].as_object().expect("data");
    let keys: Vec<&String> = data.keys().collect();
    assert_eq!(keys, source_names);
    for (file, text) in data {
        let rendered: Value = serde_json::from_str(text.as_str().unwrap_or_default())
            .unwrap_or_else(|err| panic!("{file} in the ConfigMap is not JSON: {err}"));
        let original: Value = serde_json::from_slice(&source[file]).expect("dashboard JSON");
        assert_eq!(rendered, original, "{file}");
    }
}

/// `args` of a container as strings.
fn args_of(container: &Value) -> Vec<&str> {
    container["args"]
        .as_array()
        .map(|args| args.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn init_containers(pod: &Value) -> Vec<&Value> {
    list_of(pod, "initContainers")
}

/// The volume mounted at `/models` in `container`, with whether it is read-only.
fn models_mount(container: &Value) -> Option<bool> {
    container["volumeMounts"]
        .as_array()?
        .iter()
        .find(|mount| mount["mountPath"] == "/models")
        .map(|mount| mount["readOnly"].as_bool().unwrap_or(false))
}

/// The models provisioning Jobs (the chart has others, e.g. MinIO's bucket hook).
fn models_jobs(docs: &[Value]) -> Vec<&Value> {
    of_kind(docs, "Job")
        .into_iter()
        .filter(|job| job["metadata"]["labels"]["app.kubernetes.io/component"] == "models")
        .collect()
}

#[test]
fn models_are_provisioned_once_into_a_shared_volume_the_readers_mount_read_only() {
    // Off by default: nothing rendered, no pod mounts a models volume.
    let plain = render(&[], &[]);
    assert!(models_jobs(&plain).is_empty());
    assert!(of_kind(&plain, "PersistentVolumeClaim").is_empty());
    for (workload, pod) in pod_specs(&plain) {
        for container in containers(pod) {
            assert_eq!(models_mount(container), None, "{workload}");
        }
    }

    let docs = render(
        &[],
        &[
            "models.pull={htdemucs,htdemucs_6s}",
            "models.pullFrom=https://mirror.example.invalid/hf",
        ],
    );
    let claims = of_kind(&docs, "PersistentVolumeClaim");
    assert_eq!(claims.len(), 1, "one shared volume");
    let claim = claims[0];
    assert_eq!(claim["spec"]["accessModes"][0], "ReadWriteMany");
    assert_eq!(
        claim["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let jobs = models_jobs(&docs);
    assert_eq!(
        jobs.len(),
        1,
        "one provisioning Job per cluster, not one per pod"
    );
    let job = &jobs[0]["spec"]["template"]["spec"];
    let steps = init_containers(job);
    let pulls: Vec<Vec<&str>> = steps
        .iter()
        .map(|step| args_of(step))
        .filter(|args| args.starts_with(&["models", "pull"]))
        .collect();
    assert_eq!(pulls.len(), 2, "one pull per model: {pulls:?}");
    for (args, model) in pulls.iter().zip(["htdemucs", "htdemucs_6s"]) {
        assert_eq!(args[2], model);
        assert!(args.contains(&"--skip-installed"), "{args:?}");
        assert!(
            args.windows(2)
                .any(|w| w == ["--from", "https://mirror.example.invalid/hf"]),
            "{args:?}"
        );
    }
    for step in steps.iter().chain(containers(job).iter()) {
        assert_eq!(models_mount(step), Some(false), "the Job writes the volume");
        assert_eq!(env_value(step, "MSAAS_MODELS__DIR"), Some("/models"));
    }
    let done = containers(job)[0];
    let marker = args_of(done)
        .concat()
        .split_whitespace()
        .find(|word| word.starts_with("/models/.provisioned-"))
        .map(str::to_owned)
        .expect("the Job leaves a marker");
    let job_name = name(jobs[0]);
    assert!(
        job_name.ends_with(marker.trim_start_matches("/models/.provisioned-")),
        "the Job's name carries the same hash as its marker: {job_name} / {marker}"
    );

    // Readers mount it read-only and wait for the marker; the others do not mount it.
    for role in ROLES {
        let pod = &deployment(&docs, role)["spec"]["template"]["spec"];
        let reads = matches!(role, "ingest" | "separate");
        let container = the_container(deployment(&docs, role));
        assert_eq!(
            models_mount(container),
            reads.then_some(true),
            "{role}: read-only models volume only where models are read"
        );
        assert_eq!(
            env_value(container, "MSAAS_MODELS__DIR"),
            reads.then_some("/models"),
            "{role}"
        );
        let waits = init_containers(pod)
            .iter()
            .any(|init| args_of(init).concat().contains(&format!("[ -f {marker} ]")));
        assert_eq!(waits, reads, "{role}: waits for this Job's marker");
    }

    // A different list is a different Job (its pod spec is immutable) and marker.
    let other = render(&[], &["models.pull={htdemucs}"]);
    assert_ne!(name(models_jobs(&other)[0]), job_name);

    // An existing claim is used as it is; imports read a second claim read-only.
    let docs = render(
        &[],
        &[
            "models.volume.existingClaim=shared-models",
            "models.import.existingClaim=checkpoints",
            "models.import.models[0].name=htdemucs",
            "models.import.models[0].files={htdemucs/htdemucs.yaml}",
        ],
    );
    assert!(of_kind(&docs, "PersistentVolumeClaim").is_empty());
    let job = &models_jobs(&docs)[0]["spec"]["template"]["spec"];
    let import = init_containers(job)
        .into_iter()
        .find(|step| args_of(step).starts_with(&["models", "import"]))
        .expect("an import step");
    assert_eq!(
        args_of(import),
        [
            "models",
            "import",
            "--name",
            "htdemucs",
            "/import/htdemucs/htdemucs.yaml"
        ]
    );
    let volumes = job["volumes"].as_array().expect("volumes");
    let claim_of = |volume: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == volume)
            .map(|v| v["persistentVolumeClaim"]["claimName"].clone())
    };
    assert_eq!(claim_of("models"), Some(Value::from("shared-models")));
    assert_eq!(claim_of("import"), Some(Value::from("checkpoints")));
    let separate = &deployment(&docs, "separate")["spec"]["template"]["spec"];
    let volume = separate["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "models"))
        .expect("separate mounts the models volume");
    assert_eq!(
        volume["persistentVolumeClaim"]["claimName"],
        "shared-models"
    );
    assert_eq!(volume["persistentVolumeClaim"]["readOnly"], true);

    // Bad values are refused by the schema.
    for bad in ["models.pull={../etc}", "models.pullFrom=ftp://x"] {
        let output = helm()
            .args(["template", RELEASE])
            .arg(chart())
            .args(["--set", bad])
            .output()
            .expect("run helm template");
        assert!(!output.status.success(), "accepted --set {bad}");
    }
}

#[test]
fn a_gpu_memory_limit_reaches_the_gpu_pod_only_and_in_bytes() {
    let limit = "config.models.deviceMemoryLimit=17179869184";
    let docs = render(&["ci/values-gpu.yaml"], &[limit]);
    let separate = the_container(deployment(&docs, "separate"));
    let config = pipeline::Config::load_from(None, process_env(separate)).expect("config");
    assert_eq!(config.models.device_memory_limit, Some(16 << 30));
    // A CPU pod has no GPU memory to bound; unset, the GPU pod keeps ONNX Runtime's own.
    let docs = render(&["values-cpu.yaml"], &[limit]);
    let separate = the_container(deployment(&docs, "separate"));
    assert_eq!(
        env_value(separate, "MSAAS_MODELS__DEVICE_MEMORY_LIMIT"),
        None
    );
    let docs = render(&["ci/values-gpu.yaml"], &[]);
    let separate = the_container(deployment(&docs, "separate"));
    assert_eq!(
        env_value(separate, "MSAAS_MODELS__DEVICE_MEMORY_LIMIT"),
        None
    );
}

#[test]
fn jobs_in_flight_and_batch_size_reach_the_separate_pod_and_its_autoscaler() {
    let docs = render(
        &["values-cpu.yaml"],
        &["config.models.inFlight=3", "config.models.batchSize=8"],
    );
    let separate = the_container(deployment(&docs, "separate"));
    assert_eq!(
        args_of(separate),
        ["worker", "separate", "--concurrency", "3"]
    );
    let config = pipeline::Config::load_from(None, process_env(separate)).expect("config");
    assert_eq!(config.models.batch_size, Some(8));
    let scaler = find(&docs, "ScaledObject", &resource_name("separate"));
    assert_eq!(
        scaler["spec"]["triggers"][1]["metadata"]["pendingEntriesCount"],
        "3"
    );
    // Unset, the pod keeps msaas's own per-device batch default.
    let docs = render(&[], &[]);
    let separate = the_container(deployment(&docs, "separate"));
    assert_eq!(env_value(separate, "MSAAS_MODELS__BATCH_SIZE"), None);
    assert_eq!(
        args_of(separate),
        ["worker", "separate", "--concurrency", "2"]
    );
}
