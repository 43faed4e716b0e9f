//! Whether a model declares Matryoshka training (Kusupati et al., "Matryoshka
//! Representation Learning", NeurIPS 2022): vectors whose first N dimensions are an
//! embedding of their own. That is what makes `dimensions` (keep the first N, renormalize)
//! a faithful answer; on another model it still cuts and renormalizes, but the shorter
//! vector is an approximation nobody trained for. docs/api.md ("dimensions") says how each
//! is answered; `mlx-serve show` and `/api/show` say which a model is.
//!
//! What counts as a declaration, found at pull time and kept in `mlx-serve.json`:
//! - the Hub's tags for the repo: sentence-transformers writes `loss:MatryoshkaLoss` into
//!   the model card of a model trained with it (`sentence_transformers/model_card.py`,
//!   `get_model_specific_metadata` tags each loss as `loss:<Name>`), and authors tag
//!   `matryoshka` by hand;
//! - a local folder's `README.md` (its model card) naming `MatryoshkaLoss`, with the
//!   `matryoshka_dims` list sentence-transformers prints there;
//! - the model cards of popular repos that say it in prose only ([`KNOWN`]).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matryoshka {
    /// Where the declaration was found, for `show`.
    pub declared_by: String,
    /// The sizes it was trained at, largest first, when the declaration lists them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dims: Vec<u32>,
}

/// Repos whose model cards declare Matryoshka training in prose, with the sizes they name.
const KNOWN: &[(&str, &[u32])] = &[
    // Model card, "Adjusting Dimensionality": 768, 512, 256, 128, 64.
    ("nomic-ai/nomic-embed-text-v1.5", &[768, 512, 256, 128, 64]),
    // Model cards: "MRL Support: Yes", any output size from 32 up to the model's own.
    ("Qwen/Qwen3-Embedding-0.6B", &[]),
    ("Qwen/Qwen3-Embedding-4B", &[]),
    ("Qwen/Qwen3-Embedding-8B", &[]),
    // Model card: MRL truncation to 512, 256 or 128 from 768.
    ("google/embeddinggemma-300m", &[768, 512, 256, 128]),
];

/// The declaration of `repo_id` (a [`KNOWN`] card) or of its Hub `tags`.
pub fn from_hub(repo_id: &str, tags: &[String]) -> Option<Matryoshka> {
    if let Some((_, dims)) = KNOWN.iter().find(|(r, _)| r.eq_ignore_ascii_case(repo_id)) {
        return Some(Matryoshka { declared_by: format!("the model card of {repo_id}"), dims: dims.to_vec() });
    }
    let tag = tags.iter().find(|t| {
        let t = t.to_ascii_lowercase();
        t == "loss:matryoshkaloss" || t == "loss:matryoshka2dloss" || t == "matryoshka"
    })?;
    Some(Matryoshka { declared_by: format!("the Hub tag `{tag}`"), dims: Vec::new() })
}

/// The declaration in a model card's text (a folder's `README.md`).
pub fn from_card(text: &str) -> Option<Matryoshka> {
    if !text.contains("MatryoshkaLoss") && !text.contains("Matryoshka2dLoss") {
        return None;
    }
    Some(Matryoshka { declared_by: "the model card (README.md): MatryoshkaLoss".into(), dims: card_dims(text) })
}

/// `"matryoshka_dims": [768, 512, ...]` as sentence-transformers prints the loss's
/// parameters in a model card; empty when absent or unreadable.
fn card_dims(text: &str) -> Vec<u32> {
    let Some(at) = text.find("\"matryoshka_dims\"") else { return Vec::new() };
    let rest = &text[at..];
    let (Some(open), Some(close)) = (rest.find('['), rest.find(']')) else { return Vec::new() };
    if close < open {
        return Vec::new();
    }
    let dims: Option<Vec<u32>> = rest[open + 1..close].split(',').map(|d| d.trim().parse().ok()).collect();
    let mut dims = dims.unwrap_or_default();
    dims.sort_unstable_by(|a, b| b.cmp(a));
    dims
}

/// What `show` says about `dimensions` for a model with this declaration (or none).
pub fn summary(declared: Option<&Matryoshka>) -> String {
    match declared {
        Some(m) if m.dims.is_empty() => format!("Matryoshka-trained (declared by {})", m.declared_by),
        Some(m) => {
            let dims: Vec<String> = m.dims.iter().map(u32::to_string).collect();
            format!("Matryoshka-trained at {} (declared by {})", dims.join(", "), m.declared_by)
        }
        None => "not declared Matryoshka-trained: `dimensions` cuts and renormalizes, but the shorter vectors \
                 are an approximation the model was not trained for"
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_tags_and_known_cards_declare_it() {
        let tags = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let m = from_hub("acme/tuned", &tags(&["sentence-transformers", "loss:MatryoshkaLoss"])).unwrap();
        assert_eq!(m.declared_by, "the Hub tag `loss:MatryoshkaLoss`");
        assert!(m.dims.is_empty());
        assert_eq!(from_hub("nomic-ai/nomic-embed-text-v1.5", &[]).unwrap().dims, vec![768, 512, 256, 128, 64]);
        assert_eq!(from_hub("acme/plain", &tags(&["sentence-transformers", "loss:CoSENTLoss"])), None);
        // v1 of nomic-embed-text is not Matryoshka-trained; only v1.5's card says so.
        assert_eq!(from_hub("nomic-ai/nomic-embed-text-v1", &[]), None);
    }

    #[test]
    fn a_card_declares_it_with_its_sizes() {
        let card =
            "## Training\n#### MatryoshkaLoss\n```json\n{\n    \"loss\": \"MultipleNegativesRankingLoss\",\n    \
                    \"matryoshka_dims\": [\n        384,\n        128,\n        256\n    ],\n}\n```\n";
        let m = from_card(card).unwrap();
        assert_eq!(m.dims, vec![384, 256, 128]);
        assert!(summary(Some(&m)).starts_with("Matryoshka-trained at 384, 256, 128"), "{}", summary(Some(&m)));
        assert_eq!(from_card("MatryoshkaLoss, sizes not listed").unwrap().dims, Vec::<u32>::new());
        assert_eq!(from_card("# all-MiniLM-L6-v2\nMultipleNegativesRankingLoss"), None);
        assert!(summary(None).starts_with("not declared"));
    }
}
