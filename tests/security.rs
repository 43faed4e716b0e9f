//! Who may drive a default server (docs/security.md): a web page the user visits — through
//! DNS rebinding (its own name resolving to 127.0.0.1, so its `Host`) or a cross-origin
//! `text/plain` POST that browsers send without a preflight — and other local users.
//! Each attack goes through the real daemon over loopback, and the model it aims at must
//! still be installed and answering afterwards. On the server before these checks, each
//! of the refused requests below deleted the model or started a download.

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use mlx_serve_tests::raw::{self, Answer};
use mlx_serve_tests::server::{Server, ServerOptions};
use mlx_serve_tests::tools::missing_tool;
use serde_json::json;

const MODEL: &str = "tiny-bert-embed";

/// One request with exactly the header lines given (`Host` included when wanted).
fn send(port: u16, request_line: &str, headers: &[&str], body: &str) -> Answer {
    let mut s = raw::connect(port, Duration::from_secs(120));
    let mut msg = format!("{request_line}\r\n");
    for h in headers {
        msg.push_str(h);
        msg.push_str("\r\n");
    }
    msg.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()));
    s.write_all(msg.as_bytes()).expect("send request");
    raw::read_answer(&mut s).expect("read answer")
}

/// The model is still installed and still embeds.
fn assert_model_survives(server: &Server) {
    let (status, tags) = server.get("/api/tags");
    assert_eq!(status, 200);
    let names: Vec<String> =
        tags["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap_or("").to_owned()).collect();
    assert!(names.iter().any(|n| n.starts_with(MODEL)), "{MODEL} is gone: {names:?}");
    assert!(server.home.path().join("models").join(MODEL).exists(), "{MODEL}'s folder is gone");
    let (status, body) = server.post("/v1/embeddings", &json!({"model": MODEL, "input": "still here"}));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn rebinding_and_cross_origin_requests_are_refused_and_the_model_survives() {
    let server = Server::start(ServerOptions {
        models: vec![MODEL],
        env: vec![("MLX_SERVE_ORIGINS".into(), "https://app.example".into())],
        ..Default::default()
    });
    let port = server.port;
    let body = json!({"model": MODEL}).to_string();
    let rebind =
        ["Host: rebind.attacker.example", "Origin: http://rebind.attacker.example", "Content-Type: text/plain"];
    let own_host = format!("Host: 127.0.0.1:{port}");
    let cross = [own_host.as_str(), "Origin: http://attacker.example", "Content-Type: text/plain"];
    for (what, headers) in [("rebinding", &rebind[..]), ("cross-origin", &cross[..])] {
        let a = send(port, "DELETE /api/delete HTTP/1.1", headers, &body);
        assert_eq!(a.status, 403, "{what} delete: {a:?}");
        assert!(a.json()["error"].is_string(), "Ollama's error shape: {a:?}");
        let a =
            send(port, "POST /api/pull HTTP/1.1", headers, &json!({"model": "acme/evil", "stream": false}).to_string());
        assert_eq!(a.status, 403, "{what} pull: {a:?}");
        let embed = json!({"model": MODEL, "input": "use my compute"}).to_string();
        let a = send(port, "POST /v1/embeddings HTTP/1.1", headers, &embed);
        assert_eq!(a.status, 403, "{what} embeddings: {a:?}");
        assert_eq!(a.json()["error"]["code"], "forbidden", "OpenAI's error shape: {a:?}");
    }
    // Same origin, no Origin header, but not JSON: refused too (a form or a beacon).
    let a = send(port, "DELETE /api/delete HTTP/1.1", &[&own_host, "Content-Type: text/plain"], &body);
    assert_eq!(a.status, 415, "{a:?}");
    let a = send(port, "DELETE /api/delete HTTP/1.1", &[&own_host], &body);
    assert_eq!(a.status, 415, "no content type: {a:?}");
    assert_model_survives(&server);

    // Pages on loopback and allowed origins are served, with CORS headers for the browser.
    let embed = json!({"model": MODEL, "input": "hello"}).to_string();
    for origin in ["http://localhost:3000", "https://app.example"] {
        let json_type = "Content-Type: application/json";
        let a =
            send(port, "POST /v1/embeddings HTTP/1.1", &[&own_host, &format!("Origin: {origin}"), json_type], &embed);
        assert_eq!(a.status, 200, "{origin}: {a:?}");
        assert_eq!(a.header("access-control-allow-origin").as_deref(), Some(origin));
        let preflight = [
            own_host.as_str(),
            &format!("Origin: {origin}"),
            "Access-Control-Request-Method: POST",
            "Access-Control-Request-Headers: content-type",
        ];
        let a = send(port, "OPTIONS /v1/embeddings HTTP/1.1", &preflight, "");
        assert_eq!(a.status, 204, "preflight from {origin}: {a:?}");
        assert_eq!(a.header("access-control-allow-origin").as_deref(), Some(origin));
    }
    let a = send(
        port,
        "OPTIONS /v1/embeddings HTTP/1.1",
        &[&own_host, "Origin: http://attacker.example", "Access-Control-Request-Method: POST"],
        "",
    );
    assert_eq!(a.status, 403, "a preflight from another origin: {a:?}");
    assert!(a.header("access-control-allow-origin").is_none());
    // Names of this server keep working.
    for host in ["localhost", "127.0.0.1", "api.localhost"] {
        let a = send(port, "GET /api/tags HTTP/1.1", &[&format!("Host: {host}:{port}")], "");
        assert_eq!(a.status, 200, "Host {host}: {a:?}");
    }

    // The owner, with JSON, from no page at all: allowed.
    let a = send(port, "DELETE /api/delete HTTP/1.1", &[&own_host, "Content-Type: application/json"], &body);
    assert_eq!(a.status, 200, "the owner's delete: {a:?}");
    assert!(!server.home.path().join("models").join(MODEL).exists());
}

/// `curl` run as user `nobody` (uid 65534) with `setpriv`.
fn curl_as_nobody(args: &[&str]) -> Option<(u16, String)> {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "curl", "-s", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_owned()))
}

#[test]
fn another_local_user_cannot_manage_models_without_the_key() {
    if !nix::unistd::geteuid().is_root() {
        missing_tool("chown", "running a client as another user needs root (setpriv)");
        return;
    }
    let server = Server::start(ServerOptions { models: vec![MODEL], ..Default::default() });
    let delete = server.url("/api/delete");
    let json_type = "Content-Type: application/json";
    let body = json!({"model": MODEL}).to_string();
    let Some((status, answer)) = curl_as_nobody(&["-X", "DELETE", "-H", json_type, "-d", &body, &delete]) else {
        missing_tool("chown", "setpriv and curl (util-linux, curl) run a client as nobody");
        return;
    };
    assert_eq!(status, 403, "nobody's delete: {answer}");
    assert!(answer.contains("user running the server"), "{answer}");
    let pull = server.url("/api/pull");
    let pull_body = json!({"model": "acme/evil", "stream": false}).to_string();
    let (status, answer) = curl_as_nobody(&["-H", json_type, "-d", &pull_body, &pull]).unwrap();
    assert_eq!(status, 403, "nobody's pull: {answer}");
    // Rebinding as nobody: the Host check comes first.
    let (status, _) =
        curl_as_nobody(&["-X", "DELETE", "-H", "Host: rebind.attacker.example", "-d", &body, &delete]).unwrap();
    assert_eq!(status, 403);
    // Using models is not management: nobody may embed.
    let embed = json!({"model": MODEL, "input": "hi"}).to_string();
    let (status, answer) = curl_as_nobody(&["-H", json_type, "-d", &embed, &server.url("/v1/embeddings")]).unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_model_survives(&server);

    // With an API key, the key is what counts, whoever holds it.
    let key = "k-security-0123456789";
    let server = Server::start(ServerOptions {
        models: vec![MODEL],
        config: Some(format!("server:\n  api_key: {key}\n")),
        ..Default::default()
    });
    let bearer = format!("Authorization: Bearer {key}");
    let delete = server.url("/api/delete");
    let (status, answer) =
        curl_as_nobody(&["-X", "DELETE", "-H", json_type, "-H", &bearer, "-d", &body, &delete]).unwrap();
    assert_eq!(status, 200, "the key holder's delete: {answer}");
}

#[test]
fn model_management_can_be_limited_to_the_cli() {
    let server = Server::start(ServerOptions {
        models: vec![MODEL],
        config: Some("server:\n  http_model_management: false\n".into()),
        ..Default::default()
    });
    let body = json!({"model": MODEL});
    let a = raw::request(
        server.port,
        "DELETE /api/delete HTTP/1.1\r\nContent-Type: application/json",
        body.to_string().as_bytes(),
    );
    assert_eq!(a.status, 403, "{a:?}");
    assert!(a.json()["error"].as_str().unwrap_or("").contains("server.http_model_management"), "{a:?}");
    let (status, _) = server.post("/api/pull", &json!({"model": "acme/mini", "stream": false}));
    assert_eq!(status, 403);
    assert_model_survives(&server);
    // The CLI still manages models.
    let out = server.cli(&["remove", MODEL]);
    assert!(out.ok(), "{out:?}");
    assert!(!server.home.path().join("models").join(MODEL).exists());
}
