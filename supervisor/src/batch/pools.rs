//! The pools of a batch that holds late-chunked documents (docs/long-documents.md): the
//! worker is sent `EmbedPooled`, one pool per answer row, so only those rows cross the
//! socket. An ordinary input is its sequence with the model's own pooling; a document is
//! one such pool per macro-window (the windows' own vectors, pooled into the document's
//! vector by the API) and one per chunk, its rows shifted to where the document's
//! windows lie in the packed batch.

use mlx_serve_protocol::Pool;

use super::Item;

/// One pool per answer row, in the order `Jobs::scatter` reads them; None when no item is
/// a late-chunked document (the batch is an ordinary `Embed`).
pub fn pools(items: &[Item]) -> Option<Vec<Pool>> {
    if items.iter().all(|i| i.late.is_none()) {
        return None;
    }
    let mut pools = Vec::with_capacity(items.iter().map(Item::rows).sum());
    let (mut seq, mut row) = (0u32, 0u32);
    for item in items {
        let windows = item.sequences().count() as u32;
        pools.extend((seq..seq + windows).map(Pool::Sequence));
        if let Some(late) = &item.late {
            pools.extend(late.chunks.iter().map(|c| Pool::Rows(c.iter().map(|&(s, e)| (row + s, row + e)).collect())));
        }
        seq += windows;
        row += item.len() as u32;
    }
    Some(pools)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::LatePools;
    use crate::tokenize::Tokens;
    use tokio::time::Instant;

    fn seq(len: usize) -> Tokens {
        Tokens { ids: vec![1; len], type_ids: vec![] }
    }

    #[test]
    fn ordinary_batches_are_not_pooled() {
        let items = vec![Item::new(1, 0, seq(3), Instant::now()), Item::new(2, 0, seq(4), Instant::now())];
        assert_eq!(pools(&items), None);
    }

    /// An ordinary input, then a document of two windows (5 + 4 tokens) with a chunk in
    /// each and one across them, then another ordinary input: rows shift by what lies
    /// before the document in the packed batch, sequences by the sequences before it.
    #[test]
    fn a_documents_rows_shift_to_its_place_in_the_batch() {
        let doc = LatePools { more: vec![seq(4)], chunks: vec![vec![(1, 3)], vec![(3, 4), (6, 8)], vec![(7, 8)]] };
        let items = vec![
            Item::new(1, 0, seq(3), Instant::now()),
            Item { late: Some(Box::new(doc)), ..Item::new(2, 0, seq(5), Instant::now()) },
            Item::new(3, 0, seq(2), Instant::now()),
        ];
        assert_eq!(items[1].len(), 9);
        assert_eq!(items[1].rows(), 5);
        let want = vec![
            Pool::Sequence(0),
            Pool::Sequence(1),
            Pool::Sequence(2),
            Pool::Rows(vec![(4, 6)]),
            Pool::Rows(vec![(6, 7), (9, 11)]),
            Pool::Rows(vec![(10, 11)]),
            Pool::Sequence(3),
        ];
        assert_eq!(pools(&items), Some(want));
    }
}
