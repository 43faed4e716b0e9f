//! Every architecture family against an independent implementation on the same weights:
//! a tiny random-weight fixture per family and head (tests/fixtures/models, made by the
//! generator scripts in tests/fixtures/), computed by a real `mlx-serve-worker` and
//! compared with transformers / sentence-transformers (tests/fixtures/reference).
//! BERT, XLM-R and Qwen3 are in tests/worker.rs; a family added by
//! docs/adding-an-architecture.md adds its cases here.
