/* Stand-in for gguf-tools' fp16.c (tests/formula_build.rs): configure only, never compiled. */
