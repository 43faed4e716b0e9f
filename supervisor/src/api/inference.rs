//! The work behind every API shape: resolve the model, validate and tokenize the inputs,
//! submit them to the model's runner, await the answer. Text embeddings look in the
//! embedding cache first (`runner/vector_cache.rs`): found vectors skip tokenization and
//! the worker, and computed ones are stored. An over-long text may be chunked instead of
//! truncated (`chunking.rs`): its windows go to the runner as inputs of their own, and
//! their rows are pooled back to the text's one vector.

use std::sync::Arc;
use std::time::Duration;

use mlx_serve_protocol::model_dir::{Pooling, Route};
use mlx_serve_protocol::{torch_heads, ModelKind, TokenOutputs};

use super::chunking::{self, ChunkingRequest};
use super::inference_free;
use super::pylate;
use super::pylate_pool::{self, TokenPooling};
use super::{ApiError, AppState};
use crate::runner::cpu_gate::{self, CpuGate};
use crate::runner::vector_cache::{self, Cached, Key, VectorCache};
use crate::runner::{JobClass, JobError, JobOutput, JobTicket, ModelEntry, RunnerHandle, TokenRows};
use crate::tokenize::{LongInput, TokenizeError, Tokens};

/// Inputs of an embeddings request.
pub enum Inputs {
    Texts(Vec<String>),
    /// Token ids taken as the complete model input (as `/v1/tokenize` returns them).
    Ids(Vec<Vec<i64>>),
}

impl Inputs {
    pub fn len(&self) -> usize {
        match self {
            Inputs::Texts(t) => t.len(),
            Inputs::Ids(i) => i.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct Embedded {
    pub entry: Arc<ModelEntry>,
    pub dim: usize,
    /// `n × dim` row-major.
    pub data: Vec<f32>,
    pub tokens: usize,
    /// Per-token outputs, when `EmbedOptions::outputs` asked for any.
    pub token_rows: Option<TokenRows>,
    /// Per input, the windows its vector was pooled from, when chunking was on.
    pub chunks: Option<Vec<u32>>,
}

pub struct Scored {
    pub entry: Arc<ModelEntry>,
    pub scores: Vec<f32>,
    pub tokens: usize,
}

/// Where a tokenization runs (`off_thread`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Tokenizing {
    /// A few microseconds: on the async thread.
    Inline,
    /// Milliseconds: on a blocking thread.
    OffThread,
    /// Milliseconds of bulk work (a priority worse than `scheduling.default_priority`): on
    /// a blocking thread, taking turns with CPU workers' forwards (`runner/cpu_gate.rs`).
    Yielding,
}

impl Tokenizing {
    pub fn of(state: &AppState, heavy: bool, class: JobClass) -> Tokenizing {
        match heavy {
            false => Tokenizing::Inline,
            true if class.priority > state.config.scheduling.default_priority => Tokenizing::Yielding,
            true => Tokenizing::OffThread,
        }
    }
}

/// Runs tokenization off the async threads when it is more than a few microseconds, at
/// most one such job per core at a time: it is CPU-bound, and each job holds up to a
/// batch of encodings (`tokenize.rs`), so this bounds the tokenizer's memory too.
pub(super) async fn off_thread<T: Send + 'static>(
    how: Tokenizing,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    // Every caller tokenizes here: the request's trace gets a `tokenize` span (with the
    // wait for a tokenizer thread in it).
    let span = crate::telemetry::enabled().then(|| {
        tracing::info_span!(target: "mlx_serve::trace", "tokenize", mlx.tokenize.off_thread = how != Tokenizing::Inline)
    });
    match span {
        Some(span) => {
            let inner = span.clone();
            tracing::Instrument::instrument(tokenize_off_thread(how, move || inner.in_scope(f)), span).await
        }
        None => tokenize_off_thread(how, f).await,
    }
}

async fn tokenize_off_thread<T: Send + 'static>(
    how: Tokenizing,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    if how != Tokenizing::Inline {
        let slots = SLOTS.get_or_init(|| {
            tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
        });
        let _slot = slots.acquire().await.map_err(|_| ApiError::unavailable("server is shutting down", 1))?;
        // Bulk tokenization waits for CPU workers' forwards to pause: beside one, both
        // are slowed, and the queries behind it with them.
        let _gate = match how {
            Tokenizing::Yielding => Some(CpuGate::global().hold(cpu_gate::DRAIN_WAIT).await),
            _ => None,
        };
        tokio::task::spawn_blocking(f).await.map_err(|e| {
            // A panic inside the tokenizer: its message (files, lines) stays in the log.
            tracing::error!("tokenizer task failed: {e}");
            ApiError::internal("tokenization failed (the server log has the details)")
        })
    } else {
        Ok(f())
    }
}

pub(super) fn check_request_tokens(state: &AppState, seqs: &[Tokens]) -> Result<usize, ApiError> {
    let total: usize = seqs.iter().map(|s| s.ids.len()).sum();
    within_token_limit(total, state.config.limits.max_tokens_per_request)
}

/// A request's `total` tokens, or a 413 past `limits.max_tokens_per_request` (`limit`).
fn within_token_limit(total: usize, limit: usize) -> Result<usize, ApiError> {
    if total > limit {
        return Err(ApiError::too_large(format!(
            "request has {total} tokens after truncation, more than limits.max_tokens_per_request ({limit})"
        )));
    }
    Ok(total)
}

async fn run(
    state: &AppState,
    entry: &ModelEntry,
    seqs: Vec<Tokens>,
    outputs: TokenOutputs,
) -> Result<JobOutput, ApiError> {
    run_as(state, entry, seqs, outputs, Submit::now(super::priority::current())).await
}

/// How a job is queued: its class, and whether a full queue is waited out.
#[derive(Clone, Copy)]
pub(super) struct Submit {
    pub class: JobClass,
    /// Wait (up to `limits.request_timeout_seconds`) while the model's queue is full
    /// instead of answering 429: a streamed request's later pieces, whose 200 has started.
    pub patient: bool,
}

impl Submit {
    pub fn now(class: JobClass) -> Submit {
        Submit { class, patient: false }
    }
}

pub(super) async fn run_as(
    state: &AppState,
    entry: &ModelEntry,
    seqs: Vec<Tokens>,
    outputs: TokenOutputs,
    how: Submit,
) -> Result<JobOutput, ApiError> {
    if !how.patient {
        return run_submitted(state, entry, |r| r.submit_as(seqs, how.class, outputs)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(state.config.limits.request_timeout_seconds);
    let ticket = loop {
        match entry.runner.submit_as(seqs.clone(), how.class, outputs) {
            Err(JobError::Overloaded { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => break other,
        }
    };
    run_submitted(state, entry, move |_| ticket).await
}

/// Submits a job with `submit` and awaits its answer within `limits.request_timeout_seconds`.
pub(super) async fn run_submitted(
    state: &AppState,
    entry: &ModelEntry,
    submit: impl FnOnce(&RunnerHandle) -> Result<JobTicket, JobError>,
) -> Result<JobOutput, ApiError> {
    let result = run_job(state, entry, submit).await;
    match result {
        // Its worker stopped or failed to load because the model was deleted meanwhile: as
        // if the request had come a moment later.
        Err(e) if e.status.is_server_error() && state.pool.store().find(&entry.name).is_none() => {
            Err(ApiError::model_not_found(&entry.name))
        }
        other => other,
    }
}

async fn run_job(
    state: &AppState,
    entry: &ModelEntry,
    submit: impl FnOnce(&RunnerHandle) -> Result<JobTicket, JobError>,
) -> Result<JobOutput, ApiError> {
    let rx = submit(&entry.runner)?;
    let timeout = Duration::from_secs(state.config.limits.request_timeout_seconds);
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(result)) => Ok(result?),
        Ok(Err(_)) => Err(ApiError::unavailable("the model runner stopped (server shutting down?)", 1)),
        Err(_) => Err(ApiError::timeout(format!(
            "model `{}` did not answer within limits.request_timeout_seconds ({}s)",
            entry.name,
            timeout.as_secs()
        ))),
    }
}

/// How texts are turned into model input, beyond the texts themselves.
#[derive(Debug, Clone, Default)]
pub struct EmbedOptions {
    /// `Some(false)`: an over-long input is an error; `None`: `limits.truncate`.
    pub truncate: Option<bool>,
    /// Extension: a query instruction (Qwen3-Embedding formats it as its model card says;
    /// other models get it as a plain prefix).
    pub instruction: Option<String>,
    /// One of the model's named prompts (`config_sentence_transformers.json`).
    pub prompt_name: Option<String>,
    /// A raw prefix, as sentence-transformers' `encode(prompt=...)`.
    pub prompt: Option<String>,
    /// Per-token outputs wanted besides the rows (bge-m3's sparse and ColBERT heads).
    pub outputs: TokenOutputs,
    /// Extension: chunk over-long inputs (`chunking.rs`); `None`: `truncate`, then
    /// `models.chunking`.
    pub chunking: Option<ChunkingRequest>,
    /// Extension: queries or documents, for a PyLate ColBERT model (`pylate.rs`) or an
    /// inference-free sparse encoder (`inference_free.rs`).
    pub is_query: Option<bool>,
    /// Extension: PyLate's token pooling of a PyLate model's document vectors
    /// (`pylate_pool.rs`).
    pub pool: Option<TokenPooling>,
}

/// Refuses per-token outputs the model has no head for, naming the head (`param` is the
/// request field that asked).
pub fn check_token_outputs(entry: &ModelEntry, outputs: TokenOutputs, param: &str) -> Result<(), ApiError> {
    if entry.facts.pooling == Pooling::Splade {
        return check_splade_outputs(entry, outputs, param);
    }
    if pylate::is_colbert(entry) {
        return pylate::check_outputs(entry, outputs, param);
    }
    for (wanted, stem, what) in [
        (outputs.sparse, "sparse_linear", "sparse (lexical) weights"),
        (outputs.colbert, "colbert_linear", "multi-vector (ColBERT) token embeddings"),
    ] {
        if wanted && torch_heads::head_file(&entry.dir, stem).is_none() {
            return Err(ApiError::unsupported_output(
                param,
                format!(
                    "model `{}` has no {stem} head, so it cannot give {what}; bge-m3 (BAAI/bge-m3) has one",
                    entry.name
                ),
            ));
        }
    }
    Ok(())
}

/// A SPLADE model gives sparse weights only: a request for its dense vector (any route
/// but the sparse ones) or for ColBERT vectors is refused, naming what it does give.
fn check_splade_outputs(entry: &ModelEntry, outputs: TokenOutputs, param: &str) -> Result<(), ApiError> {
    let what = if outputs.colbert {
        "multi-vector (ColBERT) token embeddings"
    } else if !outputs.sparse {
        "a dense embedding"
    } else {
        return Ok(());
    };
    Err(ApiError::unsupported_output(
        param,
        format!(
            "model `{}` is a SPLADE sparse encoder: it gives sparse (lexical) weights only, not {what}; \
             ask for them with POST /embed_sparse or `\"return_sparse\": true` on /v1/embeddings",
            entry.name
        ),
    ))
}

pub fn prompted_texts(entry: &ModelEntry, texts: Vec<String>, opts: &EmbedOptions) -> Result<Vec<String>, ApiError> {
    prompted(entry, texts, opts, true)
}

/// [`prompted_texts`]; `cut: false` keeps each text whole (chunking reads all of it).
fn prompted(entry: &ModelEntry, texts: Vec<String>, opts: &EmbedOptions, cut: bool) -> Result<Vec<String>, ApiError> {
    let head = |t: &'_ str| -> Result<String, ApiError> {
        entry.tokenizer.head(t).map(str::to_owned).map_err(|e| ApiError::tokenize(e, "input"))
    };
    let text = |t: &'_ str| -> Result<String, ApiError> {
        if cut {
            head(t)
        } else {
            Ok(t.to_owned())
        }
    };
    if let Some(task) = &opts.instruction {
        if opts.prompt.is_some() || opts.prompt_name.is_some() {
            return Err(ApiError::invalid_param(
                "instruction",
                "send either `instruction` or `prompt`/`prompt_name`, not both",
            ));
        }
        let task = head(task)?;
        return texts
            .iter()
            .map(|t| {
                let t = text(t)?;
                Ok(entry.facts.family.instructed(&task, &t))
            })
            .collect();
    }
    let param = if opts.prompt.is_some() { "prompt" } else { "prompt_name" };
    let prefix = entry
        .tokenizer
        .prompts
        .select(opts.prompt_name.as_deref(), opts.prompt.as_deref())
        .map_err(|e| ApiError::invalid_param(param, e.to_string()).with_code("invalid_prompt"))?;
    match prefix {
        Some(p) => {
            let p = head(&p)?;
            texts.iter().map(|t| Ok(format!("{p}{}", text(t)?))).collect()
        }
        None => Ok(texts),
    }
}

/// The 400 for token-id input on a server that refuses it (`limits.accept_token_ids:
/// false`). LangChain's `OpenAIEmbeddings` sends tiktoken ids unless told otherwise.
pub fn token_ids_refused() -> ApiError {
    ApiError::invalid_param(
        "input",
        "this server refuses token-id input (limits.accept_token_ids: false): ids from another tokenizer \
         embed to meaningless vectors. Send text. LangChain's OpenAIEmbeddings sends tiktoken ids by default; \
         construct it with check_embedding_ctx_length=False",
    )
    .with_code("token_ids_refused")
}

/// Embeds texts or token-id lists with `model`.
pub async fn embed(state: &AppState, model: &str, inputs: Inputs, opts: EmbedOptions) -> Result<Embedded, ApiError> {
    let pool = opts.pool.filter(TokenPooling::pools);
    let out = embed_unpooled(state, model, inputs, opts).await?;
    match pool {
        Some(pool) => pool_tokens(out, pool).await,
        None => Ok(out),
    }
}

/// PyLate's token pooling of each input's token vectors (`prepare` checked the request).
async fn pool_tokens(mut out: Embedded, pool: TokenPooling) -> Result<Embedded, ApiError> {
    let rows = out.token_rows.as_mut().ok_or_else(|| ApiError::internal("the worker returned no token vectors"))?;
    let docs = std::mem::take(&mut rows.colbert);
    rows.colbert = pylate_pool::pool_documents(docs, rows.colbert_dim, pool).await?;
    Ok(out)
}

async fn embed_unpooled(
    state: &AppState,
    model: &str,
    inputs: Inputs,
    opts: EmbedOptions,
) -> Result<Embedded, ApiError> {
    let (entry, long) = prepare(state, model, &inputs, &opts).await?;
    check_input_count(state, inputs.len())?;
    if inference_free::route(&entry, opts.is_query)? == Some(Route::Query) {
        let Inputs::Texts(texts) = inputs else { return Err(ApiError::internal("query ids passed prepare")) };
        return encode_queries(state, entry, texts, long).await;
    }
    let outputs = opts.outputs;
    let truncate = long != LongInput::Refuse;
    let seqs = match inputs {
        Inputs::Texts(texts) => {
            let heavy = heavy_texts(&texts, &opts);
            let model = entry.clone();
            // Per-token outputs are not cached: such a request computes every input.
            let vectors = (!outputs.any()).then(|| state.pool.vectors().clone());
            let max_tokens = state.config.limits.max_tokens_per_request;
            let how = Tokenizing::of(state, heavy, super::priority::current());
            let cached = off_thread(how, move || {
                cached_then_tokenized(&model, vectors.as_deref(), texts, &opts, long, max_tokens, 0)
            })
            .await??;
            check_cached_totals(state, &cached, long)?;
            let class = Submit::now(super::priority::current());
            return compute_cached(state, entry, cached, outputs, long, class).await;
        }
        Inputs::Ids(lists) => ids_to_tokens(&entry, lists, 0, truncate)?,
    };
    let tokens = check_request_tokens(state, &seqs)?;
    match run(state, &entry, seqs, outputs).await? {
        JobOutput::Rows { dim, data } => Ok(Embedded { entry, dim, data, tokens, token_rows: None, chunks: None }),
        JobOutput::Tokens(rows) => {
            Ok(Embedded { entry, dim: rows.dim, data: rows.data.clone(), tokens, token_rows: Some(rows), chunks: None })
        }
        JobOutput::Scores(_) => Err(ApiError::internal("worker returned scores for an embedding request")),
    }
}

/// An inference-free sparse encoder's queries (`inference_free.rs`): a token lookup here,
/// answered like the worker's sparse outputs.
async fn encode_queries(
    state: &AppState,
    entry: Arc<ModelEntry>,
    texts: Vec<String>,
    long: LongInput,
) -> Result<Embedded, ApiError> {
    let heavy = heavy_texts(&texts, &EmbedOptions::default());
    let model = entry.clone();
    let truncate = long != LongInput::Refuse;
    let how = Tokenizing::of(state, heavy, super::priority::current());
    let out = off_thread(how, move || inference_free::query_weights(&model, &texts, truncate)).await??;
    within_token_limit(out.tokens, state.config.limits.max_tokens_per_request)?;
    let rows = TokenRows { dim: 0, data: Vec::new(), sparse: out.sparse, colbert_dim: 0, colbert: Vec::new() };
    Ok(Embedded { entry, dim: 0, data: Vec::new(), tokens: out.tokens, token_rows: Some(rows), chunks: None })
}

/// Whether tokenizing `texts` is worth a tokenizer thread ([`off_thread`]).
pub(super) fn heavy_texts(texts: &[String], opts: &EmbedOptions) -> bool {
    texts.iter().map(String::len).sum::<usize>()
        + opts.instruction.as_ref().or(opts.prompt.as_ref()).map_or(0, String::len)
        > 8192
}

/// Everything checked of an embeddings request before its inputs are tokenized: the model,
/// the options against it, empty inputs, and what is done to an over-long input. Cheap:
/// a streamed request (`pieces.rs`) runs it over all its inputs before its 200 starts.
pub(super) async fn prepare(
    state: &AppState,
    model: &str,
    inputs: &Inputs,
    opts: &EmbedOptions,
) -> Result<(Arc<ModelEntry>, LongInput), ApiError> {
    if matches!(inputs, Inputs::Ids(_)) && !state.config.limits.accept_token_ids {
        return Err(token_ids_refused());
    }
    let entry = state.resolver().entry(model, Some(ModelKind::Embedding)).await?;
    if inputs.is_empty() {
        return Err(ApiError::invalid_param("input", "`input` must not be empty"));
    }
    let outputs = opts.outputs;
    pylate_pool::check(&entry, opts.is_query, opts.pool)?;
    check_token_outputs(&entry, outputs, "model")?;
    pylate::check_is_query(&entry, opts.is_query)?;
    if inference_free::route(&entry, opts.is_query)? == Some(Route::Query) {
        let prompted = [
            ("instruction", opts.instruction.is_some()),
            ("prompt", opts.prompt.is_some()),
            ("prompt_name", opts.prompt_name.is_some()),
        ];
        let prompted = prompted.iter().find(|(_, set)| *set).map(|(p, _)| *p);
        inference_free::check_query_options(&entry, matches!(inputs, Inputs::Ids(_)), prompted)?;
    }
    if pylate::is_colbert(&entry) {
        let other = [
            ("input", matches!(inputs, Inputs::Ids(_))),
            ("instruction", opts.instruction.is_some()),
            ("prompt", opts.prompt.is_some()),
            ("prompt_name", opts.prompt_name.is_some()),
        ];
        if let Some((param, _)) = other.iter().find(|(_, set)| *set) {
            let what = if *param == "input" { "token-id input" } else { param };
            return Err(ApiError::invalid_param(
                param,
                format!(
                    "model `{}` is a PyLate ColBERT model: {what} is not served (its texts get PyLate's query or \
                     document markers)",
                    entry.name
                ),
            ));
        }
    }
    let can_chunk = match (inputs, outputs.any()) {
        (Inputs::Ids(_), _) => Err("token-id input (ids are the complete model input; send text)"),
        (_, true) => {
            Err("per-token outputs (return_sparse, return_colbert_vecs): a window's tokens are not the text's")
        }
        _ => Ok(()),
    };
    let long =
        chunking::long_input(&state.config, &entry.name, &entry.tokenizer, opts.chunking, opts.truncate, can_chunk)?;
    match inputs {
        Inputs::Texts(texts) => {
            if let Some(i) = texts.iter().position(|t| t.is_empty()) {
                return Err(ApiError::invalid_param("input", format!("input {i} is an empty string")));
            }
        }
        Inputs::Ids(_) => {
            if opts.instruction.is_some() || opts.prompt.is_some() || opts.prompt_name.is_some() {
                return Err(ApiError::invalid_param(
                    "input",
                    "a prompt or instruction applies to text input; token ids are the complete model input",
                ));
            }
        }
    }
    Ok((entry, long))
}

/// Token-id lists as model input, checked against the model's vocabulary and window;
/// `first` is the request index of `lists[0]` (errors name the input by it).
pub(super) fn ids_to_tokens(
    entry: &ModelEntry,
    lists: Vec<Vec<i64>>,
    first: usize,
    truncate: bool,
) -> Result<Vec<Tokens>, ApiError> {
    let vocab = entry.facts.vocab_size as i64;
    let max = entry.facts.max_tokens as usize;
    let mut seqs = Vec::with_capacity(lists.len());
    for (k, ids) in lists.into_iter().enumerate() {
        let i = first + k;
        if ids.is_empty() {
            return Err(ApiError::invalid_param("input", format!("input {i} is an empty token list")));
        }
        if let Some(bad) = ids.iter().find(|&&t| t < 0 || (vocab > 0 && t >= vocab)) {
            return Err(ApiError::invalid_param(
                "input",
                format!(
                    "input {i} has token id {bad}, outside the model's vocabulary [0, {vocab}) \
                     (ids from another tokenizer? LangChain's OpenAIEmbeddings sends tiktoken ids unless \
                     constructed with check_embedding_ctx_length=False)"
                ),
            ));
        }
        let mut ids: Vec<u32> = ids.into_iter().map(|t| t as u32).collect();
        if ids.len() > max {
            if !truncate {
                return Err(ApiError::tokenize(TokenizeError::TooLong { index: i, limit: max }, "input"));
            }
            ids.truncate(max);
        }
        seqs.push(Tokens { ids, type_ids: Vec::new() });
    }
    Ok(seqs)
}

/// Text inputs after the embedding cache: the vectors found, and the rest tokenized.
pub(super) struct CacheLookup {
    /// Per input: its cache key (empty when the cache is off) and its vector when cached.
    keys: Vec<Key>,
    found: Vec<Option<Cached>>,
    /// The inputs not found, in order, and their token ids: one sequence each, or when
    /// chunking as many as `windows` says, one after the other.
    missing: Vec<usize>,
    pub seqs: Vec<Tokens>,
    pub windows: Vec<usize>,
}

/// Applies the prompt, looks each text up in the cache, tokenizes only what is missing.
/// `first` is the request index of `texts[0]`: errors name an input by its index in the
/// request.
pub(super) fn cached_then_tokenized(
    model: &ModelEntry,
    vectors: Option<&VectorCache>,
    texts: Vec<String>,
    opts: &EmbedOptions,
    long: LongInput,
    max_tokens: usize,
    first: usize,
) -> Result<CacheLookup, ApiError> {
    let chunk = match long {
        LongInput::Chunk { overlap } => Some(overlap),
        LongInput::Truncate | LongInput::Refuse => None,
    };
    let texts = prompted(model, texts, opts, chunk.is_none())?;
    let vectors = vectors.filter(|v| v.enabled());
    let keys: Vec<Key> = match vectors {
        Some(_) => texts.iter().map(|t| vector_cache::key(&model.cache_id, long, t.as_bytes())).collect(),
        None => Vec::new(),
    };
    let mut found = vectors.map_or_else(Vec::new, |v| v.get_many(&model.name, &keys));
    found.resize(texts.len(), None);
    let missing: Vec<usize> = (0..texts.len()).filter(|&i| found[i].is_none()).collect();
    let refs: Vec<&str> = missing.iter().map(|&i| texts[i].as_str()).collect();
    if let Some(overlap) = chunk {
        let windows = model
            .tokenizer
            .encode_windows(&refs, overlap, max_tokens, |k| first + missing[k])
            .map_err(|e| chunking::window_error(e, ""))?;
        let counts = windows.iter().map(Vec::len).collect();
        let seqs = windows.into_iter().flatten().collect();
        return Ok(CacheLookup { keys, found, missing, seqs, windows: counts });
    }
    let truncate = long == LongInput::Truncate;
    let seqs = if refs.is_empty() {
        Vec::new()
    } else {
        // Errors name the input by its position in the request, not among the missing.
        model.tokenizer.encode_texts(&refs, truncate).map_err(|e| {
            let e = match e {
                TokenizeError::TooLong { index, limit } => {
                    TokenizeError::TooLong { index: first + missing[index], limit }
                }
                TokenizeError::Empty { index } => TokenizeError::Empty { index: first + missing[index] },
                other => other,
            };
            ApiError::tokenize(e, "input")
        })?
    };
    // A PyLate model's query or document layout (`embed` checked `is_query` is set).
    let seqs = match (&model.facts.colbert, opts.is_query) {
        (Some(spec), Some(is_query)) => seqs.into_iter().map(|t| pylate::lay_out(spec, t, is_query)).collect(),
        _ => seqs,
    };
    let windows = vec![1; missing.len()];
    Ok(CacheLookup { keys, found, missing, seqs, windows })
}

/// The request limits over a whole (unstreamed) request's cache lookup: windows against
/// `limits.max_inputs_per_request`, tokens against `limits.max_tokens_per_request`.
fn check_cached_totals(state: &AppState, c: &CacheLookup, long: LongInput) -> Result<(), ApiError> {
    if matches!(long, LongInput::Chunk { .. }) {
        // A document of N windows costs N inputs.
        let cached_windows: usize = c.found.iter().flatten().map(|h| h.chunks as usize).sum();
        let n = cached_windows + c.seqs.len();
        let max_inputs = state.config.limits.max_inputs_per_request;
        if n > max_inputs {
            return Err(ApiError::too_large(format!(
                "{n} inputs in one request after chunking (a document of N windows counts N); the limit \
                 (limits.max_inputs_per_request) is {max_inputs}"
            )));
        }
    }
    let cached_tokens: usize = c.found.iter().flatten().map(|h| h.tokens as usize).sum();
    let tokens = cached_tokens + check_request_tokens(state, &c.seqs)?;
    within_token_limit(tokens, state.config.limits.max_tokens_per_request)?;
    Ok(())
}

/// Computes what the cache did not have, stores it, and puts the rows in input order.
pub(super) async fn compute_cached(
    state: &AppState,
    entry: Arc<ModelEntry>,
    c: CacheLookup,
    outputs: TokenOutputs,
    long: LongInput,
    how: Submit,
) -> Result<Embedded, ApiError> {
    let chunked = matches!(long, LongInput::Chunk { .. });
    let cached_tokens: usize = c.found.iter().flatten().map(|h| h.tokens as usize).sum();
    let tokens = cached_tokens + c.seqs.iter().map(|s| s.ids.len()).sum::<usize>();
    let seq_tokens: Vec<u32> = c.seqs.iter().map(|s| s.ids.len() as u32).collect();
    let mut token_rows = None;
    let computed = if c.seqs.is_empty() {
        None
    } else {
        match run_as(state, &entry, c.seqs, outputs, how).await? {
            JobOutput::Rows { dim, data } => Some((dim, data)),
            JobOutput::Tokens(rows) => {
                let rows: TokenRows = rows;
                let dense = (rows.dim, rows.data.clone());
                token_rows = Some(rows);
                Some(dense)
            }
            JobOutput::Scores(_) => return Err(ApiError::internal("worker returned scores for an embedding request")),
        }
    };
    let dim = match (&computed, c.found.iter().flatten().next()) {
        (Some((dim, _)), _) => *dim,
        (None, Some(hit)) => hit.row.len(),
        (None, None) => return Err(ApiError::internal("no rows for an embedding request")),
    };
    let n = c.found.len();
    let mut data = vec![0.0f32; n * dim];
    for (i, hit) in c.found.iter().enumerate() {
        if let Some(hit) = hit {
            if hit.row.len() != dim {
                return Err(ApiError::internal("a cached vector has another length than the model's"));
            }
            data[i * dim..(i + 1) * dim].copy_from_slice(&hit.row);
        }
    }
    let mut chunks: Vec<u32> = c.found.iter().map(|h| h.as_ref().map_or(0, |h| h.chunks)).collect();
    if let Some((_, rows)) = computed {
        let vectors = state.pool.vectors();
        let mut first = 0;
        for (k, &i) in c.missing.iter().enumerate() {
            let n = c.windows[k];
            let window_tokens = &seq_tokens[first..first + n];
            let pooled;
            let row = if n == 1 {
                &rows[first * dim..(first + 1) * dim]
            } else {
                pooled =
                    chunking::pool(&rows[first * dim..(first + n) * dim], dim, window_tokens, entry.facts.normalize);
                &pooled[..]
            };
            first += n;
            data[i * dim..(i + 1) * dim].copy_from_slice(row);
            chunks[i] = n as u32;
            if let Some(key) = c.keys.get(i) {
                vectors.insert(&entry.name, *key, row, window_tokens.iter().sum(), n as u32);
            }
        }
    }
    Ok(Embedded { entry, dim, data, tokens, token_rows, chunks: chunked.then_some(chunks) })
}

/// Scores `documents` against `query` with reranker `model`.
pub async fn rerank(
    state: &AppState,
    model: &str,
    query: String,
    documents: Vec<String>,
    truncate: Option<bool>,
    instruction: Option<String>,
) -> Result<Scored, ApiError> {
    let entry = state.resolver().entry(model, Some(ModelKind::Reranker)).await?;
    if query.is_empty() {
        return Err(ApiError::invalid_param("query", "`query` must not be empty"));
    }
    if documents.is_empty() {
        return Err(ApiError::invalid_param("documents", "`documents` must not be empty"));
    }
    check_document_count(state, documents.len())?;
    let truncate = truncate.unwrap_or(state.config.limits.truncate);
    let heavy = documents.iter().map(String::len).sum::<usize>() > 8192;
    let tok = entry.tokenizer.clone();
    let how = Tokenizing::of(state, heavy, super::priority::current());
    let seqs = off_thread(how, move || {
        let refs: Vec<&str> = documents.iter().map(String::as_str).collect();
        tok.encode_pairs(&query, &refs, instruction.as_deref(), truncate)
    })
    .await?
    .map_err(|e| ApiError::tokenize(e, "documents"))?;
    let tokens = check_request_tokens(state, &seqs)?;
    match run(state, &entry, seqs, TokenOutputs::default()).await? {
        JobOutput::Scores(scores) => Ok(Scored { entry, scores, tokens }),
        JobOutput::Rows { .. } | JobOutput::Tokens(_) => {
            Err(ApiError::internal("worker returned rows for a rerank request"))
        }
    }
}

/// Scores each (first, second) pair with reranker `model`, every pair its own query, in one
/// job (vLLM's N:N score, `score.rs`). Errors name `text_1` / `text_2` and the pair.
pub async fn rerank_pairs(
    state: &AppState,
    model: &str,
    pairs: Vec<(String, String)>,
    truncate: Option<bool>,
) -> Result<Scored, ApiError> {
    let entry = state.resolver().entry(model, Some(ModelKind::Reranker)).await?;
    check_document_count(state, pairs.len())?;
    let truncate = truncate.unwrap_or(state.config.limits.truncate);
    let heavy = pairs.iter().map(|(a, b)| a.len() + b.len()).sum::<usize>() > 8192;
    let tok = entry.tokenizer.clone();
    let how = Tokenizing::of(state, heavy, super::priority::current());
    let seqs = off_thread(how, move || {
        let mut seqs = Vec::with_capacity(pairs.len());
        for (k, (first, second)) in pairs.iter().enumerate() {
            let mut one = tok.encode_pairs(first, &[second.as_str()], None, truncate).map_err(|e| match e {
                TokenizeError::EmptyQuery => ApiError::invalid_param(
                    "text_1",
                    format!("`text_1` text {k} is empty after tokenization (it holds only characters the model's tokenizer drops)"),
                ),
                TokenizeError::QueryTooLong { limit } => ApiError::invalid_param(
                    "text_1",
                    format!("`text_1` text {k} is longer than the {limit} tokens this model keeps of a query (send `truncate: true` or shorten it)"),
                )
                .with_code("context_length_exceeded"),
                TokenizeError::Empty { .. } => ApiError::tokenize(TokenizeError::Empty { index: k }, "text_2"),
                TokenizeError::TooLong { limit, .. } => {
                    ApiError::tokenize(TokenizeError::TooLong { index: k, limit }, "text_2")
                }
                other => ApiError::tokenize(other, "text_2"),
            })?;
            seqs.append(&mut one);
        }
        Ok::<_, ApiError>(seqs)
    })
    .await??;
    let tokens = check_request_tokens(state, &seqs)?;
    match run(state, &entry, seqs, TokenOutputs::default()).await? {
        JobOutput::Scores(scores) => Ok(Scored { entry, scores, tokens }),
        JobOutput::Rows { .. } | JobOutput::Tokens(_) => {
            Err(ApiError::internal("worker returned rows for a rerank request"))
        }
    }
}

/// One input of a classifier: a text, or a (text, text) pair tokenized as the model's
/// tokenizer joins a pair (BERT: `[CLS] a [SEP] b [SEP]`, segment 1 on the second).
pub enum ClassifyInput {
    Text(String),
    Pair(String, String),
}

pub struct Classified {
    pub entry: Arc<ModelEntry>,
    /// Labels per input (the width of a row of `logits`).
    pub labels: usize,
    /// `inputs × labels` row-major, every label's logit as the head computes it.
    pub logits: Vec<f32>,
    pub tokens: usize,
}

/// Every label's logit for each input with classifier `model` (TEI's `/predict`). Errors
/// name `inputs` and the input's index.
pub async fn classify(
    state: &AppState,
    model: &str,
    inputs: Vec<ClassifyInput>,
    truncate: Option<bool>,
) -> Result<Classified, ApiError> {
    let entry = state.resolver().entry(model, Some(ModelKind::Classifier)).await?;
    check_input_count(state, inputs.len())?;
    let truncate = truncate.unwrap_or(state.config.limits.truncate);
    let heavy = inputs
        .iter()
        .map(|i| match i {
            ClassifyInput::Text(t) => t.len(),
            ClassifyInput::Pair(a, b) => a.len() + b.len(),
        })
        .sum::<usize>()
        > 8192;
    let tok = entry.tokenizer.clone();
    let how = Tokenizing::of(state, heavy, super::priority::current());
    let seqs = off_thread(how, move || {
        let mut seqs = Vec::with_capacity(inputs.len());
        for (k, input) in inputs.iter().enumerate() {
            let one = match input {
                ClassifyInput::Text(t) => tok.encode_texts(&[t.as_str()], truncate),
                ClassifyInput::Pair(a, b) => tok.encode_pairs(a, &[b.as_str()], None, truncate),
            };
            // The tokenizer numbers the one text it saw 0: report the input's own index.
            let mut one = one.map_err(|e| match e {
                TokenizeError::Empty { .. } | TokenizeError::EmptyQuery => {
                    ApiError::tokenize(TokenizeError::Empty { index: k }, "inputs")
                }
                TokenizeError::TooLong { limit, .. } | TokenizeError::QueryTooLong { limit } => {
                    ApiError::tokenize(TokenizeError::TooLong { index: k, limit }, "inputs")
                }
                other => ApiError::tokenize(other, "inputs"),
            })?;
            seqs.append(&mut one);
        }
        Ok::<_, ApiError>(seqs)
    })
    .await??;
    let tokens = check_request_tokens(state, &seqs)?;
    match run(state, &entry, seqs, TokenOutputs::default()).await? {
        JobOutput::Rows { dim, data } => Ok(Classified { entry, labels: dim, logits: data, tokens }),
        JobOutput::Scores(_) | JobOutput::Tokens(_) => {
            Err(ApiError::internal("worker returned scores for a classification request"))
        }
    }
}

/// Truncates each row to `dims` and L2-renormalizes it (Matryoshka `dimensions`).
pub fn shorten_rows(data: &[f32], dim: usize, dims: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(data.len() / dim * dims);
    for row in data.chunks_exact(dim) {
        let part = &row[..dims];
        let norm = part.iter().map(|x| x * x).sum::<f32>().sqrt();
        let scale = if norm > 0.0 { 1.0 / norm } else { 1.0 };
        out.extend(part.iter().map(|x| x * scale));
    }
    out
}

/// `limits.max_inputs_per_request`: 413 past it.
pub fn check_input_count(state: &AppState, n: usize) -> Result<(), ApiError> {
    let max_inputs = state.config.limits.max_inputs_per_request;
    if n > max_inputs {
        return Err(ApiError::too_large(format!(
            "{n} inputs in one request; the limit (limits.max_inputs_per_request) is {max_inputs}"
        )));
    }
    Ok(())
}

/// `limits.max_documents_per_rerank`: 413 past it.
pub fn check_document_count(state: &AppState, n: usize) -> Result<(), ApiError> {
    let max_docs = state.config.limits.max_documents_per_rerank;
    if n > max_docs {
        return Err(ApiError::too_large(format!(
            "{n} documents in one request; the limit (limits.max_documents_per_rerank) is {max_docs}"
        )));
    }
    Ok(())
}
