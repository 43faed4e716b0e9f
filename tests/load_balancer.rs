//! Three real mlx-serve replicas (each its own home, all-MiniLM-L6-v2 imported from .deps,
//! real workers) behind a real HAProxy running deploy/haproxy/haproxy.cfg unchanged, under
//! a bounded mixed-length load from several client threads. One replica is drained
//! (SIGTERM); once it has gone, another is killed (SIGKILL, with its workers) while it holds
//! requests. What must hold (docs/deploy.md, "What the balancer can replay"):
//!
//! - Drain: no request fails. The drained replica stops answering /ready while it is still
//!   finishing accepted work (a request it was computing when SIGTERM came returns all its
//!   embeddings), leaves HAProxy's rotation, and exits 0.
//! - Kill: a request may fail only if the killed replica had already begun its response
//!   (HAProxy's termination state "SD": bytes already forwarded cannot be taken back). Every
//!   other request it held, and every request sent to it before HAProxy noticed, is replayed
//!   on another replica; at least one is.
//! - Every 200 is right: each request carries one marker text whose vector was computed
//!   directly on a replica beforehand, and the answer has one 384-dim vector per input.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlx_serve_tests::balancer::{self, Balancer};
use mlx_serve_tests::fixtures::cosine;
use mlx_serve_tests::server::{child_pids, signal, Server, ServerOptions};
use mlx_serve_tests::tools::missing_tool;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const MINILM: &str = "all-MiniLM-L6-v2";
const CLIENTS: usize = 6;
/// Bounds on the load, whatever happens: requests per client and total time.
const MAX_REQUESTS_PER_CLIENT: u64 = 400;
const MAX_LOAD_TIME: Duration = Duration::from_secs(90);
const MARKERS: [&str; 3] = [
    "The river runs through the old city.",
    "Vector search finds documents by meaning.",
    "Une phrase en français pour changer.",
];
const WORDS: &[&str] = &[
    "the", "of", "and", "model", "server", "vector", "search", "query", "document", "memory", "batch", "token",
    "latency", "river", "mountain", "city", "music", "science", "history", "language", "energy", "network",
];

/// One request as a client saw it.
#[derive(Debug)]
struct Outcome {
    id: String,
    start: Instant,
    end: Instant,
    /// Ok(()) for a 200 with right content; Err(what went wrong) otherwise.
    result: Result<(), String>,
}

/// xorshift64*: reproducible mixed lengths without a dependency.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
    fn text(&mut self) -> String {
        // 70% search queries of 3-12 words, 30% passages of 20-100 words.
        let n = if self.below(10) < 7 { 3 + self.below(10) } else { 20 + self.below(81) };
        (0..n).map(|_| WORDS[self.below(WORDS.len() as u64) as usize]).collect::<Vec<_>>().join(" ")
    }
}

fn embeddings(reply: &Value) -> Vec<Vec<f32>> {
    reply["data"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|e| e["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
                .collect()
        })
        .unwrap_or_default()
}

/// One client: requests of 1-4 mixed-length texts plus a marker, until `stop` or its bound.
fn client(
    seed: u64,
    url: String,
    refs: Arc<Vec<Vec<f32>>>,
    next_id: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Vec<Outcome>>>,
) {
    let mut rng = Rng(seed);
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
    for _ in 0..MAX_REQUESTS_PER_CLIENT {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let mut input: Vec<String> = (0..1 + rng.below(4)).map(|_| rng.text()).collect();
        let marker = rng.below(MARKERS.len() as u64) as usize;
        let at = rng.below(input.len() as u64 + 1) as usize;
        input.insert(at, MARKERS[marker].to_owned());
        let id = format!("lb-{}", next_id.fetch_add(1, Ordering::SeqCst));
        let start = Instant::now();
        let r = agent.post(&url).set("X-Request-Id", &id).send_json(json!({"model": MINILM, "input": input}));
        let result = match r {
            Ok(resp) => match resp.into_json::<Value>() {
                Ok(reply) => {
                    let vecs = embeddings(&reply);
                    if vecs.len() != input.len() || vecs.iter().any(|v| v.len() != 384) {
                        Err(format!("{} vectors for {} inputs", vecs.len(), input.len()))
                    } else if cosine(&vecs[at], &refs[marker]) < 0.9999 {
                        Err(format!("marker vector off: cosine {}", cosine(&vecs[at], &refs[marker])))
                    } else {
                        Ok(())
                    }
                }
                Err(e) => Err(format!("body: {e}")),
            },
            Err(ureq::Error::Status(code, resp)) => Err(format!("{code}: {}", resp.into_string().unwrap_or_default())),
            Err(e) => Err(format!("transport: {e}")),
        };
        out.lock().unwrap().push(Outcome { id, start, end: Instant::now(), result });
    }
}

fn queue_depth(server: &Server) -> f64 {
    let (_, text) = server.get_text("/metrics");
    text.lines()
        .filter(|l| l.starts_with("mlx_serve_queue_depth{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn ready(server: &Server) -> bool {
    ureq::get(&server.url("/ready")).timeout(Duration::from_secs(2)).call().is_ok()
}

#[test]
fn replicas_behind_haproxy_lose_nothing_to_a_drain_and_only_started_responses_to_a_kill() {
    let Some(haproxy) = balancer::haproxy() else {
        return missing_tool("haproxy", "Debian's package haproxy (scripts/setup installs it), or Homebrew's");
    };
    let t0 = Instant::now();
    let start = || {
        std::thread::spawn(|| {
            Server::start(ServerOptions {
                models: vec![MINILM],
                args: vec!["--preload".into(), MINILM.into()],
                ..Default::default()
            })
        })
    };
    let starting = [start(), start(), start()];
    let servers: Vec<Server> = starting.into_iter().map(|h| h.join().unwrap()).collect();
    // Marker vectors, computed directly on one replica; the other two are warmed up too.
    let (st, reply) = servers[0].post("/v1/embeddings", &json!({"model": MINILM, "input": MARKERS}));
    assert_eq!(st, 200, "{reply}");
    let refs = Arc::new(embeddings(&reply));
    for s in &servers[1..] {
        assert_eq!(s.post("/v1/embeddings", &json!({"model": MINILM, "input": "warm up"})).0, 200);
    }
    let lb = Balancer::start(&haproxy, &[servers[0].port, servers[1].port, servers[2].port]);
    let mut servers: Vec<Option<Server>> = servers.into_iter().map(Some).collect();
    for name in ["mac1", "mac2", "mac3"] {
        lb.wait_for(name, Duration::from_secs(10), |s| s.status == "UP");
    }
    // Model management would reach one replica only: the balancer refuses it, in the
    // Ollama routes' error shape.
    match ureq::post(&lb.url("/api/pull")).send_json(json!({"model": "minilm"})) {
        Err(ureq::Error::Status(403, r)) => {
            let body: Value = r.into_json().unwrap();
            assert!(body["error"].as_str().is_some_and(|e| e.contains("each instance")), "{body}");
        }
        other => panic!("/api/pull through the balancer: {other:?}"),
    }

    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let next_id = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS as u64)
        .map(|i| {
            let (url, refs, next_id, stop, out) =
                (lb.url("/v1/embeddings"), refs.clone(), next_id.clone(), stop.clone(), outcomes.clone());
            std::thread::spawn(move || client(0x9e37_79b9_7f4a_7c15 ^ (i + 1), url, refs, next_id, stop, out))
        })
        .collect();
    let done = || outcomes.lock().unwrap().len();
    let wait_for_load = |n: usize| {
        let target = done() + n;
        let deadline = Instant::now() + MAX_LOAD_TIME;
        while done() < target {
            assert!(Instant::now() < deadline, "the load stalled at {} requests:\n{}", done(), lb.log_text());
            std::thread::sleep(Duration::from_millis(20)); // polling the clients' progress
        }
    };
    wait_for_load(20);
    eprintln!("{:.1} s: three replicas up behind HAProxy, 20 requests done", t0.elapsed().as_secs_f64());

    // --- Drain mac1 (servers[0]) while it computes a request of 128 passages sent to it
    // directly: with one batch of 32 computing and one prepared, 64 of them wait in its
    // queue, more than the balanced load can put there (each client has at most 5 inputs in
    // flight), so a deeper queue means mac1 has accepted this request.
    let drained = servers[0].as_ref().unwrap();
    let passages: Vec<String> =
        (0..128).map(|i| format!("passage {i}: {}", "rivers cross the mountain city ".repeat(8))).collect();
    let direct = {
        let url = drained.url("/v1/embeddings");
        std::thread::spawn(move || {
            let r = ureq::post(&url)
                .timeout(Duration::from_secs(120))
                .send_json(json!({"model": MINILM, "input": passages}));
            r.map_err(|e| e.to_string())?.into_json::<Value>().map_err(|e| e.to_string())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while queue_depth(drained) <= (CLIENTS * 5) as f64 {
        assert!(Instant::now() < deadline && !direct.is_finished(), "the long request never queued on mac1");
        std::thread::sleep(Duration::from_millis(5)); // polling its /metrics until it has accepted the work
    }
    let t_drain = Instant::now();
    signal(drained.pid(), Signal::SIGTERM);
    eprintln!("{:.1} s: SIGTERM to mac1", t0.elapsed().as_secs_f64());
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready(drained) {
        assert!(Instant::now() < deadline, "mac1 still ready 10 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(5)); // polling /ready until it fails
    }
    assert!(!direct.is_finished(), "mac1 failed /ready only after finishing its accepted work");
    let reply = direct.join().unwrap().expect("the request mac1 had accepted");
    assert_eq!(reply["data"].as_array().map(Vec::len), Some(128), "mac1 finished its accepted work");
    lb.wait_for("mac1", Duration::from_secs(10), |s| s.status.starts_with("DOWN"));
    let drained_log = drained.log_text();
    let after_term = drained_log.split("SIGTERM: shutting down").nth(1).unwrap_or_default().to_owned();
    let finished: Vec<&str> = after_term.lines().filter(|l| l.contains("endpoint=/v1/embeddings")).collect();
    assert!(
        !finished.is_empty() && finished.iter().all(|l| l.contains("status=200")),
        "mac1 after SIGTERM:\n{after_term}"
    );
    assert_eq!(servers[0].take().unwrap().stop(), Some(0), "the drained replica exits 0");
    wait_for_load(12);

    // --- Kill mac2 (servers[1]) and its workers while HAProxy has requests on it.
    let killed = servers[1].as_ref().unwrap();
    let workers = killed.worker_pids();
    lb.wait_for("mac2", Duration::from_secs(30), |s| s.current >= 1);
    let t_kill = Instant::now();
    signal(killed.pid(), Signal::SIGKILL);
    eprintln!("{:.1} s: SIGKILL to mac2", t0.elapsed().as_secs_f64());
    for w in &workers {
        signal(*w, Signal::SIGKILL);
    }
    lb.wait_for("mac2", Duration::from_secs(10), |s| s.status.starts_with("DOWN"));
    wait_for_load(12);
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let killed = servers[1].take().unwrap();
    drop(killed); // reaps the killed process
    assert!(child_pids(servers[2].as_ref().unwrap().pid(), "mlx-serve-worker").len() == 1, "mac3 kept its worker");

    // --- What the clients saw, beside HAProxy's log.
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let log = lb.requests();
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    let replayed = log.iter().filter(|l| l.retries > 0).count();
    let (during_drain, after_kill) = (
        outcomes.iter().filter(|o| o.end > t_drain && o.start < t_kill).count(),
        outcomes.iter().filter(|o| o.start > t_kill).count(),
    );
    eprintln!(
        "{} requests through HAProxy in {:.1} s: {during_drain} during the drain, {after_kill} after the kill; {replayed} replayed, {} failed",
        outcomes.len(),
        t0.elapsed().as_secs_f64(),
        failed.len()
    );
    // The drain (everything that ended before the kill) cost nothing.
    let drain_failures: Vec<&&Outcome> = failed.iter().filter(|o| o.end < t_kill).collect();
    assert!(drain_failures.is_empty(), "requests failed before the kill: {drain_failures:?}\n{}", lb.log_text());
    for l in log.iter().filter(|l| l.retries > 0).take(5) {
        eprintln!("replayed: {}", l.line);
    }
    for o in &failed {
        let line = log.iter().find(|l| l.request_id == o.id);
        // A failure is allowed only where no retry policy could help: the killed replica had
        // begun its response, HAProxy had forwarded part of it, then the replica vanished.
        assert!(
            o.start < t_kill && o.end > t_kill && line.is_some_and(|l| l.server == "mac2" && l.termination.starts_with("SD")),
            "request {} failed ({:?}) but was not one whose response had started on the killed replica.\nHAProxy: {line:?}\nlog:\n{}",
            o.id,
            o.result,
            lb.log_text()
        );
    }
    assert!(failed.len() <= CLIENTS, "more failures than requests in flight");
    assert!(during_drain > 0 && after_kill > 0, "load ran through both events");
    assert!(replayed >= 1, "no request was replayed: the retry policy was not exercised\n{}", lb.log_text());
    let last = servers[2].take().unwrap();
    drop(lb);
    assert_eq!(last.stop(), Some(0));
}
