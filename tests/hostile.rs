//! Requests that try to hurt the server, against the real daemon with real
//! workers: memory bombs inside `max_request_bytes`, concurrent large bodies, slow
//! clients (headers or body a byte at a time), too many connections, a stuck control
//! socket client, inputs that tokenize to nothing, and CLI output into a closed pipe.
//! Each test fails on the code before the fix.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use mlx_serve_tests::cli::{run, Home};
use mlx_serve_tests::raw::{self, closed_by_server, connect, read_answer};
use mlx_serve_tests::server::{Server, ServerOptions};
use serde_json::{json, Value};

/// The supervisor's peak memory while `send` runs, above its memory just before, in bytes.
/// Linux only, like the tests that use it: the peak since a chosen moment needs Linux's
/// `clear_refs`, and macOS keeps only a process's lifetime peak, which the server's start
/// and warm-up already set.
#[cfg(target_os = "linux")]
fn peak_growth(server: &Server, send: impl FnOnce()) -> u64 {
    // VmHWM is the peak since the process started: reset it so only `send` counts
    // (writing 5 to clear_refs resets the high-water mark, Linux ≥ 4.0).
    std::fs::write(format!("/proc/{}/clear_refs", server.pid()), "5").expect("reset VmHWM");
    let before = raw::proc_kib(server.pid(), "VmRSS");
    send();
    (raw::proc_kib(server.pid(), "VmHWM").saturating_sub(before)) * 1024
}

#[cfg(target_os = "linux")]
#[test]
fn huge_texts_cost_a_bounded_multiple_of_their_size() {
    let server =
        Server::start(ServerOptions { models: vec!["all-MiniLM-L6-v2", "tiny-bert-rerank"], ..Default::default() });
    // Load the tokenizers and workers first: their memory is not the requests'.
    assert_eq!(server.post("/v1/embeddings", &json!({"model": "all-MiniLM-L6-v2", "input": "warm up"})).0, 200);
    assert_eq!(
        server.post("/v1/rerank", &json!({"model": "tiny-bert-rerank", "query": "q", "documents": ["d"]})).0,
        200
    );

    // One string of two million one-letter words (4 MB): the model keeps 256 tokens.
    let words = "a ".repeat(2_000_000);
    let body = json!({"model": "all-MiniLM-L6-v2", "input": words});
    let size = serde_json::to_vec(&body).unwrap().len() as u64;
    let mut answer = (0, Value::Null);
    let grew = peak_growth(&server, || answer = server.post("/v1/embeddings", &body));
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(answer.1["usage"]["prompt_tokens"], 256, "truncated to max_seq_length");
    assert!(grew <= 5 * size, "peak grew {} MiB for a {} MiB body", grew >> 20, size >> 20);

    // A hundred 40 KB texts, and the same through /v1/tokenize.
    let texts: Vec<String> = (0..100).map(|i| format!("text{i} ").repeat(5_000)).collect();
    for (path, body) in [
        ("/v1/embeddings", json!({"model": "all-MiniLM-L6-v2", "input": texts})),
        ("/v1/tokenize", json!({"model": "all-MiniLM-L6-v2", "input": texts})),
    ] {
        let size = serde_json::to_vec(&body).unwrap().len() as u64;
        let grew = peak_growth(&server, || answer = server.post(path, &body));
        assert_eq!(answer.0, 200, "{path}: {}", answer.1);
        assert!(grew <= 5 * size, "{path}: peak grew {} MiB for a {} MiB body", grew >> 20, size >> 20);
    }

    // `truncate: false` still refuses the long text, from its head alone.
    let body = json!({"model": "all-MiniLM-L6-v2", "input": "a ".repeat(2_000_000), "truncate": false});
    let (status, v) = server.post("/v1/embeddings", &body);
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("context_length_exceeded")), "{v}");
}

#[cfg(target_os = "linux")]
#[test]
fn a_huge_rerank_pair_costs_a_bounded_multiple_of_its_size() {
    // 10 GB before the pair heads were encoded short, 175 MiB before they were trimmed to
    // the model's limit (tokenize.rs: the tokenizer merges a truncated pair's overflows
    // pairwise).
    let server = Server::start(ServerOptions { models: vec!["tiny-bert-rerank"], ..Default::default() });
    assert_eq!(
        server.post("/v1/rerank", &json!({"model": "tiny-bert-rerank", "query": "q", "documents": ["d"]})).0,
        200
    );
    // A reranker pair whose query and document are both huge, of the same length.
    let body = json!({"model": "tiny-bert-rerank", "query": "q ".repeat(1_000_000), "documents": ["d ".repeat(1_000_000)], "return_documents": false});
    let size = serde_json::to_vec(&body).unwrap().len() as u64;
    let mut answer = (0, Value::Null);
    let grew = peak_growth(&server, || answer = server.post("/v1/rerank", &body));
    assert_eq!(answer.0, 200, "{}", answer.1);
    println!("rerank: peak grew {:.1} MiB for a {:.1} MiB body", grew as f64 / 1048576.0, size as f64 / 1048576.0);
    assert!(grew <= 5 * size, "rerank: peak grew {} MiB for a {} MiB body", grew >> 20, size >> 20);
}

#[test]
fn concurrent_large_bodies_get_429_and_numbers_get_413() {
    let config = "limits:\n  max_request_bytes: 4194304\n  max_inflight_request_bytes: 8388608\n";
    let server = Server::start(ServerOptions {
        models: vec!["tiny-bert-embed"],
        config: Some(config.into()),
        ..Default::default()
    });
    // Two clients send 2.5 MB bodies but their last byte: bodies are charged as they
    // arrive, so 5 of the 8 MiB are taken until the bodies end (each then costs its body
    // again, decoded). A body that only declares its size holds nothing (tests/slow_clients.rs).
    let body = serde_json::to_vec(&json!({"model": "tiny-bert-embed", "input": "word ".repeat(500_000)})).unwrap();
    let third_body =
        serde_json::to_vec(&json!({"model": "tiny-bert-embed", "input": "word ".repeat(800_000)})).unwrap();
    let head = |path: &str, len: usize| {
        format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n")
    };
    // The server charges a body when it has read its headers, which the test cannot
    // observe: the third client's headers may be read before the second's, and then the
    // second is the one refused. Such a round says nothing and is run again.
    let mut clean_rounds = 0;
    for _round in 0..5 {
        let mut slow: Vec<_> = (0..2)
            .map(|_| {
                let mut s = connect(server.port, Duration::from_secs(60));
                s.write_all(head("/v1/embeddings", body.len()).as_bytes()).unwrap();
                s.write_all(&body[..body.len() - 1]).unwrap();
                s
            })
            .collect();
        // The server reads the two headers in a few milliseconds; this pause only makes a
        // raced round (retried below) unlikely.
        std::thread::sleep(Duration::from_millis(100));
        // A third sends 3.9 MiB, within max_request_bytes but not within what is left: it is
        // refused before its body is kept, and gets its 429 once the body is drained (no
        // broken pipe for a client still writing it).
        let deadline = Instant::now() + Duration::from_secs(3);
        let third = loop {
            let mut s = connect(server.port, Duration::from_secs(30));
            s.write_all(head("/api/embed", third_body.len()).as_bytes()).unwrap();
            s.write_all(&third_body).unwrap();
            match read_answer(&mut s) {
                Ok(a) if a.status == 429 => break Some(a),
                // Answered (200): it was read before the first two were charged.
                _ if Instant::now() > deadline => break None,
                _ => {}
            }
        };
        // None: the third was read before one of the first two, which got the 429.
        let Some(third) = third else { continue };
        assert_eq!(third.status, 429, "{third:?}");
        assert!(third.header("retry-after").is_some(), "{third:?}");
        assert!(
            third.json()["error"].as_str().is_some_and(|m| m.contains("max_inflight_request_bytes")),
            "Ollama shape: {third:?}"
        );
        // The first two finish normally, one after the other, unless the race above
        // refused one of them (its 429 comes once its body is drained).
        let mut raced = false;
        for s in &mut slow {
            if s.write_all(&body[body.len() - 1..]).is_err() {
                raced = true;
                continue;
            }
            let a = read_answer(s).unwrap();
            if a.status == 429 {
                raced = true;
                continue;
            }
            assert_eq!(a.status, 200, "{}", a.body);
        }
        if !raced {
            clean_rounds += 1;
            break;
        }
    }
    assert_eq!(
        clean_rounds,
        1,
        "every round raced: the first two bodies were never charged before the third\n{}",
        server.log_text()
    );
    // A body of two million small numbers is 4 MB on the wire but ~64 MB decoded.
    let ids = format!("{{\"model\": \"tiny-bert-embed\", \"input\": [[{}1]]}}", "1,".repeat(1_900_000));
    let a = raw::request(server.port, "POST /v1/embeddings HTTP/1.1\r\nContent-Type: application/json", ids.as_bytes());
    assert_eq!(a.status, 413, "{}", a.body);
    assert!(a.body.contains("max_inflight_request_bytes"), "{}", a.body);
    // And the server is as it was.
    assert_eq!(server.post("/v1/embeddings", &json!({"model": "tiny-bert-embed", "input": "ok"})).0, 200);
}

#[test]
fn a_body_refused_unread_is_drained_so_the_client_reads_its_answer() {
    let config = "limits:\n  max_request_bytes: 65536\n";
    let server = Server::start(ServerOptions {
        models: vec!["tiny-bert-embed"],
        config: Some(config.into()),
        ..Default::default()
    });
    let ok = serde_json::to_vec(&json!({"model": "tiny-bert-embed", "input": "fine"})).unwrap();
    let post = |len: usize| {
        format!("POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n")
    };
    // 100 KB declared and sent in full, over the 64 KiB limit: refused from its headers,
    // read and dropped, answered 413, and the connection serves the next request.
    let mut s = connect(server.port, Duration::from_secs(30));
    s.write_all(post(100_000).as_bytes()).unwrap();
    s.write_all(&vec![b' '; 100_000]).expect("the server reads a refused body instead of closing on the client");
    let a = read_answer(&mut s).unwrap();
    assert_eq!(a.status, 413, "{a:?}");
    assert!(a.body.contains("max_request_bytes"), "{a:?}");
    s.write_all(post(ok.len()).as_bytes()).unwrap();
    s.write_all(&ok).unwrap();
    assert_eq!(read_answer(&mut s).unwrap().status, 200, "the connection is still usable");
    // Far over the limit (more than twice it): answered and closed without reading.
    let mut s = connect(server.port, Duration::from_secs(10));
    s.write_all(post(10_000_000).as_bytes()).unwrap();
    let a = read_answer(&mut s).unwrap();
    assert_eq!(a.status, 413, "{a:?}");
    assert!(closed_by_server(&mut s), "a 10 MB body is not read");
}

#[test]
fn a_chunked_body_over_the_limit_is_refused() {
    // No Content-Length: the limit can only be found while the body arrives.
    let server = Server::start(ServerOptions {
        models: vec!["tiny-bert-embed"],
        config: Some("limits:\n  max_request_bytes: 65536\n".into()),
        ..Default::default()
    });
    let send = |body: Vec<u8>| {
        let mut s = connect(server.port, Duration::from_secs(60));
        let head = "POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        s.write_all(head.as_bytes()).unwrap();
        // Written by another thread while this one reads: a server that answers before the
        // body ends is read at once, whatever it does with the rest.
        let mut writer = s.try_clone().unwrap();
        let written = std::thread::spawn(move || {
            for chunk in body.chunks(8192) {
                let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
                if writer.write_all(&framed).is_err() {
                    return;
                }
            }
            let _ = writer.write_all(b"0\r\n\r\n");
        });
        let answer = read_answer(&mut s).expect("an answer");
        drop(s);
        written.join().unwrap();
        answer
    };
    let body =
        |words: usize| serde_json::to_vec(&json!({"model": "tiny-bert-embed", "input": "x ".repeat(words)})).unwrap();
    // Under the limit (about 40 KB), in chunks: served.
    let a = send(body(20_000));
    assert_eq!(a.status, 200, "{a:?}");
    // Over it (about 120 KB and 1 MB): refused with 413, naming the limit.
    for words in [60_000, 500_000] {
        let a = send(body(words));
        assert_eq!(a.status, 413, "{words} words: {a:?}");
        assert!(a.body.contains("max_request_bytes"), "{a:?}");
    }
    assert_eq!(server.post("/v1/embeddings", &json!({"model": "tiny-bert-embed", "input": "ok"})).0, 200);
}

#[test]
fn slow_clients_are_dropped_and_others_are_served() {
    let config = "server:\n  header_read_timeout_seconds: 5\n  body_read_timeout_seconds: 2\n";
    let server = Server::start(ServerOptions {
        models: vec!["tiny-bert-embed"],
        config: Some(config.into()),
        ..Default::default()
    });
    let embed = || server.post("/v1/embeddings", &json!({"model": "tiny-bert-embed", "input": "hello"}));
    // The worker loads now, not beside the slow clients.
    assert_eq!(embed().0, 200);
    let request = b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n";
    // 200 connections sending their headers one byte a second.
    let mut slow: Vec<_> = (0..200).map(|_| Some(connect(server.port, Duration::from_millis(1)))).collect();
    // One that sends its headers and 10 of 100 body bytes, then nothing.
    let mut stalled = connect(server.port, Duration::from_secs(10));
    stalled
        .write_all(b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\": ")
        .unwrap();
    let start = Instant::now();
    let mut closed_at = vec![None; slow.len()];
    let mut served = 0;
    for second in 0..15 {
        for (i, conn) in slow.iter_mut().enumerate() {
            let Some(s) = conn else { continue };
            let gone = s.write_all(&request[second..second + 1]).is_err() || closed_by_server(s);
            if gone {
                closed_at[i] = Some(start.elapsed());
                *conn = None;
            }
        }
        // A normal client meanwhile is answered. The first one while every slow client is
        // still connected: not after the server dropped them, which a server busy with
        // them could only have done (no clock involved but the 5 s header timeout).
        let (status, v) = embed();
        assert_eq!(status, 200, "{v}");
        if second == 0 {
            let open = slow.iter_mut().flatten().map(|s| !closed_by_server(s)).filter(|&open| open).count();
            assert_eq!(open, 200, "a normal request was answered only once slow clients were dropped");
        }
        served += 1;
        if slow.iter().all(Option::is_none) {
            break;
        }
        // Pacing the slow clients at a byte a second is the point of the test.
        std::thread::sleep(Duration::from_secs(1));
    }
    let open = closed_at.iter().filter(|c| c.is_none()).count();
    assert_eq!(open, 0, "{open} of 200 slow connections still open after {:?} (header timeout 5 s)", start.elapsed());
    assert!(served >= 2);
    let a = read_answer(&mut stalled).expect("a 408 for the stalled body");
    assert_eq!(a.status, 408, "{a:?}");
    assert_eq!(a.json()["error"]["code"], "request_timeout", "{a:?}");
    assert!(closed_by_server(&mut stalled), "the connection of a timed-out body is closed");
}

#[test]
fn connections_past_the_cap_are_closed_at_once() {
    // A header timeout far longer than the test waits: a connection closed within the wait
    // was closed by the cap, however slow the machine.
    let config = "server:\n  max_connections: 20\n  header_read_timeout_seconds: 300\n";
    let server = Server::start(ServerOptions {
        models: vec!["tiny-bert-embed"],
        config: Some(config.into()),
        ..Default::default()
    });
    // Twenty busy connections: each is sending a body (an idle one would be closed to make
    // room: tests/slow_clients.rs).
    let held: Vec<_> = (0..20)
        .map(|_| {
            let mut s = connect(server.port, Duration::from_secs(5));
            s.write_all(b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // The 21st connection is accepted and closed without an answer. The kernel accepts
    // connections before the server does, so "closed" is what the client can observe.
    let mut extra = connect(server.port, Duration::from_secs(60));
    assert!(closed_by_server(&mut extra), "the 21st connection stayed open");
    // The log arrives through a pipe read by another thread: wait for the line.
    server.wait_for("the refusal in the log", Duration::from_secs(10), || {
        server.log_text().contains("server.max_connections (20) reached")
    });
    // Once clients leave, new ones are served (the server sees the close and frees the slot;
    // it may take a moment, so retry).
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut s = connect(server.port, Duration::from_secs(5));
        let ok = s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").is_ok()
            && read_answer(&mut s).is_ok_and(|a| a.status == 200);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "no connection served after the held ones closed");
        std::thread::sleep(Duration::from_millis(100)); // polling interval of a condition wait (bounded by its deadline)
    }
}

#[test]
fn the_control_socket_bounds_line_length_and_read_time() {
    let server = Server::start(ServerOptions { models: vec!["tiny-bert-embed"], ..Default::default() });
    let path = server.home.path().join(format!("run/mlx-serve-{}.sock", server.port));
    let answer = |s: &mut UnixStream| {
        let mut text = String::new();
        std::io::Read::read_to_string(s, &mut text).expect("the server answers and closes within the timeout");
        serde_json::from_str::<Value>(text.trim()).unwrap_or(Value::String(text))
    };
    // A 1 MiB line without a newline: refused after 64 KiB, connection closed.
    let mut s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(&vec![b'x'; 1 << 20]); // the server may close before all is written
    let v = answer(&mut s);
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("longer than")), "{v}");
    // Silence: refused after 10 s.
    let mut s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let t = Instant::now();
    let v = answer(&mut s);
    assert!(v["error"].as_str().is_some_and(|e| e.contains("no complete request line")), "{v}");
    assert!(t.elapsed() >= Duration::from_secs(9), "{:?}", t.elapsed());
    // A normal request still works.
    let mut s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(answer(&mut s)["ok"], true);
}

#[test]
fn inputs_empty_after_tokenization_and_too_many_pairs_are_refused() {
    let config = "limits:\n  max_documents_per_rerank: 3\n";
    let server = Server::start(ServerOptions {
        models: vec!["tiny-bert-embed", "tiny-bert-rerank"],
        config: Some(config.into()),
        ..Default::default()
    });
    for input in [json!("\u{0}"), json!(["ok", "\u{200b}\u{200b}"]), json!("\u{0} \u{0}")] {
        let (status, v) = server.post("/v1/embeddings", &json!({"model": "tiny-bert-embed", "input": input}));
        assert_eq!(status, 400, "{input}: {v}");
        assert_eq!(v["error"]["param"], "input", "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("empty after tokenization"), "{v}");
    }
    let (status, v) = server.post("/api/embed", &json!({"model": "tiny-bert-embed", "input": "\u{0}"}));
    assert!(status == 400 && v["error"].is_string(), "{status} {v}");
    let (status, v) =
        server.post("/v1/rerank", &json!({"model": "tiny-bert-rerank", "query": "\u{0}", "documents": ["a"]}));
    assert_eq!((status, v["error"]["param"].as_str()), (400, Some("query")), "{v}");
    // /v1/tokenize pair mode obeys the rerank document limit.
    let docs = json!(["a", "b", "c", "d"]);
    let (status, v) =
        server.post("/v1/tokenize", &json!({"model": "tiny-bert-rerank", "query": "q", "documents": docs}));
    assert_eq!((status, v["error"]["code"].as_str()), (413, Some("request_too_large")), "{v}");
    let (status, v) = server.post("/v1/rerank", &json!({"model": "tiny-bert-rerank", "query": "q", "documents": docs}));
    assert_eq!(status, 413, "{v}");
}

/// `mlx-serve ARGS` with stdout (and, with `stderr_too`, stderr) writing into a pipe
/// whose reader is already gone: what `| head -1` leaves after its first line.
fn with_closed_pipe(home: &Home, args: &[&str], stderr_too: bool) -> mlx_serve_tests::cli::Output {
    let closed = || {
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        Stdio::from(write)
    };
    let mut cmd = home.command(args);
    cmd.stdout(closed());
    if stderr_too {
        cmd.stderr(closed());
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "{args:?} did not finish");
        std::thread::sleep(Duration::from_millis(20)); // polling interval of a condition wait (bounded by its deadline)
    };
    mlx_serve_tests::cli::Output { code: status.code(), stdout: String::new(), stderr: String::new() }
}

#[test]
fn cli_output_into_a_closed_pipe_is_not_a_panic() {
    let home = Home::new(&["tiny-bert-embed"]);
    let source = mlx_serve_tests::fixtures::model_dir("tiny-bert-rerank");
    let source = source.to_str().unwrap();
    for (args, stderr_too) in [
        (vec!["pull", source, "--name", "copied"], true),
        (vec!["list"], false),
        (vec!["list", "--json"], false),
        (vec!["show", "tiny-bert-embed"], false),
        (vec!["config"], false),
        (vec!["config", "--example"], false),
        (vec!["status"], false),
        (vec!["--help"], false),
    ] {
        let out = with_closed_pipe(&home, &args, stderr_too);
        // `status` exits 3 when no server runs; anything but a panic (101) is fine there.
        let expected = if args[0] == "status" { 3 } else { 0 };
        assert_eq!(out.code, Some(expected), "{args:?} exited {:?} with its output going nowhere", out.code);
    }
    // The pull did its work although nobody read its output.
    let listed = run(home.command(&["list"]), Duration::from_secs(30));
    assert!(listed.stdout.contains("copied"), "{}", listed.text());
}
