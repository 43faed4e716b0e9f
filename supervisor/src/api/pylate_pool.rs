//! PyLate's token pooling of document vectors (docs/hybrid-search.md, "Token pooling"):
//! the request fields `pool_factor` and `protected_tokens`, PyLate's
//! `encode(..., is_query=False, pool_factor=k, protected_tokens=p)` (pylate 1.6,
//! `models/colbert.py`, `pool_embeddings_hierarchical`), run here on the worker's vectors.
//!
//! Per document: its first `protected_tokens` vectors stay as they are; the other n, when
//! `max(n / pool_factor, 1) < n`, are clustered by Ward's method on their cosine distances
//! `1 - x·y` (float32, as PyLate's `torch.mm`), cut into at most that many clusters
//! (scipy's `fcluster(criterion="maxclust")`, `ward_linkage.rs`), and each cluster's mean
//! (float32, not renormalized, as PyLate) follows the protected vectors in label order.

use serde_json::Value;

use super::ward_linkage::{fcluster_maxclust, ward_linkage};
use super::{pylate, ApiError};
use crate::runner::ModelEntry;

/// What a request asked to pool; `None` in `EmbedOptions` when it sent neither field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPooling {
    /// `pool_factor` (default 1: no pooling).
    pub pool_factor: usize,
    /// `protected_tokens` (PyLate's default 1).
    pub protected_tokens: usize,
    /// Which field was sent (named by errors about the request as a whole).
    pub param: &'static str,
}

impl TokenPooling {
    pub fn pools(&self) -> bool {
        self.pool_factor > 1
    }
}

/// A field's value: a JSON integer no smaller than `min`.
fn integer(v: &Value, param: &str, min: u64) -> Result<usize, ApiError> {
    match v.as_u64() {
        Some(x) if x >= min && x <= u32::MAX as u64 => Ok(x as usize),
        _ => Err(ApiError::invalid_param(param, format!("`{param}` must be an integer >= {min}, got {v}"))),
    }
}

/// The request's `pool_factor` and `protected_tokens`, checked for their type and lower
/// bound (the model's bounds: [`check`]).
pub fn parse(pool_factor: Option<&Value>, protected_tokens: Option<&Value>) -> Result<Option<TokenPooling>, ApiError> {
    if pool_factor.is_none() && protected_tokens.is_none() {
        return Ok(None);
    }
    Ok(Some(TokenPooling {
        pool_factor: pool_factor.map(|v| integer(v, "pool_factor", 1)).transpose()?.unwrap_or(1),
        protected_tokens: protected_tokens.map(|v| integer(v, "protected_tokens", 0)).transpose()?.unwrap_or(1),
        param: if pool_factor.is_some() { "pool_factor" } else { "protected_tokens" },
    }))
}

/// Refuses pooling where it is not PyLate's: a model that is not a PyLate ColBERT model
/// (bge-m3's ColBERT vectors included), queries (PyLate pools documents only and ignores
/// `pool_factor` for queries; refused rather than ignored), and values past the model's
/// `document_length` (its most vectors per document).
pub fn check(entry: &ModelEntry, is_query: Option<bool>, pool: Option<TokenPooling>) -> Result<(), ApiError> {
    let Some(pool) = pool else { return Ok(()) };
    let Some(spec) = entry.facts.colbert.as_ref().filter(|_| pylate::is_colbert(entry)) else {
        return Err(ApiError::invalid_param(
            pool.param,
            format!(
                "`{}` (PyLate's token pooling) applies to PyLate ColBERT models' document vectors; model `{}` is \
                 not one",
                pool.param, entry.name
            ),
        ));
    };
    if is_query == Some(true) && pool.pools() {
        return Err(ApiError::invalid_param(
            "pool_factor",
            "`pool_factor` pools document vectors (`\"is_query\": false`); PyLate does not pool queries",
        ));
    }
    let most = spec.document_length as usize;
    for (param, value) in [("pool_factor", pool.pool_factor), ("protected_tokens", pool.protected_tokens)] {
        if value > most {
            return Err(ApiError::invalid_param(
                param,
                format!(
                    "`{param}` {value} is more than model `{}`'s document_length ({most}), its most vectors per \
                     document",
                    entry.name
                ),
            ));
        }
    }
    Ok(())
}

/// PyLate's `pool_embeddings_hierarchical` for one document's `dim`-wide vectors, row-major.
/// `None` when Ward's linkage is undefined on them (a merge height NaN, where scipy fails).
pub fn pool_document(rows: &[f32], dim: usize, pool: TokenPooling) -> Option<Vec<f32>> {
    let dim = dim.max(1);
    let total = rows.len() / dim;
    let protected = pool.protected_tokens.min(total);
    let (kept, to_pool) = rows.split_at(protected * dim);
    let n = total - protected;
    let clusters = (n / pool.pool_factor.max(1)).max(1);
    if clusters >= n {
        return Some(rows.to_vec());
    }
    let row = |i: usize| &to_pool[i * dim..(i + 1) * dim];
    let mut condensed = Vec::with_capacity(n * (n - 1) / 2);
    for i in 0..n {
        for j in i + 1..n {
            let dot: f32 = row(i).iter().zip(row(j)).map(|(a, b)| a * b).sum();
            condensed.push(f64::from(1.0f32 - dot));
        }
    }
    let labels = fcluster_maxclust(&ward_linkage(&condensed, n)?, n, clusters);
    let mut sums = vec![0f32; clusters * dim];
    let mut counts = vec![0usize; clusters];
    for (i, &label) in labels.iter().enumerate() {
        let c = label - 1;
        counts[c] += 1;
        for (s, x) in sums[c * dim..(c + 1) * dim].iter_mut().zip(row(i)) {
            *s += x;
        }
    }
    let mut out = kept.to_vec();
    // fcluster may give fewer clusters than asked (ties): empty labels are left out.
    for (c, &count) in counts.iter().enumerate().filter(|(_, &count)| count > 0) {
        out.extend(sums[c * dim..(c + 1) * dim].iter().map(|s| s / count as f32));
    }
    Some(out)
}

/// Pools every document of a request; off the async threads (a few hundred vectors take
/// milliseconds).
pub async fn pool_documents(docs: Vec<Vec<f32>>, dim: usize, pool: TokenPooling) -> Result<Vec<Vec<f32>>, ApiError> {
    let pooled = tokio::task::spawn_blocking(move || {
        docs.iter().map(|d| pool_document(d, dim, pool)).collect::<Option<Vec<_>>>()
    })
    .await
    .map_err(|e| {
        tracing::error!("token pooling task failed: {e}");
        ApiError::internal("token pooling failed (the server log has the details)")
    })?;
    pooled.ok_or_else(|| {
        ApiError::internal("token pooling failed: Ward's linkage is undefined on these vectors (a merge height is NaN)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(pool_factor: usize, protected_tokens: usize) -> TokenPooling {
        TokenPooling { pool_factor, protected_tokens, param: "pool_factor" }
    }

    #[test]
    fn protected_first_then_unnormalized_means_in_label_order() {
        // Protected [1, 0], then two tight pairs (cosine distance 0.04 within, 0.46 or more
        // across): [0, 1] with [0.28, 0.96], [1, 0] with [0.96, 0.28].
        let rows = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.28, 0.96, 0.96, 0.28];
        let out = pool_document(&rows, 2, pool(2, 1)).unwrap();
        assert_eq!(out.len(), 3 * 2);
        assert_eq!(&out[..2], &[1.0, 0.0]);
        // The means are not renormalized: their length is below 1.
        let means: Vec<&[f32]> = out[2..].chunks(2).collect();
        assert!(means.iter().any(|m| (m[0] - 0.14).abs() < 1e-6 && (m[1] - 0.98).abs() < 1e-6), "{out:?}");
        assert!(means.iter().any(|m| (m[0] - 0.98).abs() < 1e-6 && (m[1] - 0.14).abs() < 1e-6), "{out:?}");
    }

    #[test]
    fn nothing_to_pool_returns_the_vectors_as_they_are() {
        let rows = [1.0, 0.0, 0.0, 1.0];
        assert_eq!(pool_document(&rows, 2, pool(2, 1)).unwrap(), rows);
        assert_eq!(pool_document(&rows, 2, pool(2, 5)).unwrap(), rows);
    }

    #[test]
    fn values_are_integers_at_least_their_minimum() {
        let v = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        for bad in ["0", "-2", "2.5", "\"2\"", "1e30", "99999999999"] {
            let e = parse(Some(&v(bad)), None).unwrap_err();
            assert!(e.to_string().contains("pool_factor"), "{bad}: {e}");
        }
        assert!(parse(None, Some(&v("-1"))).is_err());
        assert_eq!(parse(Some(&v("2")), None).unwrap(), Some(pool(2, 1)));
        assert_eq!(parse(None, None).unwrap(), None);
    }
}
