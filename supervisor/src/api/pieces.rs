//! An embeddings request with more inputs than `limits.max_inputs_per_request`, computed
//! piece by piece (docs/long-documents.md, "Limits"): every input is checked first, then
//! each piece of at most that many inputs (a chunked text counts its windows) is
//! tokenized, looked up in the embedding cache, queued, awaited and handed on, at most two
//! pieces in flight so the worker has the next one while the last is written out. What
//! the server holds for the request is then its body plus two pieces, whatever its size.
//!
//! Everything a client can be told with a status is found before the first piece is
//! handed on: a bad input anywhere, the token limit (both in [`plan`], before anything is
//! queued), a full queue or a failing model (the first piece). A later failure ends the
//! stream with an error (`streamed.rs` aborts the response).

use std::ops::Range;
use std::sync::Arc;

use futures_util::stream::{self, Stream, StreamExt};
use mlx_serve_protocol::TokenOutputs;

use super::inference::{self, EmbedOptions, Embedded, Inputs, Submit, Tokenizing};
use super::{ApiError, SharedState};
use crate::runner::{JobClass, JobOutput, ModelEntry};
use crate::tokenize::LongInput;

/// A checked request, cut into pieces.
pub struct Plan {
    pub entry: Arc<ModelEntry>,
    inputs: Arc<Inputs>,
    opts: Arc<EmbedOptions>,
    long: LongInput,
    /// Each piece's inputs, in order.
    pieces: Vec<Range<usize>>,
    /// Tokens of the whole request, as usage will count them.
    pub tokens: usize,
}

/// Checks every input of a request as its pieces will be computed (the same tokenization,
/// its token ids dropped as soon as they are counted), refuses it past
/// `limits.max_tokens_per_request`, and cuts it into pieces. Nothing is queued.
pub async fn plan(state: &SharedState, model: &str, inputs: Inputs, opts: EmbedOptions) -> Result<Plan, ApiError> {
    let (entry, long) = inference::prepare(state, model, &inputs, &opts).await?;
    let opts = Arc::new(opts);
    let piece = state.config.limits.max_inputs_per_request.max(1);
    let max_tokens = state.config.limits.max_tokens_per_request;
    let truncate = long != LongInput::Refuse;
    let mut pieces = Vec::new();
    let mut tokens = 0;
    match &inputs {
        Inputs::Ids(lists) => {
            for first in (0..lists.len()).step_by(piece) {
                let end = (first + piece).min(lists.len());
                let seqs = inference::ids_to_tokens(&entry, lists[first..end].to_vec(), first, truncate)?;
                tokens += seqs.iter().map(|s| s.ids.len()).sum::<usize>();
                check_tokens(tokens, max_tokens)?;
                pieces.push(first..end);
            }
        }
        Inputs::Texts(texts) => {
            let mut cut = Cutter { piece, start: 0, windows: 0, pieces: Vec::new() };
            for first in (0..texts.len()).step_by(piece) {
                let end = (first + piece).min(texts.len());
                let block = texts[first..end].to_vec();
                let heavy = inference::heavy_texts(&block, &opts);
                let (model, o) = (entry.clone(), opts.clone());
                let budget = max_tokens.saturating_sub(tokens);
                let how = Tokenizing::of(state, heavy, super::priority::current());
                let counted = inference::off_thread(how, move || {
                    inference::cached_then_tokenized(&model, None, block, &o, long, budget, first).map(|c| {
                        let seq_tokens: usize = c.seqs.iter().map(|s| s.ids.len()).sum();
                        (seq_tokens, c.windows)
                    })
                })
                .await??;
                tokens += counted.0;
                check_tokens(tokens, max_tokens)?;
                for (k, n) in counted.1.into_iter().enumerate() {
                    cut.push(first + k, n);
                }
            }
            pieces = cut.finish(texts.len());
        }
    }
    Ok(Plan { entry, inputs: Arc::new(inputs), opts, long, pieces, tokens })
}

/// Cuts inputs into pieces of at most `piece` windows (one per input unless chunking); an
/// input of more windows than that is a piece alone.
struct Cutter {
    piece: usize,
    /// The first input of the piece being cut, and its windows so far.
    start: usize,
    windows: usize,
    pieces: Vec<Range<usize>>,
}

impl Cutter {
    /// Input `i`, of `n` windows.
    fn push(&mut self, i: usize, n: usize) {
        if self.windows > 0 && self.windows + n > self.piece {
            self.pieces.push(self.start..i);
            (self.start, self.windows) = (i, 0);
        }
        self.windows += n;
    }

    fn finish(mut self, inputs: usize) -> Vec<Range<usize>> {
        self.pieces.push(self.start..inputs);
        self.pieces
    }
}

fn check_tokens(tokens: usize, limit: usize) -> Result<(), ApiError> {
    if tokens > limit {
        return Err(ApiError::too_large(format!(
            "request has more than {limit} tokens after truncation (limits.max_tokens_per_request); it was \
             refused before any input was computed"
        )));
    }
    Ok(())
}

impl Plan {
    pub fn inputs(&self) -> usize {
        self.inputs.len()
    }

    /// The pieces' answers in order, at most two computed at once. Dropping the stream
    /// (a client gone) drops the pieces in flight, whose jobs the runner then cancels
    /// (`JobTicket`), and queues nothing more.
    pub fn run(self, state: SharedState, class: JobClass) -> impl Stream<Item = Result<Embedded, ApiError>> + Send {
        let Plan { entry, inputs, opts, long, pieces, .. } = self;
        stream::iter(pieces.into_iter().enumerate())
            .map(move |(k, range)| {
                // The first piece's 429 is the request's; later ones wait for room.
                let how = Submit { class, patient: k > 0 };
                piece(state.clone(), entry.clone(), inputs.clone(), opts.clone(), long, range, how)
            })
            .buffered(2)
    }
}

async fn piece(
    state: SharedState,
    entry: Arc<ModelEntry>,
    inputs: Arc<Inputs>,
    opts: Arc<EmbedOptions>,
    long: LongInput,
    range: Range<usize>,
    how: Submit,
) -> Result<Embedded, ApiError> {
    let outputs = TokenOutputs::default();
    match &*inputs {
        Inputs::Texts(texts) => {
            let block = texts[range.clone()].to_vec();
            let heavy = inference::heavy_texts(&block, &opts);
            let model = entry.clone();
            let vectors = state.pool.vectors().clone();
            let max_tokens = state.config.limits.max_tokens_per_request;
            let tokenizing = Tokenizing::of(&state, heavy, how.class);
            let found = inference::off_thread(tokenizing, move || {
                inference::cached_then_tokenized(&model, Some(&*vectors), block, &opts, long, max_tokens, range.start)
            })
            .await??;
            inference::compute_cached(&state, entry, found, outputs, long, how).await
        }
        Inputs::Ids(lists) => {
            let truncate = long != LongInput::Refuse;
            let seqs = inference::ids_to_tokens(&entry, lists[range.clone()].to_vec(), range.start, truncate)?;
            let tokens = seqs.iter().map(|s| s.ids.len()).sum();
            match inference::run_as(&state, &entry, seqs, outputs, how).await? {
                JobOutput::Rows { dim, data } => {
                    Ok(Embedded { entry, dim, data, tokens, token_rows: None, chunks: None })
                }
                JobOutput::Scores(_) | JobOutput::Tokens(_) => {
                    Err(ApiError::internal("worker returned other rows than vectors for an embedding request"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cutter;

    #[test]
    fn pieces_hold_at_most_a_piece_of_windows() {
        let mut cut = Cutter { piece: 4, start: 0, windows: 0, pieces: Vec::new() };
        for (i, n) in [1, 1, 4, 1, 1, 1, 9, 1].into_iter().enumerate() {
            cut.push(i, n);
        }
        assert_eq!(cut.finish(8), vec![0..2, 2..3, 3..6, 6..7, 7..8]);
        let mut cut = Cutter { piece: 3, start: 0, windows: 0, pieces: Vec::new() };
        (0..7).for_each(|i| cut.push(i, 1));
        assert_eq!(cut.finish(7), vec![0..3, 3..6, 6..7]);
    }
}
