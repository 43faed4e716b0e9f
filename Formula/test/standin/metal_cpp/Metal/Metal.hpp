// Stand-in for metal-cpp 26 (tests/formula_build.rs): only a Mac configures with Metal.
