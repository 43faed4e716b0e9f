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
        }
    }

    /// The same item with its request's priority and client.
    pub fn with_class(self, priority: i32, client: u64) -> Item {
        Item { priority, client, ..self }
    }

    /// Its length in tokens.
    pub fn len(&self) -> usize {
        self.tokens.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.ids.is_empty()
    }

    /// It was in flight during a death that implicates its inputs: it runs alone.
    pub fn is_suspect(&self) -> bool {
        self.strikes > 0
    }
}
