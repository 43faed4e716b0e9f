//! One tokenized input waiting for a worker, with what the batcher needs to know about
//! it: its request, its priority and client, and its history of worker deaths.

use mlx_serve_protocol::TokenOutputs;
use tokio::time::Instant;

use crate::tokenize::Tokens;

/// One input waiting for the worker.
#[derive(Debug)]
pub struct Item {
    /// Which job (request) it belongs to and its position there.
    pub job: u64,
    pub index: u32,
    pub tokens: Tokens,
    /// Times it was in flight when a worker died in a way that implicates its inputs (a
    /// crash, a hang): one makes it a suspect, sent alone; two convict it.
    pub strikes: u8,
    /// Times it was in flight when a worker died, whatever the cause (bounds retries).
    pub deaths: u8,
    pub enqueued: Instant,
    /// Its request's priority (lower runs first).
    pub priority: i32,
    /// Who sent it (a digest of its API key, 0 without one): clients take turns.
    pub client: u64,
    /// Per-token outputs its job asks for (bge-m3's sparse, ColBERT); a batch asks the
    /// worker for the union and each job keeps its own.
    pub outputs: TokenOutputs,
    /// A late-chunked document (docs/long-documents.md): its pools, and its macro-windows
    /// after the first. None for an ordinary input.
    pub late: Option<Box<LatePools>>,
}

/// What a late-chunked document asks of the batch it rides in: its further macro-windows
/// (computed in the same batch, right after the item's `tokens`), and per chunk the token
/// rows it pools, counted from the item's first token across all its windows. It gets one
/// row per window (the model's own pooling of that window) and then one per chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct LatePools {
    pub more: Vec<Tokens>,
    pub chunks: Vec<Vec<(u32, u32)>>,
}

impl Item {
    pub fn new(job: u64, index: u32, tokens: Tokens, enqueued: Instant) -> Item {
        Item {
            job,
            index,
            tokens,
            strikes: 0,
            deaths: 0,
            enqueued,
            priority: 0,
            client: 0,
            outputs: TokenOutputs::default(),
            late: None,
        }
    }

    /// The same item with its request's priority and client.
    pub fn with_class(self, priority: i32, client: u64) -> Item {
        Item { priority, client, ..self }
    }

    /// Its length in tokens (every macro-window of a late-chunked document).
    pub fn len(&self) -> usize {
        self.tokens.ids.len() + self.late.as_ref().map_or(0, |l| l.more.iter().map(|t| t.ids.len()).sum())
    }

    /// The sequences it puts in a batch: one, or a late-chunked document's windows.
    pub fn sequences(&self) -> impl Iterator<Item = &Tokens> {
        std::iter::once(&self.tokens).chain(self.late.iter().flat_map(|l| l.more.iter()))
    }

    /// The rows the worker answers for it: one, or a late-chunked document's one per
    /// window and one per chunk.
    pub fn rows(&self) -> usize {
        self.late.as_ref().map_or(1, |l| 1 + l.more.len() + l.chunks.len())
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.ids.is_empty()
    }

    /// It was in flight during a death that implicates its inputs: it runs alone.
    pub fn is_suspect(&self) -> bool {
        self.strikes > 0
    }
}
