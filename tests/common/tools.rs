//! Tools the suite needs from the machine (HAProxy, Prometheus, Kustomize, systemd's
//! checker, a Python package, the right to give a folder to another user), and the one
//! switch that lets a run go without some of them.
//!
//! A missing tool fails the test that needs it. `MLX_SERVE_TEST_ALLOW_MISSING` lists, by
//! the names below, the tools a run may lack (`haproxy,kustomize` on a Mac, where Debian's
//! packages are not); a test that finds one of those missing returns early and writes a
//! [`SKIP_MARKER`] line, which `scripts/test` collects into its summary. The line goes to
//! the process's stderr directly, not through `eprintln!`, which libtest captures and
//! shows only for failed tests.
//!
//! Names: `haproxy`, `prometheus`, `kustomize` (`kubectl kustomize` or `kustomize`),
//! `systemd-analyze`, `cohere` (the Python package), `chown` (making a folder another
//! user's: root, or `sudo -n`), `chromium` (Debian's browser with nodejs and
//! tests/browser's `npm ci`).

use std::io::Write;

/// The environment variable: a comma-separated list of tool names.
pub const ALLOW_MISSING: &str = "MLX_SERVE_TEST_ALLOW_MISSING";

/// How a skip is reported: `SKIP_MARKER <binary>::<test>: <tool> is missing (<what>)`.
pub const SKIP_MARKER: &str = "mlx-serve-test-skipped:";

/// Whether `MLX_SERVE_TEST_ALLOW_MISSING` names `tool`.
pub fn allowed_missing(tool: &str) -> bool {
    std::env::var(ALLOW_MISSING).is_ok_and(|list| list.split(',').any(|t| t.trim() == tool))
}

/// The running test as `binary::test` (libtest names each test's thread after it).
fn test_name() -> String {
    let binary = std::env::args()
        .next()
        .and_then(|a| std::path::Path::new(&a).file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    // Cargo names test binaries `<name>-<hash>`.
    let binary = binary.rsplit_once('-').map_or(binary.as_str(), |(name, _)| name).to_owned();
    let test = std::thread::current().name().unwrap_or("?").to_owned();
    format!("{binary}::{test}")
}

/// `tool` is missing; `what` says what it is and where it comes from. Panics (the test
/// fails) unless `MLX_SERVE_TEST_ALLOW_MISSING` names `tool`; then writes the skip line,
/// and the caller returns.
pub fn missing_tool(tool: &str, what: &str) {
    assert!(
        allowed_missing(tool),
        "{tool} is missing: {what}. Install it (scripts/setup does where it can), or set \
         {ALLOW_MISSING}={tool} to skip the tests that need it (listed as skipped)"
    );
    let line = format!("\n{SKIP_MARKER} {}: {tool} is missing ({what})\n", test_name());
    let _ = std::io::stderr().write_all(line.as_bytes());
}
