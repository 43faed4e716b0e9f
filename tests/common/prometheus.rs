//! A real Prometheus server scraping one mlx-serve, for the metrics and autoscaling tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::manifests::on_path;

/// The `prometheus` binary: `PROMETHEUS_BIN`, else on PATH, else /usr/bin (Debian's package).
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PROMETHEUS_BIN") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    on_path("prometheus").or_else(|| Some(PathBuf::from("/usr/bin/prometheus")).filter(|p| p.is_file()))
}

/// Prometheus scraping `127.0.0.1:<target>` every second as job `job`, the series labelled
/// with `labels`. Killed when dropped, however the test ends.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts it on port 0 and reads the port it bound from its log.
    pub fn start(binary: &Path, target: u16, job: &str, labels: &[(&str, &str)]) -> Prometheus {
        let dir = tempfile::Builder::new().prefix("mlx-serve-prometheus").tempdir().unwrap();
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        // scrape_timeout must not exceed scrape_interval (Prometheus refuses the config).
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n        \
             labels: {{{}}}\n",
            labels.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg("--web.listen-address=127.0.0.1:0")
            .arg("--log.level=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut prom = Prometheus { child, port: 0, dir };
        // Port 0: Prometheus logs the address it bound (`msg="Listening on" address=H:P`, at
        // level info, in 2.x and 3.x alike).
        let deadline = Instant::now() + Duration::from_secs(60);
        prom.port = loop {
            let port = prom.log().lines().filter(|l| l.contains("Listening on")).find_map(|l| {
                let addr = l.split("address=").nth(1)?.split_whitespace().next()?.trim_matches('"');
                addr.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
            });
            if let Some(p) = port.filter(|&p| p != 0) {
                break p;
            }
            if let Ok(Some(status)) = prom.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", prom.log());
            }
            assert!(Instant::now() < deadline, "prometheus did not say where it listens:\n{}", prom.log());
            std::thread::sleep(Duration::from_millis(50)); // polling interval of a condition wait (bounded by its deadline)
        };
        prom
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>?<param>`: the JSON answer (status "success" or "error"), or null
    /// when Prometheus does not answer (not listening yet).
    pub fn api(&self, path: &str, param: (&str, &str)) -> Value {
        let r = ureq::get(&format!("http://127.0.0.1:{}/api/v1/{path}", self.port))
            .query(param.0, param.1)
            .timeout(Duration::from_secs(10))
            .call();
        match r {
            Ok(resp) => resp.into_json().unwrap_or(Value::Null),
            Err(ureq::Error::Status(_, resp)) => resp.into_json().unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    /// `GET /api/v1/query` of `promql`.
    pub fn query(&self, promql: &str) -> Value {
        self.api("query", ("query", promql))
    }
}
