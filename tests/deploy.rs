//! The deployment recipes in deploy/, checked without a cluster or an image registry
//! (docs/deploy.md; the adapter rule against Prometheus is tests/autoscaling.rs, replicas
//! behind HAProxy tests/load_balancer.rs):
//!
//! - Kubernetes: each kustomization rendered by Kustomize (`kubectl kustomize`, else
//!   `kustomize build`), validated by the PyPI package kubernetes-validate against the API
//!   schemas of Kubernetes 1.29 and 1.37 in strict mode (an unknown field is an error), then
//!   the relations between its numbers: probes on /ready and /health at the port the pod's
//!   effective config listens on (the real `mlx-serve config --json`, given the pod's
//!   config.yaml and environment), a grace period covering the preStop sleep, the longest an
//!   accepted request can run and the workers' stop, selectors that select, and an HPA metric
//!   that the adapter rule serves.
//! - The image recipe: every RUN of the Containerfile is a command the suite also runs, and
//!   the image's user, port, volume and command agree with the manifests.

use std::process::Command;
use std::time::Duration;

use mlx_serve_tests::cli::Home;
use mlx_serve_tests::fixtures::repo_root;
use mlx_serve_tests::manifests::{adapter_rule, config_map, documents, find, render};
use mlx_serve_tests::server::python;
use mlx_serve_tests::tools::missing_tool;
use serde_json::{json, Value};

/// Oldest and newest Kubernetes versions the manifests must validate against.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];

/// Runs the kubernetes-validate CLI (strict) on a manifest; returns (passed, output).
fn validate(yaml: &str, version: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("manifest.yaml");
    std::fs::write(&file, yaml).unwrap();
    let bin = python().parent().unwrap().join("kubernetes-validate");
    let out = Command::new(&bin)
        .args(["--strict", "--quiet", "-k", version])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/setup makes the test venv)", bin.display()));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The effective server config of the pod's main container: its config.yaml and its
/// environment given to the real binary's `config --json`. Key → value.
fn effective_config(docs: &[Value], container: &Value) -> impl Fn(&str) -> Value {
    let home = Home::new(&[]);
    let file = home.path().join("pod-config.yaml");
    let text = config_map(docs, "mlx-serve-config")["data"]["config.yaml"].as_str().expect("config.yaml data");
    std::fs::write(&file, text).unwrap();
    let mut env: Vec<(String, String)> = Vec::new();
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let name = from["configMapRef"]["name"].as_str().unwrap();
        let cm = docs.iter().find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name).expect("envFrom map");
        for (k, v) in cm["data"].as_object().unwrap() {
            env.push((k.clone(), v.as_str().unwrap().to_owned()));
        }
    }
    for e in container["env"].as_array().into_iter().flatten() {
        env.push((e["name"].as_str().unwrap().to_owned(), e["value"].as_str().unwrap_or("").to_owned()));
    }
    // The pod names its config file; here it is the copy just written.
    env.retain(|(k, _)| k != "MLX_SERVE_CONFIG");
    env.push(("MLX_SERVE_CONFIG".into(), file.display().to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let out = home.run_env(&["config", "--json"], &env, Duration::from_secs(30));
    assert!(out.ok(), "the pod's config.yaml and environment are refused by mlx-serve:\n{}", out.text());
    let values: Value = serde_json::from_str(&out.stdout).unwrap();
    move |key: &str| {
        values["values"].as_array().unwrap().iter().find(|v| v["key"] == key).unwrap_or_else(|| panic!("no {key}"))
            ["value"]
            .clone()
    }
}

fn int(v: &Value) -> i64 {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The first number after `--uid` in the Containerfile (the image's user).
fn image_uid(containerfile: &str) -> i64 {
    let rest = containerfile.split("--uid ").nth(1).expect("useradd --uid in the Containerfile");
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

/// Checks one rendered overlay; returns its documents.
fn check_overlay(dir: &str, yaml: &str, image_tag: &str) -> Vec<Value> {
    let docs = documents(yaml);
    let deploy = find(&docs, "Deployment");
    let spec = &deploy["spec"]["template"]["spec"];
    let c =
        spec["containers"].as_array().unwrap().iter().find(|c| c["name"] == "mlx-serve").expect("container mlx-serve");
    let config = effective_config(&docs, c);
    let ctx = format!("{dir}: {}", serde_json::to_string_pretty(deploy).unwrap());

    // The image, its command, and the user the image was built with.
    assert!(c["image"].as_str().unwrap().ends_with(&format!(":{image_tag}")), "{ctx}");
    assert_eq!(c["args"], json!(["start", "--foreground"]), "{ctx}");
    let containerfile = std::fs::read_to_string(repo_root().join("deploy/image/Containerfile")).unwrap();
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{ctx}");
    assert_eq!(int(&spec["securityContext"]["runAsUser"]), image_uid(&containerfile), "{ctx}");

    // Probes: /ready gates traffic and start-up, /health is liveness, all on the port the
    // server listens on, which Prometheus scrapes too.
    let port = int(&config("server.port"));
    assert_eq!(config("server.host"), "0.0.0.0", "a pod must listen on its own address");
    let http = c["ports"].as_array().unwrap().iter().find(|p| p["name"] == "http").expect("port http");
    assert_eq!(int(&http["containerPort"]), port, "{ctx}");
    for (probe, path) in [("readinessProbe", "/ready"), ("startupProbe", "/ready"), ("livenessProbe", "/health")] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}: {ctx}");
        assert_eq!(c[probe]["httpGet"]["port"], "http", "{probe}: {ctx}");
    }
    let annotations = &deploy["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true", "{ctx}");
    assert_eq!(int(&annotations["prometheus.io/port"]), port, "{ctx}");
    assert_eq!(annotations["prometheus.io/path"], "/metrics", "{ctx}");

    // Drain: preStop sleep, then SIGTERM; accepted requests may run up to
    // limits.request_timeout_seconds, then workers stop within server.shutdown_timeout_seconds.
    let sleep = &c["lifecycle"]["preStop"]["exec"]["command"];
    assert_eq!(sleep[0], "sleep", "{ctx}");
    let pre_stop = int(&sleep[1]);
    let needed =
        pre_stop + int(&config("limits.request_timeout_seconds")) + int(&config("server.shutdown_timeout_seconds"));
    let grace = int(&spec["terminationGracePeriodSeconds"]);
    assert!(
        grace >= needed,
        "{dir}: terminationGracePeriodSeconds {grace} < preStop + request timeout + shutdown timeout = {needed}"
    );

    // Models: pulled by the init container, preloaded, and nothing downloaded on demand.
    let preload = config("models.preload");
    assert!(preload.as_array().is_some_and(|p| !p.is_empty()), "{dir}: no preloaded model");
    assert_eq!(config("models.auto_download"), false, "{dir}");
    let init = &spec["initContainers"][0];
    assert!(init["command"].to_string().contains("mlx-serve pull"), "{ctx}");
    assert_eq!(init["envFrom"], c["envFrom"], "init container and server see the same models");

    // Memory sized (docs/deploy.md, Sizing), and selectors that select these pods.
    assert!(
        c["resources"]["requests"]["memory"].is_string() && c["resources"]["limits"]["memory"].is_string(),
        "{ctx}"
    );
    let selector = &deploy["spec"]["selector"]["matchLabels"];
    assert!(selector.as_object().is_some_and(|s| !s.is_empty()), "{ctx}");
    for (k, v) in selector.as_object().unwrap() {
        assert_eq!(&deploy["spec"]["template"]["metadata"]["labels"][k], v, "{ctx}");
    }
    assert_eq!(&find(&docs, "Service")["spec"]["selector"], selector, "Service selector");
    assert_eq!(&find(&docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], selector, "PDB selector");
    let hpa = find(&docs, "HorizontalPodAutoscaler");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], deploy["metadata"]["name"]);
    if image_tag == "cuda" {
        assert_eq!(int(&c["resources"]["limits"]["nvidia.com/gpu"]), 1, "{ctx}");
        assert_eq!(config("models.compute_dtype"), "float16", "{dir}");
    }
    docs
}

#[test]
fn kubernetes_manifests_render_validate_and_agree() {
    let overlays = [("deploy/kubernetes/overlays/cpu", "cpu"), ("deploy/kubernetes/overlays/cuda", "cuda")];
    let Some(adapter_yaml) = render("deploy/kubernetes/prometheus-adapter") else {
        return missing_tool("kustomize", "`kubectl kustomize` or `kustomize` renders deploy/kubernetes");
    };
    let mut rendered = vec![("deploy/kubernetes/prometheus-adapter", adapter_yaml.clone())];
    for (dir, tag) in overlays {
        let yaml = render(dir).unwrap();
        let docs = check_overlay(dir, &yaml, tag);
        let hpa = find(&docs, "HorizontalPodAutoscaler");
        let metric = &hpa["spec"]["metrics"][0]["pods"]["metric"]["name"];
        assert_eq!(metric, &adapter_rule(&adapter_yaml)["name"]["as"], "{dir}: the HPA's metric is the adapter rule's");
        rendered.push((dir, yaml));
    }
    for (dir, yaml) in &rendered {
        for version in KUBERNETES_VERSIONS {
            let (ok, out) = validate(yaml, version);
            assert!(ok, "{dir} does not validate against Kubernetes {version}:\n{out}");
        }
    }
    // The validator is strict: a misspelt field fails (so a pass above means something).
    let typo = rendered[1].1.replacen("readinessProbe:", "readinesProbe:", 1);
    let (ok, out) = validate(&typo, KUBERNETES_VERSIONS[0]);
    assert!(!ok && out.contains("readinesProbe"), "a misspelt field passed validation:\n{out}");
}

// ---------------------------------------------------------------------------------------
// The image recipe.

/// The instructions of a Containerfile as (KEYWORD, arguments): comments dropped,
/// continuation lines joined.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        current.push_str(t.trim_end_matches('\\'));
        current.push(' ');
        if !t.ends_with('\\') {
            let (kw, args) = current.trim().split_once(' ').unwrap_or((current.trim(), ""));
            out.push((kw.to_uppercase(), args.trim().to_owned()));
            current.clear();
        }
    }
    out
}

/// Where the suite runs each command a RUN step may hold (the image recipe is tested by
/// proxy: CI cannot afford to build the image, deploy/image/build.sh builds and checks it).
const TESTED_COMMANDS: [(&str, &str); 6] = [
    ("scripts/setup --build-only", "CI's `scripts/setup` (the same steps, plus test tools)"),
    ("make install NO_BUILD=1 PREFIX=", "tests/install.rs (then serves a real embedding from the moved prefix)"),
    ("apt-get update", "scripts/setup"),
    ("DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends", "scripts/setup"),
    ("rm -rf /var/lib/apt/lists/*", "(image size only)"),
    ("groupadd --system --gid", "(the image's user; its uid is checked against the manifests)"),
];

#[test]
fn image_recipe_runs_tested_commands_and_matches_the_manifests() {
    let path = repo_root().join("deploy/image/Containerfile");
    let text = std::fs::read_to_string(&path).unwrap();
    let steps = instructions(&text);
    let setup = std::fs::read_to_string(repo_root().join("scripts/setup")).unwrap();
    // Packages only the image installs: the toolchain setup expects (Rust, pip, make), and
    // curl for the HEALTHCHECK.
    let image_only = ["ca-certificates", "make", "python3", "python3-pip", "rustc-web", "cargo-web", "curl"];
    let mut runs = 0;
    for (kw, args) in &steps {
        if kw != "RUN" {
            continue;
        }
        runs += 1;
        let args: Vec<&str> = args.split_whitespace().skip_while(|w| w.starts_with("--mount=")).collect();
        for command in args.join(" ").split("&&").map(str::trim) {
            // Environment for the next command (a site CA only when the build was given one),
            // and the user (paired with groupadd below).
            if command.starts_with("export ")
                || command.starts_with("if [ -s /run/secrets/site-ca ]; then export ")
                || command.starts_with("useradd --system --uid")
            {
                continue;
            }
            let (prefix, _) = TESTED_COMMANDS.iter().find(|(p, _)| command.starts_with(p)).unwrap_or_else(|| {
                panic!("{}: `{command}` is run by no test; cover it, then list it here", path.display())
            });
            if prefix.contains("apt-get install") {
                for package in command[prefix.len()..].split_whitespace() {
                    assert!(
                        image_only.contains(&package) || setup.contains(package),
                        "{}: package {package} is neither in scripts/setup nor listed as image-only",
                        path.display()
                    );
                }
            }
        }
    }
    assert!(runs >= 4, "{}: expected the build and runtime RUN steps", path.display());
    assert!(steps.iter().filter(|(kw, _)| kw == "FROM").count() >= 2, "multi-stage");

    // The runtime stage agrees with what the manifests and tests assume.
    let last = |kw: &str| steps.iter().rev().find(|(k, _)| k == kw).map(|(_, a)| a.clone()).unwrap_or_default();
    assert_eq!(last("USER"), "mlx-serve");
    assert_eq!(image_uid(&text), 10001, "the uid deploy/kubernetes runs as");
    assert_eq!(last("ENTRYPOINT"), r#"["mlx-serve"]"#);
    assert_eq!(last("CMD"), r#"["start", "--foreground"]"#, "what tests/common/server.rs runs");
    assert_eq!(last("EXPOSE"), "8000");
    assert!(last("HEALTHCHECK").contains("/health"), "HEALTHCHECK: {}", last("HEALTHCHECK"));
    let env = last("ENV");
    assert!(env.contains("MLX_SERVE_HOME=/var/lib/mlx-serve") && env.contains("MLX_SERVE_HOST=0.0.0.0"), "ENV: {env}");
    assert_eq!(last("VOLUME"), "/var/lib/mlx-serve", "the home (model store) is the volume");
    let deployment = std::fs::read_to_string(repo_root().join("deploy/kubernetes/base/deployment.yaml")).unwrap();
    assert!(deployment.contains("mountPath: /var/lib/mlx-serve"), "the pod mounts its store where the image keeps it");
}
