//! The architectures mlx-serve runs: one row per family, keyed by config.json's
//! `model_type`. The row holds what both binaries must know before any weight is read —
//! whether the network is an encoder or a decoder (default pooling, how a reranker scores,
//! and a causal LM's judge: prompt and tokens),
//! how many position-table slots come before the first token, and a model card's
//! instruction format. The code that computes each family is one file in
//! `worker/src/models/` (registered there by the same name); adding a family is one row
//! here, one file and one row there (docs/adding-an-architecture.md).

/// Encoder (bidirectional attention: BERT and its descendants) or decoder (causal
/// attention: the Qwen embedders and LLM rerankers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    Encoder,
    Decoder,
}

/// Where a sequence's positions start in the position table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// `0..n` (BERT, rotary families).
    FromZero,
    /// RoBERTa: `pad_token_id + 1 + i`, so `pad_token_id + 1` slots are never a token's
    /// (transformers' `create_position_ids_from_input_ids`).
    AfterPadding,
}

/// One family of networks the worker implements.
#[derive(Debug)]
pub struct Architecture {
    /// Our name for it (`ModelInfo::family`, `show`), the key of the worker's registry.
    pub family: &'static str,
    /// config.json `model_type` values it runs.
    pub model_types: &'static [&'static str],
    pub body: Body,
    pub positions: Positions,
    /// How the model card prefixes a query with a task description (`{task}`, `{text}`),
    /// for the API's `instruction` field; `None`: the task is prepended as it is.
    pub instruction_format: Option<&'static str>,
    /// `type_vocab_size` when config.json omits it (transformers' config class default).
    pub type_vocab_default: u32,
    /// Custom code (`auto_map` classes, `trust_remote_code` models) the worker's file
    /// reimplements, as `module.Class` suffixes of the `auto_map` entries; any other custom
    /// code is refused (it may compute something else than the family's standard class).
    pub custom_code: &'static [&'static str],
    /// How a causal LM of this family judges a (query, document) pair when it is a
    /// reranker (no sentence-transformers files); `None`: such a reranker is refused.
    pub judge: Option<&'static Judge>,
}

/// A causal LM used as a relevance judge: the prompt its authors wrap a pair in, and the
/// two tokens whose logits at the last position give the score. Both recipes we run score
/// `sigmoid(logit(yes) - logit(no))`: Qwen3-Reranker's `softmax([no, yes])[1]` is that,
/// and mxbai-rerank-v2's `predict` returns `logit(yes) - logit(no)`, whose sigmoid is the
/// probability it thresholds at 0.5 (TEI's `raw_scores` gives the logit back).
#[derive(Debug)]
pub struct Judge {
    /// Whose recipe (messages, `show`).
    pub name: &'static str,
    /// The token read as "relevant" and the one read as "not relevant", as text.
    pub yes: &'static str,
    pub no: &'static str,
    pub prompt: JudgePrompt,
}

/// Where the query and the document go, and how each is truncated.
#[derive(Debug)]
pub enum JudgePrompt {
    /// `prefix + body + suffix`: the body (`{instruction}`, `{query}`, `{document}`)
    /// tokenized as one text and cut on the right to what the limit leaves after the
    /// prefix and suffix; `{instruction}` defaults to `default_instruction`.
    Joint { prefix: &'static str, body: &'static str, suffix: &'static str, default_instruction: &'static str },
    /// Query and document tokenized apart and joined as token ids:
    /// `prefix + Q + sep + D + sep + task + suffix`, with `Q` = `query` (or
    /// `instructed_query` when the request has an instruction) cut to 3/4 of the content
    /// budget `L` (the limit less the template's tokens), and `D` = `document` cut to
    /// `L - |Q| - |sep|`.
    Apart {
        prefix: &'static str,
        query: &'static str,
        instructed_query: &'static str,
        document: &'static str,
        sep: &'static str,
        task: &'static str,
        suffix: &'static str,
    },
}

/// Qwen3-Reranker, from the Qwen/Qwen3-Reranker-0.6B model card ("Transformers Usage"):
/// the system turn and the assistant opening (with an empty think block) around
/// `<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}`; P("yes") vs "no".
pub const QWEN3_RERANKER: Judge = Judge {
    name: "Qwen3-Reranker",
    yes: "yes",
    no: "no",
    prompt: JudgePrompt::Joint {
        prefix: "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n",
        body: "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}",
        suffix: "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
        default_instruction: "Given a web search query, retrieve relevant passages that answer the query",
    },
};

/// mixedbread-ai's mxbai-rerank-v2 (base, large), as its authors' package computes it
/// (PyPI `mxbai-rerank` 0.1.6, `mxbai_rerank/mxbai_rerank_v2.py`, `MxbaiRerankV2`):
/// `prepare_inputs` builds the ids (query cut to `max_length * 3 // 4`, document to what
/// `prepare_for_model(..., truncation="only_second", max_length)` leaves), `forward` reads
/// the logits of the first token of "1" (yes) and of "0" (no) at the last position.
pub const MXBAI_RERANK_V2: Judge = Judge {
    name: "mxbai-rerank-v2",
    yes: "1",
    no: "0",
    prompt: JudgePrompt::Apart {
        prefix: "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
        query: "query: {query}",
        instructed_query: "instruction: {instruction}\nquery: {query}",
        document: "document: {document}",
        sep: "\n",
        task: "You are a search relevance expert who evaluates how well documents match search queries. For each query-document pair, carefully analyze the semantic relationship between them, then provide your binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:",
        suffix: "<|im_end|>\n<|im_start|>assistant\n",
    },
};

/// Qwen3-Embedding's query format, from its model card ("Instruct: {task}\nQuery:{query}").
const QWEN3_INSTRUCTION: &str = "Instruct: {task}\nQuery:{text}";

/// gte-Qwen2-instruct's query format, from its model card's `get_detailed_instruct`
/// ("Instruct: {task_description}\nQuery: {query}", with a space after "Query:").
const GTE_QWEN2_INSTRUCTION: &str = "Instruct: {task}\nQuery: {text}";

/// Every family, in the order `SUPPORTED` lists them.
pub const ARCHITECTURES: &[Architecture] = &[
    Architecture {
        family: "bert",
        model_types: &["bert"],
        body: Body::Encoder,
        positions: Positions::FromZero,
        instruction_format: None,
        type_vocab_default: 2,
        custom_code: &[],
        judge: None,
    },
    Architecture {
        family: "xlm_roberta",
        model_types: &["xlm-roberta", "roberta"],
        body: Body::Encoder,
        positions: Positions::AfterPadding,
        instruction_format: None,
        type_vocab_default: 2,
        custom_code: &[],
        judge: None,
    },
    Architecture {
        family: "qwen3",
        model_types: &["qwen3"],
        body: Body::Decoder,
        positions: Positions::FromZero,
        instruction_format: Some(QWEN3_INSTRUCTION),
        type_vocab_default: 0,
        custom_code: &[],
        judge: Some(&QWEN3_RERANKER),
    },
    Architecture {
        family: "nomic_bert",
        model_types: &["nomic_bert"],
        body: Body::Encoder,
        positions: Positions::FromZero,
        instruction_format: None,
        type_vocab_default: 2,
        // nomic-ai/nomic-bert-2048's modeling_hf_nomic_bert.py, which nomic-embed-text and
        // arctic-embed-m-long name in auto_map.
        custom_code: &["modeling_hf_nomic_bert.NomicBertModel"],
        judge: None,
    },
    Architecture {
        family: "modernbert",
        model_types: &["modernbert"],
        body: Body::Encoder,
        positions: Positions::FromZero,
        instruction_format: None,
        // ModernBERT has no segment table.
        type_vocab_default: 0,
        custom_code: &[],
        judge: None,
    },
    Architecture {
        family: "mpnet",
        model_types: &["mpnet"],
        body: Body::Encoder,
        // MPNetEmbeddings counts positions from padding_idx + 1, as RoBERTa does.
        positions: Positions::AfterPadding,
        instruction_format: None,
        // MPNet has no segment table.
        type_vocab_default: 0,
        custom_code: &[],
        judge: None,
    },
    Architecture {
        family: "distilbert",
        model_types: &["distilbert"],
        body: Body::Encoder,
        positions: Positions::FromZero,
        instruction_format: None,
        // DistilBERT has no segment table.
        type_vocab_default: 0,
        custom_code: &[],
        judge: None,
    },
    Architecture {
        family: "new",
        model_types: &["new"],
        body: Body::Encoder,
        positions: Positions::FromZero,
        instruction_format: None,
        // worker/src/models/new.rs requires type_vocab_size in config.json.
        type_vocab_default: 0,
        // Alibaba-NLP/new-impl's modeling.py, which gte-multilingual-base, gte-large-en-v1.5
        // and gte-multilingual-reranker-base name in auto_map.
        custom_code: &["new-impl--modeling.NewModel", "new-impl--modeling.NewForSequenceClassification"],
        judge: None,
    },
    Architecture {
        family: "gemma3_text",
        model_types: &["gemma3_text"],
        // EmbeddingGemma: bidirectional (a causal Gemma 3 is refused by its check).
        body: Body::Encoder,
        positions: Positions::FromZero,
        instruction_format: None,
        // Gemma 3 has no segment table.
        type_vocab_default: 0,
        custom_code: &[],
        judge: None,
    },
    Architecture {
        family: "qwen2",
        model_types: &["qwen2"],
        body: Body::Decoder,
        positions: Positions::FromZero,
        instruction_format: Some(GTE_QWEN2_INSTRUCTION),
        type_vocab_default: 0,
        custom_code: &[],
        // A Qwen2 causal LM as a reranker is mxbai-rerank-v2 (docs/models.md, "Architectures").
        judge: Some(&MXBAI_RERANK_V2),
    },
];

/// A family: a reference to its row (compared by name).
#[derive(Debug, Clone, Copy)]
pub struct Family(&'static Architecture);

impl PartialEq for Family {
    fn eq(&self, other: &Family) -> bool {
        self.0.family == other.0.family
    }
}
impl Eq for Family {}

impl Family {
    /// The family of a config.json `model_type`, when the worker runs it.
    pub fn of_model_type(model_type: &str) -> Option<Family> {
        ARCHITECTURES.iter().find(|a| a.model_types.contains(&model_type)).map(Family)
    }

    /// The family registered under `name` (`ModelInfo::family`).
    pub fn named(name: &str) -> Option<Family> {
        ARCHITECTURES.iter().find(|a| a.family == name).map(Family)
    }

    /// The `model_type`s we run, for messages: `bert, xlm-roberta, roberta, qwen3`.
    pub fn supported_model_types() -> String {
        ARCHITECTURES.iter().flat_map(|a| a.model_types.iter().copied()).collect::<Vec<_>>().join(", ")
    }

    pub fn as_str(self) -> &'static str {
        self.0.family
    }

    pub fn spec(self) -> &'static Architecture {
        self.0
    }

    pub fn body(self) -> Body {
        self.0.body
    }

    /// How a causal LM of this family judges a pair, when it has a recipe.
    pub fn judge(self) -> Option<&'static Judge> {
        self.0.judge
    }

    /// Whether the worker's file for this family computes the custom class `auto_map`
    /// names (`repo--module.Class`).
    pub fn reimplements(self, class: &str) -> bool {
        self.0.custom_code.iter().any(|c| class.ends_with(c))
    }

    /// The query with the API's `instruction` applied as the model card writes it.
    pub fn instructed(self, task: &str, text: &str) -> String {
        match self.0.instruction_format {
            Some(format) => format.replace("{task}", task).replace("{text}", text),
            None => format!("{task}{text}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_type_names_one_family() {
        let mut seen = std::collections::HashSet::new();
        for a in ARCHITECTURES {
            assert!(Family::named(a.family).is_some());
            for t in a.model_types {
                assert!(seen.insert(*t), "{t} is listed twice");
                assert_eq!(Family::of_model_type(t).unwrap().as_str(), a.family);
            }
        }
        assert!(Family::of_model_type("gpt2").is_none());
    }

    #[test]
    fn qwen3_instruction_is_the_model_cards() {
        let q = Family::of_model_type("qwen3").unwrap();
        assert_eq!(q.instructed("Find docs", "what is mlx"), "Instruct: Find docs\nQuery:what is mlx");
        let q2 = Family::of_model_type("qwen2").unwrap();
        assert_eq!(q2.instructed("Find docs", "what is mlx"), "Instruct: Find docs\nQuery: what is mlx");
        let b = Family::of_model_type("bert").unwrap();
        assert_eq!(b.instructed("query: ", "x"), "query: x");
    }
}
