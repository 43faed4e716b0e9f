//! Pulls when things go wrong: two pulls of one model at once, a full
//! or read-only disk during pull and quantize, and a hub that fails for a moment. Real
//! `mlx-serve` processes against the loopback hub (tests/common/fake_hub.rs) serving the
//! real all-MiniLM-L6-v2 files.
//!
//! A full disk is a real one where the system allows it: a small tmpfs mounted in a
//! private mount namespace (`unshare -rm`, Linux), which only the confined command sees.
//! Elsewhere a file size limit (`ulimit -f`, RLIMIT_FSIZE, with SIGXFSZ ignored so writes
//! fail with EFBIG) stands in, and a folder without write permission for a read-only file
//! system; the test prints which one it used.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mlx_serve_tests::cli::Output;
use mlx_serve_tests::fake_hub::{error_line, folder_files, FakeHub};
use mlx_serve_tests::fixtures::minilm_dir;
use mlx_serve_tests::server::binary;

fn minilm_hub() -> FakeHub {
    let hub = FakeHub::start();
    hub.add_repo("acme/mini", folder_files(&minilm_dir().unwrap()));
    hub
}

fn weights() -> Vec<u8> {
    std::fs::read(minilm_dir().unwrap().join("model.safetensors")).unwrap()
}

fn sha256(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Entries of a folder, hidden ones included, but not the store's install locks.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.retain(|n| n != ".locks");
    v.sort();
    v
}

fn spawn_pull(hub: &FakeHub, home: &Path, repo: &str) -> std::process::Child {
    Command::new(binary("mlx-serve"))
        .args(["pull", repo])
        .env("MLX_SERVE_HOME", home)
        .env("HF_ENDPOINT", hub.endpoint())
        .env("HF_HOME", home.join("hf"))
        .env_remove("MLX_SERVE_CONFIG")
        .env_remove("HF_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(mut child: std::process::Child) -> Output {
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    Output { code: status.code(), stdout, stderr }
}

#[test]
fn two_pulls_of_one_model_from_two_processes_agree() {
    let hub = minilm_hub();
    // ~90 MiB at 1 MiB per 20 ms: the first pull is still downloading when the second starts.
    hub.slow_down(Some(Duration::from_millis(20)));
    let home = tempfile::tempdir().unwrap();
    let first = spawn_pull(&hub, home.path(), "acme/mini");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !hub.requests().iter().any(|r| r.starts_with("/cdn/") && !r.ends_with("bytes=0-0")) {
        assert!(Instant::now() < deadline, "the first download never started");
        std::thread::sleep(Duration::from_millis(20)); // polling interval of a condition wait (bounded by its deadline)
    }
    let second = spawn_pull(&hub, home.path(), "acme/mini");
    let (a, b) = (finish(first), finish(second));
    assert!(a.ok(), "{}", a.text());
    assert!(b.ok(), "{}", b.text());
    assert!(a.stdout.contains("installed mini"), "{}", a.text());
    // The second waited for the first, then found the same revision installed.
    assert!(b.stderr.contains("waiting for another pull of acme/mini"), "{}", b.text());
    assert!(b.stdout.contains("mini is up to date"), "{}", b.text());
    let models = home.path().join("models");
    assert_eq!(entries(&models), vec!["mini"]);
    assert_eq!(std::fs::read(models.join("mini/model.safetensors")).unwrap(), weights());
    // The weights came over the network once.
    let sha = sha256(&weights());
    let firsts = hub.requests().iter().filter(|r| r.contains(&sha) && r.ends_with("bytes=0-9999999")).count();
    assert_eq!(firsts, 1, "{:?}", hub.requests());
}

/// How the confined commands below get a small or read-only disk.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Confinement {
    /// A tmpfs in a private mount namespace.
    Tmpfs,
    /// `ulimit -f` (file size limit) and `chmod` (no write permission).
    Limits,
}

fn confinement() -> Confinement {
    let ok = cfg!(target_os = "linux")
        && Command::new("unshare")
            .args([
                "-rm",
                "sh",
                "-c",
                "d=$(mktemp -d) && mount -t tmpfs -o size=1m none \"$d\" && umount \"$d\" && rmdir \"$d\"",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    let c = if ok { Confinement::Tmpfs } else { Confinement::Limits };
    println!("disk faults simulated with: {c:?}");
    c
}

/// Runs `prepare` then `mlx-serve ARGS` with `dir` confined: `size_mb` of space (or, with
/// `read_only`, no writes), as [`confinement`] allows (with file size limits, no file of
/// more than 20 MiB anywhere). After the command, the listing of
/// `dir` as the command saw it (a tmpfs disappears with its namespace). Returns the
/// command's output and that listing.
fn confined(
    hub: &FakeHub,
    home: &Path,
    dir: &Path,
    size_mb: u64,
    read_only: bool,
    prepare: &str,
    args: &[&str],
) -> (Output, Vec<String>) {
    let d = dir.display();
    let (setup, limit) = match (confinement(), read_only) {
        (Confinement::Tmpfs, false) => {
            (format!("mount -t tmpfs -o size={size_mb}m none '{d}' && {prepare}"), String::new())
        }
        // A bind remount: a plain `remount,ro` of the tmpfs is refused inside an unprivileged
        // user's namespace (the suite also runs as a user, not root).
        (Confinement::Tmpfs, true) => (
            format!("mount -t tmpfs -o size=200m none '{d}' && {prepare} && mount -o remount,ro,bind '{d}'"),
            String::new(),
        ),
        // 40960 blocks: 20 MiB where a block is 512 bytes (POSIX), 40 MiB where it is 1 KiB
        // (bash): smaller than any weights file written here either way.
        (Confinement::Limits, false) => (prepare.to_owned(), "ulimit -f 40960; trap '' XFSZ;".to_owned()),
        (Confinement::Limits, true) => (format!("{prepare} && chmod -R a-w '{d}'"), String::new()),
    };
    let script = format!(
        "set -e; mkdir -p '{d}'; {setup}; set +e; ({limit} exec \"$@\") >\"$OUT\" 2>\"$ERR\"; echo \"exit=$?\"; ls -A '{d}'; chmod -R u+w '{d}' 2>/dev/null; true"
    );
    let tmp = tempfile::tempdir().unwrap();
    let (out_file, err_file) = (tmp.path().join("out"), tmp.path().join("err"));
    let mut cmd = if confinement() == Confinement::Tmpfs {
        let mut c = Command::new("unshare");
        c.args(["-rm", "sh", "-c", &script, "sh"]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &script, "sh"]);
        c
    };
    cmd.arg(binary("mlx-serve"))
        .args(args)
        .env("OUT", &out_file)
        .env("ERR", &err_file)
        .env("MLX_SERVE_HOME", home)
        .env("MLX_SERVE_WORKER_BIN", binary("mlx-serve-worker"))
        .env("HF_ENDPOINT", hub.endpoint())
        .env("HF_HOME", home.join("hf"))
        .env_remove("MLX_SERVE_CONFIG")
        .env_remove("HF_TOKEN");
    let shell = mlx_serve_tests::cli::run(cmd, Duration::from_secs(180));
    let mut lines = shell.stdout.lines();
    let code = lines.find_map(|l| l.strip_prefix("exit=")).unwrap_or_else(|| panic!("{}", shell.text())).parse().ok();
    let listing: Vec<String> = lines.map(str::to_owned).filter(|n| n != ".locks").collect();
    let out = Output {
        code,
        stdout: std::fs::read_to_string(out_file).unwrap_or_default(),
        stderr: std::fs::read_to_string(err_file).unwrap_or_default(),
    };
    (out, listing)
}

/// The error line says the disk is full (or, with [`Confinement::Limits`], that the file
/// size limit was reached), in one line.
fn says_full(out: &Output) {
    assert!(!out.ok(), "{}", out.text());
    error_line(out);
    let full =
        out.stderr.contains("the disk is full") || out.stderr.contains("the disk holding the model store is full");
    let limit = confinement() == Confinement::Limits && out.stderr.contains("file size limit");
    assert!(full || limit, "{}", out.text());
}

#[test]
fn a_full_disk_during_a_pull_leaves_nothing_and_says_so() {
    let hub = minilm_hub();
    let home = tempfile::tempdir().unwrap();
    let models = home.path().join("models");

    // The store's disk is too small for the 91 MB weights (the download cache is not).
    let (out, listing) = confined(&hub, home.path(), &models, 40, false, "true", &["pull", "acme/mini"]);
    says_full(&out);
    if confinement() == Confinement::Tmpfs {
        assert!(out.stderr.contains("cannot store model.safetensors"), "{}", out.text());
    }
    assert!(listing.is_empty(), "left in the store: {listing:?}");

    // The download cache's disk is too small: the store is left empty too.
    let hf = home.path().join("hf");
    let (out, _) = confined(&hub, home.path(), &hf, 40, false, "true", &["pull", "acme/mini"]);
    says_full(&out);
    assert!(out.stderr.contains("downloading model.safetensors into the Hugging Face cache"), "{}", out.text());
    assert!(entries(&models).is_empty(), "{:?}", entries(&models));

    // With room, the same pull works.
    let out = hub.mlx_serve(home.path(), &["pull", "acme/mini"], &[]);
    assert!(out.ok(), "{}", out.text());
}

#[test]
fn a_full_disk_during_quantize_leaves_nothing_and_says_so() {
    let hub = minilm_hub();
    let home = tempfile::tempdir().unwrap();
    let models = home.path().join("models");
    // Room for MiniLM (91 MB) but not for its 8-bit copy (25 MB) beside it. `-L`: the
    // fixture folder may be a link to a shared download, and a copied link takes no room.
    let copy_in = format!("cp -rL '{}' '{}/minilm'", minilm_dir().unwrap().display(), models.display());
    let (out, listing) =
        confined(&hub, home.path(), &models, 100, false, &copy_in, &["quantize", "minilm", "--bits", "8"]);
    says_full(&out);
    assert_eq!(listing, vec!["minilm"], "a partial quantization was left");

    // The same, when a pull quantizes on the way in.
    // Room for the download (91 MB), not for the quantized copy beside it.
    let (out, listing) =
        confined(&hub, home.path(), &models, 100, false, "true", &["pull", "acme/mini", "--quantize", "8bit"]);
    says_full(&out);
    assert!(listing.is_empty(), "left in the store: {listing:?}");
}

#[test]
fn an_unwritable_store_refuses_pull_and_quantize_clearly() {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if confinement() == Confinement::Limits && root {
        panic!("no way to make a read-only folder here: root ignores permissions and tmpfs mounts are not allowed");
    }
    let hub = minilm_hub();
    let home = tempfile::tempdir().unwrap();
    let models = home.path().join("models");
    let copy_in = format!("cp -rL '{}' '{}/minilm'", minilm_dir().unwrap().display(), models.display());
    let (out, listing) = confined(&hub, home.path(), &models, 0, true, &copy_in, &["pull", "acme/mini"]);
    assert!(!out.ok(), "{}", out.text());
    error_line(&out);
    assert!(out.stderr.contains("read-only") || out.stderr.contains("no permission to write"), "{}", out.text());
    assert_eq!(listing, vec!["minilm"]);
    let (out, listing) =
        confined(&hub, home.path(), &models, 0, true, &copy_in, &["quantize", "minilm", "--bits", "8"]);
    assert!(!out.ok(), "{}", out.text());
    assert!(out.stderr.contains("read-only") || out.stderr.contains("no permission to write"), "{}", out.text());
    assert_eq!(listing, vec!["minilm"]);
}

#[test]
fn transient_hub_failures_are_retried_with_back_off_and_bounded() {
    let hub = minilm_hub();
    let home = tempfile::tempdir().unwrap();
    // Every kind of request fails for a moment: the file list, a small file, the weights
    // on the CDN (429 with Retry-After), and the model search.
    hub.fail_next("/api/models/acme/mini/revision/main", 503, 2, None);
    hub.fail_next("/acme/mini/resolve/main/config.json", 500, 1, None);
    hub.fail_next("/cdn/", 429, 1, Some(1));
    let started = Instant::now();
    let out = hub.mlx_serve(home.path(), &["pull", "acme/mini"], &[]);
    assert!(out.ok(), "{}", out.text());
    let took = started.elapsed();
    let count = |p: &str| hub.requests().iter().filter(|r| r.starts_with(p)).count();
    assert_eq!(count("/api/models/acme/mini/revision/main"), 3, "{:?}", hub.requests());
    // Waited 0.5 s and 1 s for the file list, 0.5 s for config.json, 0.5 s for the CDN.
    assert!(took >= Duration::from_millis(2500), "{took:?}");
    assert_eq!(std::fs::read(home.path().join("models/mini/model.safetensors")).unwrap(), weights());

    hub.add_repo("acme/searched", folder_files(&minilm_dir().unwrap()));
    hub.fail_next("/api/models", 502, 1, None);
    let out = hub.mlx_serve(home.path(), &["pull", "searched"], &[]);
    assert!(out.ok(), "{}", out.text());
    assert_eq!(hub.searches().len(), 2, "{:?}", hub.searches());

    // Bounded: a hub that keeps failing is given up on after four attempts…
    hub.clear_requests();
    hub.fail_next("/api/models/acme/other/revision", 503, 100, None);
    hub.add_repo("acme/other", folder_files(&minilm_dir().unwrap()));
    let out = hub.mlx_serve(home.path(), &["pull", "acme/other"], &[]);
    assert!(!out.ok());
    assert!(out.stderr.contains("HTTP 503; tried 4 times"), "{}", out.text());
    assert_eq!(count("/api/models/acme/other/revision"), 4);
    // …and one that asks for a long wait is not waited for.
    hub.clear_requests();
    hub.fail_next("/api/models/acme/mini/revision", 429, 1, Some(120));
    let out = hub.mlx_serve(home.path(), &["pull", "acme/mini"], &[]);
    assert!(!out.ok());
    assert!(out.stderr.contains("tried once") && out.stderr.contains("asks to wait 120 s"), "{}", out.text());
    assert!(entries(&home.path().join("models")).iter().all(|e| !e.starts_with(".partial")));
}
