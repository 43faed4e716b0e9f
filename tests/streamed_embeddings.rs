//! An embeddings request with more inputs than `limits.max_inputs_per_request` is
//! computed piece by piece and its answer streamed (docs/long-documents.md, "Limits"),
//! through the real daemon and a real MiniLM worker: the unmodified `openai` client gets
//! every vector right (tests/clients/streamed_client.py); a bad input late in the request
//! is a 400 before anything is computed; the supervisor's memory does not grow with the
//! answer; a client gone mid-answer stops the work; cached vectors answer per piece; the
//! streamed bytes are the unstreamed answer's. The same for TEI's `/embed` and Ollama's
//! `/api/embed` (huggingface_hub and the `ollama` package, tests/clients/streamed_tei_ollama.py).

use std::time::{Duration, Instant};

use mlx_serve_tests::raw;
use mlx_serve_tests::server::{python_command, run_client, Server, ServerOptions};
use serde_json::{json, Value};

const MINILM: &str = "all-MiniLM-L6-v2";
/// MiniLM's vectors.
const DIM: usize = 384;

fn minilm(config: &str) -> Server {
    Server::start(ServerOptions { models: vec![MINILM], config: Some(config.to_owned()), ..Default::default() })
}

/// Sequences the worker has computed (`mlx_serve_batch_size` counts each batch's).
fn computed(server: &Server) -> f64 {
    server.metric("mlx_serve_batch_size_sum", &[("endpoint", "embed")])
}

fn texts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("short input number {i}")).collect()
}

#[test]
fn the_openai_client_gets_every_vector_of_a_streamed_request() {
    let server = minilm("limits:\n  max_inputs_per_request: 64\nembedding_cache:\n  memory_mb: 0\n");
    let count = std::env::var("STREAMED_INPUTS").unwrap_or_else(|_| "5000".to_owned());
    let out = run_client("streamed_client.py", &server, &[&count]);
    println!("{out}");
}

#[test]
fn tei_and_ollama_clients_get_every_vector_of_a_streamed_request() {
    let server = minilm("limits:\n  max_inputs_per_request: 64\nembedding_cache:\n  memory_mb: 0\n");
    let out = run_client("streamed_tei_ollama.py", &server, &["700"]);
    println!("{out}");
}

#[test]
fn tei_and_ollama_streamed_bytes_are_their_unstreamed_answers() {
    let server = minilm("limits:\n  max_inputs_per_request: 64\n");
    let all = texts(150);
    // Unstreamed, in requests of at most 64 (these fill the embedding cache).
    let (mut rows, mut ollama_rows, mut tokens) = (Vec::new(), Vec::new(), 0);
    for part in all.chunks(64) {
        let (status, body) = server.post("/embed", &json!({"inputs": part}));
        assert_eq!(status, 200, "{body}");
        rows.extend(body.as_array().unwrap().iter().cloned());
        let (status, body) = server.post("/api/embed", &json!({"model": MINILM, "input": part}));
        assert_eq!(status, 200, "{body}");
        tokens += body["prompt_eval_count"].as_u64().unwrap();
        ollama_rows.extend(body["embeddings"].as_array().unwrap().iter().cloned());
    }
    let (status, head, body) = raw::post_to_end(server.port, "/embed", &json!({"inputs": all}));
    assert_eq!(status, 200, "{head}");
    assert!(!head.to_ascii_lowercase().contains("content-length"), "streamed: {head}");
    let text = String::from_utf8(body.expect("a complete chunked body")).unwrap();
    assert!(text.starts_with("[[") && text.ends_with("]]"), "TEI's bare rows: {:.40}", text);
    let got: Value = serde_json::from_str(&text).unwrap();
    assert!(got == Value::Array(rows.clone()), "TEI: the streamed rows differ from the unstreamed ones");
    let (status, head, body) = raw::post_to_end(server.port, "/api/embed", &json!({"model": MINILM, "input": all}));
    assert_eq!(status, 200, "{head}");
    assert!(!head.to_ascii_lowercase().contains("content-length"), "streamed: {head}");
    let text = String::from_utf8(body.expect("a complete chunked body")).unwrap();
    // The unstreamed answer's bytes but for the time taken.
    let got: Value = serde_json::from_str(&text).unwrap();
    let nanos = got["total_duration"].as_u64().expect("total_duration");
    assert!(nanos > 0);
    let want = json!({"model": MINILM, "embeddings": ollama_rows, "total_duration": nanos, "load_duration": 0,
        "prompt_eval_count": tokens});
    let head = format!(r#"{{"model":"{MINILM}","embeddings":[["#);
    let end = format!(r#"]],"total_duration":{nanos},"load_duration":0,"prompt_eval_count":{tokens}}}"#);
    assert!(text.starts_with(&head) && text.ends_with(&end), "{:.60} … {}", text, &text[text.len() - 80..]);
    assert!(got == want, "Ollama: the streamed answer differs from the unstreamed ones");
    // What the first piece finds wrong keeps its status and the route's error shape.
    let (status, body) = server.post("/embed", &json!({"inputs": all, "normalize": false}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error_type"], "Validation", "{body}");
    let (status, body) = server.post("/api/embed", &json!({"model": MINILM, "input": all, "dimensions": 4000}));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("dimensions"), "{body}");
}

#[test]
fn the_streamed_bytes_are_the_unstreamed_answer_and_cached_vectors_answer_per_piece() {
    let server = minilm("limits:\n  max_inputs_per_request: 64\n");
    let all = texts(150);
    // Unstreamed, in requests of at most 64: these fill the embedding cache.
    let mut data = Vec::new();
    let mut tokens = 0;
    for part in all.chunks(64) {
        let (status, body) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": part}));
        assert_eq!(status, 200, "{body}");
        tokens += body["usage"]["prompt_tokens"].as_u64().unwrap();
        data.extend(body["data"].as_array().unwrap().iter().cloned());
    }
    for (i, item) in data.iter_mut().enumerate() {
        item["index"] = json!(i);
    }
    let before = computed(&server);
    let hits = server.metric("mlx_serve_embedding_cache_hits_total", &[]);
    let (status, head, body) = raw::post_to_end(server.port, "/v1/embeddings", &json!({"model": MINILM, "input": all}));
    assert_eq!(status, 200, "{head}");
    assert!(!head.to_ascii_lowercase().contains("content-length"), "streamed: {head}");
    let text = String::from_utf8(body.expect("a complete chunked body")).unwrap();
    // Every vector came from the cache, piece by piece: nothing computed again.
    assert_eq!(computed(&server), before, "no input computed again");
    assert_eq!(server.metric("mlx_serve_embedding_cache_hits_total", &[]) - hits, 150.0);
    // The unstreamed answer's shape and field order, item for item.
    assert!(
        text.starts_with(r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":["#),
        "{text:.80}"
    );
    let end = format!(r#"],"model":"{MINILM}","usage":{{"prompt_tokens":{tokens},"total_tokens":{tokens}}}}}"#);
    assert!(text.ends_with(&end), "{}", &text[text.len() - 120..]);
    let got: Value = serde_json::from_str(&text).unwrap();
    let want = json!({"object": "list", "data": data, "model": MINILM,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}});
    assert!(got == want, "the streamed answer differs from the unstreamed ones");
}

#[test]
fn a_bad_input_late_in_a_streamed_request_is_a_400_before_anything_is_computed() {
    let server = minilm("limits:\n  max_inputs_per_request: 64\n  max_tokens_per_request: 200000\n");
    let (status, body) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": "warm up"}));
    assert_eq!(status, 200, "{body}");
    let before = computed(&server);
    let long = "word ".repeat(400);
    let mut cases = Vec::new();
    // An empty text at 9,000, a text past the window at 9,000 with truncation off, and
    // token ids outside the vocabulary at 9,000.
    let mut empty = texts(10_000);
    empty[9000] = String::new();
    cases.push((json!({"model": MINILM, "input": empty}), 400, "input 9000 is an empty string"));
    let mut too_long = texts(10_000);
    too_long[9000] = long.clone();
    cases.push((json!({"model": MINILM, "input": too_long, "truncate": false}), 400, "9000"));
    let mut ids = vec![vec![101, 2460, 102]; 10_000];
    ids[9000] = vec![101, 999_999, 102];
    cases.push((json!({"model": MINILM, "input": ids}), 400, "input 9000 has token id 999999"));
    // More tokens than limits.max_tokens_per_request, summed over the request: 413.
    cases.push((json!({"model": MINILM, "input": vec![long.as_str(); 1000]}), 413, "limits.max_tokens_per_request"));
    for (request, want, needle) in cases {
        let (status, body) = server.post("/v1/embeddings", &request);
        assert_eq!(status, want, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        assert!(body["error"]["type"].is_string(), "OpenAI's error shape: {body}");
    }
    assert_eq!(computed(&server), before, "nothing was computed for a refused request");
}

#[cfg(target_os = "linux")]
#[test]
fn a_streamed_request_holds_far_less_than_its_answer() {
    // No embedding cache: it would keep every vector computed (up to its 64 MiB budget).
    let server = minilm("limits:\n  max_inputs_per_request: 256\nembedding_cache:\n  memory_mb: 0\n");
    let n: usize = std::env::var("STREAMED_MEMORY_INPUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(40_000);
    let (status, _) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": "warm up"}));
    assert_eq!(status, 200);
    let request = json!({"model": MINILM, "input": texts(n), "encoding_format": "float"});
    let mut answer = 0;
    let start = Instant::now();
    let growth = raw::peak_growth(server.pid(), || {
        let (status, _, body) = raw::post_to_end(server.port, "/v1/embeddings", &request);
        assert_eq!(status, 200);
        let body = body.expect("a complete body");
        assert!(body.ends_with(b"}}"), "the answer is complete");
        answer = body.len();
    });
    let results = n * DIM * 4;
    println!(
        "{n} inputs in {:.1} s: supervisor peak memory grew {:.1} MiB; holding the results would take {:.1} MiB \
         of vectors plus {:.1} MiB of JSON",
        start.elapsed().as_secs_f64(),
        growth as f64 / 1048576.0,
        results as f64 / 1048576.0,
        answer as f64 / 1048576.0
    );
    // Holding the answer would take its vectors and its JSON; an eighth of that leaves room
    // for the allocator's variance between runs (12 to 17 MiB grown for 40,000 inputs).
    let held = (results + answer) as u64;
    assert!(growth < held / 8, "{growth} bytes grown; holding the answer would take {held}");
}

#[test]
fn a_client_gone_mid_answer_stops_the_work() {
    let server = minilm("limits:\n  max_inputs_per_request: 64\n");
    let (status, _) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": "warm up"}));
    assert_eq!(status, 200);
    let before = computed(&server);
    let n = 5000;
    // Read the answer's first bytes (a piece is about 600 KB of floats), then hang up.
    let (status, seen, complete) =
        raw::stream_body(server.port, "/v1/embeddings", &json!({"model": MINILM, "input": texts(n)}), |_| false);
    assert_eq!(status, 200);
    assert!(seen > 0 && !complete);
    // Whatever was queued for it is cancelled and no more is queued: the count stops.
    server.wait_for("the queue to empty", Duration::from_secs(60), || server.queue_state(MINILM).1 == 0);
    std::thread::sleep(Duration::from_secs(3));
    let done = computed(&server) - before;
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(computed(&server) - before, done, "work went on after the client left");
    println!("client left after {seen} bytes: {done} of {n} inputs computed (pieces of 64)");
    assert!(done < (n / 10) as f64, "{done} of {n} inputs computed after the client left");
}

#[test]
fn a_failure_after_the_answer_started_aborts_it() {
    let server = minilm("limits:\n  max_inputs_per_request: 64\n");
    let port = server.port.to_string();
    let mut stopped = false;
    let (status, seen, complete) = std::thread::scope(|s| {
        raw::stream_body(server.port, "/v1/embeddings", &json!({"model": MINILM, "input": texts(5000)}), |_| {
            // Once the 200 has started, stop the worker under the pieces in flight.
            if !stopped {
                stopped = true;
                s.spawn(|| {
                    let out = server.cli(&["ctl", "evict", MINILM, "--force", "--port", &port]);
                    assert!(out.ok(), "{}", out.text());
                });
            }
            true
        })
    });
    assert_eq!(status, 200);
    println!("the server ended the answer after {seen} bytes");
    assert!(!complete, "a failed answer must not end like a complete one");
    assert!(server.log_text().contains("streamed embeddings response aborted"), "the log says why");
}

#[test]
fn the_openai_client_raises_when_a_streamed_answer_is_aborted() {
    let server = minilm("limits:\n  max_inputs_per_request: 64\n");
    let (status, _) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": "warm up"}));
    assert_eq!(status, 200);
    let before = computed(&server);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/streamed_abort_client.py");
    let mut command = python_command();
    command.arg(script).arg(server.url(""));
    let client = std::thread::spawn(move || command.output().expect("run python client"));
    // A third piece reaching the worker means the first was written (two are in flight
    // at most): the 200 has started. Then stop the worker.
    server.wait_for("a third piece", Duration::from_secs(60), || computed(&server) - before > 128.0);
    let port = server.port.to_string();
    let out = server.cli(&["ctl", "evict", MINILM, "--force", "--port", &port]);
    assert!(out.ok(), "{}", out.text());
    let out = client.join().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}{}", String::from_utf8_lossy(&out.stderr));
    println!("the openai client raised {printed}");
}

#[test]
fn a_chunked_text_counts_its_windows_in_a_piece() {
    // Pieces of 8 windows; no cache, so the lone requests compute again.
    let server = minilm("limits:\n  max_inputs_per_request: 8\nembedding_cache:\n  memory_mb: 0\n");
    let words = ["river", "mountain", "quietly", "engine", "library", "harvest", "silver", "window"];
    // About 3.5 windows of MiniLM's 254 content tokens each.
    let long: String = (0..700).map(|i| words[(i * 7 + i / 20) % words.len()]).collect::<Vec<_>>().join(" ");
    let inputs: Vec<String> =
        (0..12).map(|i| if i % 4 == 3 { format!("{long} {i}") } else { format!("a short text {i}") }).collect();
    let (status, body) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": inputs, "chunking": true}));
    assert_eq!(status, 200, "{body}");
    let mut tokens = 0;
    for (i, text) in inputs.iter().enumerate() {
        let (status, alone) = server.post("/v1/embeddings", &json!({"model": MINILM, "input": text, "chunking": true}));
        assert_eq!(status, 200, "{alone}");
        tokens += alone["usage"]["prompt_tokens"].as_u64().unwrap();
        let item = &body["data"][i];
        assert_eq!(item["index"], i);
        assert_eq!(item.get("chunks"), alone["data"][0].get("chunks"), "input {i}");
        let (a, b) = (vector(item), vector(&alone["data"][0]));
        let cos: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum::<f64>()
            / (a.iter().map(|x| x * x).sum::<f64>().sqrt() * b.iter().map(|x| x * x).sum::<f64>().sqrt());
        assert!(cos >= 0.99999, "input {i}: cosine {cos}");
    }
    assert!(body["data"][3]["chunks"].as_u64().unwrap() >= 3, "{}", body["data"][3]["chunks"]);
    assert_eq!(body["usage"]["prompt_tokens"], tokens);
}

fn vector(item: &Value) -> Vec<f64> {
    item["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}
