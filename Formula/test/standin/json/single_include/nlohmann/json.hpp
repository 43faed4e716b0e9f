// Stand-in for nlohmann/json 3.11.3 (tests/formula_build.rs): configure only, never compiled.
