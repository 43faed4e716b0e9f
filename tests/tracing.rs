//! OpenTelemetry traces end to end (docs/tracing.md): a real daemon and worker export over
//! OTLP/HTTP to a real receiver (tests/clients/otlp_receiver.py, decoding with the official
//! `opentelemetry-proto` messages), and the spans it received are checked: the tree, names
//! and attributes, the worker's forward time, `traceparent` propagation, sampling, tracing
//! off, and a collector that is down.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use mlx_serve_tests::fixtures::repo_root;
use mlx_serve_tests::raw;
use mlx_serve_tests::server::{python_command, Server, ServerOptions};
use serde_json::{json, Value};

const MINILM: &str = "all-MiniLM-L6-v2";

/// The receiver process and the file it writes spans to.
struct Receiver {
    child: Child,
    port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn start() -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("spans.jsonl");
        let mut child = python_command()
            .arg(repo_root().join("tests/clients/otlp_receiver.py"))
            .arg(&out)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the OTLP receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("receiver port: {line:?}"));
        Receiver { child, port, out, _dir: dir }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.port)
    }

    fn spans(&self) -> Vec<Value> {
        read_spans(&self.out)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_spans(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn tracing_config(endpoint: &str, enabled: bool, ratio: f64) -> String {
    format!("tracing:\n  enabled: {enabled}\n  endpoint: {endpoint}\n  sample_ratio: {ratio}\n")
}

fn embed(server: &Server, headers: &[&str], inputs: &[&str]) -> raw::Answer {
    let answer = raw::post_json(server.port, "/v1/embeddings", headers, &json!({"model": MINILM, "input": inputs}));
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn one<'a>(spans: &[&'a Value], name: &str) -> &'a Value {
    let found: Vec<_> = spans.iter().filter(|s| s["name"] == name).collect();
    assert_eq!(found.len(), 1, "one `{name}` span expected in {spans:#?}");
    found[0]
}

fn ns(span: &Value, key: &str) -> u64 {
    span[key].as_u64().unwrap()
}

/// The span tree of one request, with the trace id the client sent: the server span under
/// the client's span, tokenization, queue wait, the batch and the worker's forward pass
/// under it, with their attributes. The server is stopped right after the requests, so the
/// spans reach the receiver only through the flush at shutdown (the batch processor waits
/// 5 s between exports otherwise).
#[test]
fn a_request_is_one_trace_with_its_batch_and_forward_spans() {
    let receiver = Receiver::start();
    let server = Server::start(ServerOptions {
        models: vec![MINILM],
        config: Some("tracing:\n  enabled: true\n".into()),
        // The endpoint and the service name through the standard variables.
        env: vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), format!("http://127.0.0.1:{}", receiver.port)),
            ("OTEL_SERVICE_NAME".into(), "mlx-serve-under-test".into()),
        ],
        ..Default::default()
    });
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let traceparent = format!("traceparent: 00-{trace_id}-{client_span}-01");
    embed(&server, &[&traceparent], &["the first input", "a second, longer input of several words", "third"]);
    // Without a traceparent: a trace of its own.
    embed(&server, &[], &["alone"]);
    // A refused request is traced too, with its status.
    let missing = raw::post_json(
        server.port,
        "/v1/embeddings",
        &["traceparent: 00-11111111111111111111111111111111-2222222222222222-01"],
        &json!({"model": "no-such-model", "input": "x"}),
    );
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert_eq!(server.stop(), Some(0));

    let spans = receiver.spans();
    let ours: Vec<&Value> = spans.iter().filter(|s| s["trace_id"] == trace_id).collect();
    assert!(!ours.is_empty(), "no span with the trace id sent in traceparent: {spans:#?}");
    let request = one(&ours, "POST /v1/embeddings");
    assert_eq!(request["parent_span_id"], client_span, "the server span continues the client's span");
    assert_eq!(request["kind"], 2, "SPAN_KIND_SERVER");
    assert_eq!(request["service_name"], "mlx-serve-under-test");
    assert_eq!(attr(request, "http.route"), "/v1/embeddings");
    assert_eq!(attr(request, "http.request.method"), "POST");
    assert_eq!(attr(request, "http.response.status_code"), 200);
    assert_eq!(attr(request, "mlx.model"), MINILM);
    assert_eq!(attr(request, "mlx.inputs"), 3);
    let tokens = attr(request, "mlx.tokens").as_i64().unwrap();
    assert!(tokens > 3, "tokens of three inputs: {tokens}");
    assert!(
        request["attributes"].as_object().unwrap().keys().all(|k| !k.starts_with("code.") && !k.starts_with("thread.")),
        "no source paths or thread ids in the attributes: {request}"
    );

    let request_id = &request["span_id"];
    for name in ["tokenize", "queue.wait", "batch"] {
        let span = one(&ours, name);
        assert_eq!(&span["parent_span_id"], request_id, "`{name}` is a child of the request span");
        assert!(ns(span, "start_ns") >= ns(request, "start_ns") && ns(span, "end_ns") <= ns(request, "end_ns"));
    }
    let batch = one(&ours, "batch");
    assert_eq!(attr(batch, "mlx.model"), MINILM);
    assert_eq!(attr(batch, "mlx.inputs"), 3);
    assert_eq!(attr(batch, "mlx.tokens").as_i64(), Some(tokens), "the request's tokens all rode in this batch");
    assert!(attr(batch, "mlx.batch.size").as_i64().unwrap() >= 3);
    assert!(attr(batch, "mlx.batch.tokens").as_i64().unwrap() >= tokens);
    assert!(attr(batch, "mlx.batch.id").is_i64());
    let queue = one(&ours, "queue.wait");
    assert!(ns(queue, "end_ns") <= ns(batch, "start_ns"), "the queue wait ends when the batch is sent");

    let forward = one(&ours, "worker.forward");
    assert_eq!(forward["parent_span_id"], batch["span_id"], "the forward pass is a child of the batch span");
    assert!(ns(forward, "end_ns") > ns(forward, "start_ns"), "the forward pass took time: {forward}");
    assert!(
        ns(forward, "start_ns") >= ns(batch, "start_ns") && ns(forward, "end_ns") <= ns(batch, "end_ns"),
        "the forward pass lies inside its batch: {forward} {batch}"
    );
    let measured_us = attr(forward, "mlx.worker.forward_us").as_i64().unwrap();
    assert!(measured_us > 0);
    let span_us = (ns(forward, "end_ns") - ns(forward, "start_ns")) as i64 / 1000;
    assert!(
        (span_us - measured_us).abs() <= 1,
        "the span lasts what the worker measured: {span_us} vs {measured_us} µs"
    );

    let refused: Vec<&Value> = spans.iter().filter(|s| s["trace_id"] == "11111111111111111111111111111111").collect();
    let refused = one(&refused, "POST /v1/embeddings");
    assert_eq!(attr(refused, "http.response.status_code"), 404);

    // The second request started a trace of its own, with the same shape.
    let others: Vec<&Value> = spans
        .iter()
        .filter(|s| s["trace_id"] != trace_id && s["trace_id"] != "11111111111111111111111111111111")
        .collect();
    let other = one(&others, "POST /v1/embeddings");
    assert_eq!(other["parent_span_id"], "", "a root span");
    assert_eq!(attr(other, "mlx.inputs"), 1);
    let in_other: Vec<&Value> = others.iter().copied().filter(|s| s["trace_id"] == other["trace_id"]).collect();
    one(&in_other, "worker.forward");
}

/// Sampling ratio 0 and tracing off both send nothing, while the receiver is up and the
/// requests succeed.
#[test]
fn ratio_zero_and_tracing_off_send_nothing() {
    let receiver = Receiver::start();
    for config in [tracing_config(&receiver.endpoint(), true, 0.0), tracing_config(&receiver.endpoint(), false, 1.0)] {
        let server = Server::start(ServerOptions { models: vec![MINILM], config: Some(config), ..Default::default() });
        for _ in 0..3 {
            embed(&server, &[], &["nothing to see", "here"]);
        }
        assert_eq!(server.stop(), Some(0));
    }
    assert_eq!(receiver.spans(), Vec::<Value>::new(), "spans were exported");
    // The same receiver does get spans from a server that samples (so the two silences
    // above are not a receiver that hears nothing).
    let server = Server::start(ServerOptions {
        models: vec![MINILM],
        config: Some(tracing_config(&receiver.endpoint(), true, 1.0)),
        ..Default::default()
    });
    embed(&server, &[], &["now traced"]);
    assert_eq!(server.stop(), Some(0));
    assert!(receiver.spans().iter().any(|s| s["name"] == "worker.forward"));
}

/// A collector that is down: requests succeed at their usual speed, the failure is logged
/// once (not per export), and the server stops cleanly.
#[test]
fn a_collector_that_is_down_fails_no_request() {
    let server = Server::start(ServerOptions {
        models: vec![MINILM],
        // A closed loopback port refuses at once.
        config: Some(tracing_config("http://127.0.0.1:9/v1/traces", true, 1.0)),
        // Exports every 100 ms (the SDK's OTEL_BSP_SCHEDULE_DELAY), so many fail.
        env: vec![("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into())],
        ..Default::default()
    });
    embed(&server, &[], &["warm up"]);
    let start = Instant::now();
    for i in 0..20 {
        embed(&server, &[], &[&format!("request {i}")]);
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(20), "20 requests took {took:?}");
    let log = server.log_text();
    let failures = log.lines().filter(|l| l.contains("traces: export to")).count();
    assert_eq!(failures, 1, "the failed exports are logged once:\n{log}");
    assert_eq!(server.stop(), Some(0));
}
