//! Helpers for the tests of deploy/ (tests/deploy.rs, tests/autoscaling.rs,
//! tests/load_balancer.rs): finding the tools setup installs, rendering the Kustomize
//! manifests, and reading YAML through PyYAML from the test venv.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::fixtures::repo_root;
use crate::server::python_command;

/// `name` in a folder of `PATH`.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `kubectl kustomize DIR` (Kustomize built into kubectl) or `kustomize build DIR`.
pub fn render(dir: &str) -> Option<String> {
    let path = repo_root().join(dir);
    let mut cmd = if on_path("kubectl").is_some() {
        let mut c = Command::new("kubectl");
        c.arg("kustomize").arg(&path);
        c
    } else if on_path("kustomize").is_some() {
        let mut c = Command::new("kustomize");
        c.arg("build").arg(&path);
        c
    } else {
        return None;
    };
    let out = cmd.output().expect("run kustomize");
    assert!(out.status.success(), "kustomize {dir}: {}", String::from_utf8_lossy(&out.stderr));
    Some(String::from_utf8(out.stdout).unwrap())
}

/// The documents of a YAML stream, through PyYAML (tests/clients/yaml_docs.py).
pub fn documents(yaml: &str) -> Vec<Value> {
    use std::io::Write;
    let mut child = python_command()
        .arg(repo_root().join("tests/clients/yaml_docs.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run yaml_docs.py");
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "yaml_docs.py failed");
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

pub fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind} rendered"))
}

/// A rendered ConfigMap by the name it had before Kustomize appended its hash.
pub fn config_map<'a>(docs: &'a [Value], name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"].as_str().is_some_and(|n| n.starts_with(name)))
        .unwrap_or_else(|| panic!("no ConfigMap {name}"))
}

/// The adapter rule in deploy/kubernetes/prometheus-adapter (rendered and parsed).
pub fn adapter_rule(yaml: &str) -> Value {
    let docs = documents(yaml);
    let text = config_map(&docs, "adapter-config")["data"]["config.yaml"].as_str().unwrap().to_owned();
    documents(&text)[0]["rules"][0].clone()
}
