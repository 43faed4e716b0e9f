/* Stand-in for gguf-tools' gguflib.c (tests/formula_build.rs): configure only, never compiled. */
