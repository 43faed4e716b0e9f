//! The HorizontalPodAutoscaler's metric, end to end short of a cluster: the prometheus-adapter
//! rule in deploy/kubernetes/prometheus-adapter (rendered by Kustomize) queried on a real
//! Prometheus that scrapes a real mlx-serve with the labels Kubernetes' pod scrape job gives
//! it, while a real backlog builds in the server's queue (docs/deploy.md, "Autoscaling").

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlx_serve_tests::manifests::{adapter_rule, render};
use mlx_serve_tests::prometheus::{self, Prometheus};
use mlx_serve_tests::server::{Server, ServerOptions};
use mlx_serve_tests::tools::missing_tool;
use serde_json::{json, Value};

const MINILM: &str = "all-MiniLM-L6-v2";

/// Waits until Prometheus has scraped the target once (`up` is 1 for the pod), so the
/// backlog is not over before the first scrape.
fn wait_for_first_scrape(prom: &Prometheus, pod: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = prom.query(&format!("up{{pod=\"{pod}\"}}"));
        if answer["data"]["result"][0]["value"][1] == "1" {
            return;
        }
        assert!(Instant::now() < deadline, "Prometheus never scraped the server: {answer}\n{}", prom.log());
        std::thread::sleep(Duration::from_millis(200)); // polling for the first scrape
    }
}

/// The adapter's Go template for one pod: `<<.Series>>`, `<<.LabelMatchers>>` and
/// `<<.GroupBy>>` as prometheus-adapter fills them in (its docs/config.md, "Querying").
fn adapter_query(template: &str, series: &str, namespace: &str, pod: &str) -> String {
    template
        .replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", &format!("pod=~\"{pod}\",namespace=\"{namespace}\""))
        .replace("<<.GroupBy>>", "pod")
}

#[test]
fn autoscaling_metric_rises_with_a_backlog_on_a_real_prometheus() {
    let Some(adapter_yaml) = render("deploy/kubernetes/prometheus-adapter") else {
        return missing_tool("kustomize", "`kubectl kustomize` or `kustomize` renders deploy/kubernetes");
    };
    let Some(binary) = prometheus::binary() else {
        return missing_tool("prometheus", "Debian's or Homebrew's package prometheus, or PROMETHEUS_BIN");
    };
    let rule = adapter_rule(&adapter_yaml);
    let series = rule["name"]["matches"].as_str().unwrap().trim_matches(|c| c == '^' || c == '$').to_owned();
    let (namespace, pod) = ("mlx-serve-test", "mlx-serve-0");

    let server = Server::start(ServerOptions {
        models: vec![MINILM],
        args: vec!["--preload".into(), MINILM.into()],
        ..Default::default()
    });
    let (st, _) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": "warm up"}));
    assert_eq!(st, 200);
    // The labels the usual `kubernetes-pods` scrape job gives a pod.
    let prom = Prometheus::start(&binary, server.port, "kubernetes-pods", &[("namespace", namespace), ("pod", pod)]);
    wait_for_first_scrape(&prom, pod);

    // A backlog for as long as the check needs: requests of 512 passages one after another,
    // each queueing 512 inputs drained 32 per batch. A single request can end before
    // Prometheus's next scrape on a fast machine, so the sender repeats until told to stop.
    let passages: Vec<String> =
        (0..512).map(|i| format!("passage {i} {}", "about rivers and mountains ".repeat(8))).collect();
    let url = server.url("/v1/embeddings");
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<usize, String> {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) {
                let reply: Value = ureq::post(&url)
                    .timeout(Duration::from_secs(120))
                    .send_json(json!({"model": MINILM, "input": passages}))
                    .map_err(|e| e.to_string())?
                    .into_json()
                    .map_err(|e| e.to_string())?;
                let rows = reply["data"].as_array().map(Vec::len);
                if rows != Some(512) {
                    return Err(format!("{rows:?} rows for 512 inputs"));
                }
                sent += 1;
            }
            Ok(sent)
        })
    };

    // The rule's series query finds the pod's series, and its metrics query, filled in as
    // the adapter does for this pod, answers one value for it, above 0 while the queue holds
    // inputs (Prometheus scrapes every second).
    let query = adapter_query(rule["metricsQuery"].as_str().unwrap(), &series, namespace, pod);
    let deadline = Instant::now() + Duration::from_secs(90);
    let (found, value) = loop {
        let found = prom.api("series", ("match[]", rule["seriesQuery"].as_str().unwrap()));
        let answer = prom.api("query", ("query", &query));
        let result = answer["data"]["result"].as_array().cloned().unwrap_or_default();
        let value = result.first().and_then(|r| r["value"][1].as_str()?.parse::<f64>().ok());
        if let Some(v) = value.filter(|v| *v > 0.0) {
            assert_eq!(result.len(), 1, "one value per pod: {answer}");
            assert_eq!(result[0]["metric"], json!({"pod": pod}), "{answer}");
            break (found, v);
        }
        assert!(
            Instant::now() < deadline && !sender.is_finished(),
            "the adapter query never rose above 0 during the backlog.\nquery: {query}\nanswer: {answer}\nseries: {found}\nlog:\n{}",
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(250)); // polling Prometheus between scrapes
    };
    stop.store(true, Ordering::Relaxed);
    let labels = &found["data"][0];
    assert_eq!((labels["namespace"].as_str(), labels["pod"].as_str()), (Some(namespace), Some(pod)), "{found}");
    eprintln!("adapter metric {} for {pod} during the backlog: {value:.1}", rule["name"]["as"]);
    let requests = sender.join().unwrap().expect("the backlog requests");
    eprintln!("{requests} requests of 512 passages answered in full");
    drop(prom);
    assert_eq!(server.stop(), Some(0));
}
