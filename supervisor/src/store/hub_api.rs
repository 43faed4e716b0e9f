//! Talking to the Hugging Face Hub: where it is, who we are, what its refusals mean, and
//! which failures are worth another try.
//!
//! - Where and who follow the Hugging Face conventions: `HF_ENDPOINT` (a mirror),
//!   `HF_TOKEN`, else the token file in `$HF_HOME` (what `huggingface-cli login` writes).
//! - 401 and 403 are a gated or private repo ([`StoreError::Denied`], with what to do about
//!   it), 404 an unknown one (or an unknown revision: `pull/hub.rs`). The Hub says which in
//!   its `X-Error-Code` header (`GatedRepo`, `RepoNotFound`, `RevisionNotFound`,
//!   `EntryNotFound`; huggingface_hub `utils/_http.py`,
//!   `hf_raise_for_status`); without a token the Hub answers 401 for a repo it will not
//!   show, so 401 without a code names both possibilities.
//! - 5xx (except 501) and 429 are transient: retried [`ATTEMPTS`] times in all, waiting
//!   0.5 s, 1 s, 2 s (or the `Retry-After` the Hub sent, when it is at most
//!   [`MAX_RETRY_AFTER`]); anything else fails at once.

use std::time::Duration;

use hf_hub::api::tokio::{Api, ApiBuilder};

use super::StoreError;

/// Requests made for one thing before giving up on a transient failure.
pub const ATTEMPTS: u32 = 4;
const FIRST_WAIT: Duration = Duration::from_millis(500);
/// A `Retry-After` longer than this is not waited for: the error says when to try again.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// `HF_ENDPOINT`, default `https://huggingface.co`.
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .map(|e| e.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| "https://huggingface.co".into())
}

/// [`endpoint`] as messages and logs name it: without credentials (`redact.rs`).
pub fn shown_endpoint() -> String {
    super::redact::redact(&endpoint())
}

/// `HF_TOKEN`, else the token file in `$HF_HOME` (hf-hub 0.4 reads only the file).
pub fn token() -> Option<String> {
    std::env::var("HF_TOKEN")
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .or_else(|| hf_hub::Cache::from_env().token())
}

/// An hf-hub client for the endpoint, cache and token above. Its reqwest client sends the
/// token on every request.
pub fn api() -> Result<Api, StoreError> {
    ApiBuilder::from_env()
        .with_endpoint(endpoint())
        .with_progress(false)
        .with_token(token())
        .build()
        .map_err(|e| StoreError::Failed(format!("cannot set up the Hugging Face client: {e}")))
}

/// Whether an HTTP status is worth another try.
pub fn transient(status: u16) -> bool {
    status == 429 || (status >= 500 && status != 501)
}

/// How long to wait before attempt `attempt + 1` (`attempt` counts from 1): doubling from
/// 0.5 s, or the Hub's `Retry-After`. `None`: do not retry (attempts used up, or the Hub
/// asks for a longer wait than [`MAX_RETRY_AFTER`]).
pub fn wait_before_retry(attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
    if attempt >= ATTEMPTS {
        return None;
    }
    match retry_after {
        Some(d) if d > MAX_RETRY_AFTER => None,
        Some(d) => Some(d),
        None => Some(FIRST_WAIT * 2u32.pow(attempt - 1)),
    }
}

/// Seconds of a `Retry-After: N` header (the HTTP-date form is not used by the Hub).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

/// A GET through `api`'s client (so with the token), retried on transient failures.
/// `Ok` is any answer that is not a transient failure (the caller reads its status);
/// the error says what was tried and how often.
pub async fn get(api: &Api, url: &str, query: &[(&str, &str)], what: &str) -> Result<reqwest::Response, StoreError> {
    let mut attempt = 1;
    loop {
        let sent = api.client().get(url).query(query).send().await;
        let (problem, after) = match sent {
            Ok(resp) if !transient(resp.status().as_u16()) => return Ok(resp),
            Ok(resp) => (format!("HTTP {}", resp.status().as_u16()), retry_after(resp.headers())),
            Err(e) if e.is_connect() || e.is_timeout() => (error_chain(&e), None),
            Err(e) => {
                return Err(StoreError::Failed(format!("{what} from {} failed: {}", shown_endpoint(), error_chain(&e))))
            }
        };
        match wait_before_retry(attempt, after) {
            Some(wait) => {
                tracing::warn!(attempt, "{what}: {problem}; trying again in {:.1}s", wait.as_secs_f64());
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            None => return Err(gave_up(what, attempt, &problem, after)),
        }
    }
}

/// The error after the last attempt.
pub fn gave_up(what: &str, attempts: u32, problem: &str, retry_after: Option<Duration>) -> StoreError {
    let when = match retry_after {
        Some(d) if d > MAX_RETRY_AFTER => format!("; the Hub asks to wait {} s before trying again", d.as_secs()),
        _ => String::new(),
    };
    let tries = if attempts == 1 { "once".to_owned() } else { format!("{attempts} times") };
    StoreError::Failed(format!("{what} from {} failed ({problem}; tried {tries}){when}", shown_endpoint()))
}

/// The error for a refusal (4xx) of a request about `repo`. `code` is the Hub's
/// `X-Error-Code` header, when it sent one.
pub fn refusal(status: u16, code: Option<&str>, repo: &str, what: &str) -> StoreError {
    let endpoint = shown_endpoint();
    let page = format!("{endpoint}/{repo}");
    let token_hint = format!(
        "set HF_TOKEN to a read token from {endpoint}/settings/tokens of an account that has access \
         (for a gated repo, accept its conditions at {page} first)"
    );
    let not_found = || {
        StoreError::NotFound(format!(
            "{what}: {repo} was not found on {endpoint} (HTTP {status}); check the name, or for a private repo {token_hint}"
        ))
    };
    match status {
        404 => not_found(),
        401 if code == Some("RepoNotFound") => not_found(),
        401 if code == Some("GatedRepo") || token().is_none() => StoreError::Denied(format!(
            "{what}: {repo} on {endpoint} is gated or private and needs a token (HTTP 401); {token_hint}"
        )),
        401 => StoreError::Denied(format!(
            "{what}: {endpoint} did not accept the token in HF_TOKEN for {repo} (HTTP 401); {token_hint}"
        )),
        403 => StoreError::Denied(format!(
            "{what}: the account of the Hugging Face token has no access to {repo} (HTTP 403); \
             accept its conditions at {page} with that account, or set HF_TOKEN to a token of an account that has access"
        )),
        _ => StoreError::Failed(format!("{what}: {endpoint} answered HTTP {status} for {repo}")),
    }
}

/// An error's message with its causes (reqwest's own hides them: "error sending request"),
/// URLs without credentials (an HTTP client's error names the URL it requested).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_msg = s.to_string();
        if !msg.contains(&s_msg) {
            msg.push_str(": ");
            msg.push_str(&s_msg);
        }
        source = s.source();
    }
    super::redact::redact(&msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_back_off_and_stop() {
        assert!(transient(503) && transient(500) && transient(429) && transient(502));
        assert!(!transient(501) && !transient(404) && !transient(401) && !transient(200));
        let waits: Vec<_> = (1..=ATTEMPTS).map(|a| wait_before_retry(a, None)).collect();
        assert_eq!(
            waits,
            vec![Some(Duration::from_millis(500)), Some(Duration::from_secs(1)), Some(Duration::from_secs(2)), None]
        );
        assert_eq!(wait_before_retry(1, Some(Duration::from_secs(3))), Some(Duration::from_secs(3)));
        assert_eq!(wait_before_retry(1, Some(Duration::from_secs(60))), None);
        let e = gave_up("searching", 1, "HTTP 429", Some(Duration::from_secs(60))).to_string();
        assert!(e.contains("tried once") && e.contains("wait 60 s"), "{e}");
    }
}
