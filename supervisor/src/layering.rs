//! A test that keeps the layout honest: it reads every source file of the crate, collects
//! the modules each one names (`crate::…` and `super::…` paths, in `use` lines and inline),
//! and fails when
//!
//! 1. a top-level module uses one it may not ([`LAYERS`], the `# Layout` of `lib.rs`, in
//!    order from the top: a module may use only modules listed after it), or
//! 2. files form an import cycle (a file naming its own ancestor — `super::Item` from a
//!    child — is not an edge: that is how a folder's files share its `mod.rs`).
//!
//! Plain text scanning is enough here because the crate's code names other modules only
//! through paths; comments are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module and what it may use, from the top layer down.
pub(crate) const LAYERS: &[(&str, &[&str])] = &[
    ("cli", &["daemon", "control", "store", "config", "paths", "console"]),
    (
        "daemon",
        &["api", "resolve", "runner", "batch", "worker", "control", "store", "telemetry", "config", "paths", "console"],
    ),
    ("api", &["resolve", "runner", "metrics", "telemetry", "tokenize", "store", "config"]),
    ("resolve", &["runner", "store", "config", "paths"]),
    ("runner", &["batch", "metrics", "telemetry", "worker", "tokenize", "store", "config"]),
    ("telemetry", &["config"]),
    ("batch", &["tokenize"]),
    ("metrics", &["worker"]),
    ("worker", &[]),
    ("control", &["paths"]),
    // store/quality_set.rs tokenizes the quantization quality check with the model's own
    // tokenizer, exactly as requests are tokenized.
    ("store", &["tokenize"]),
    ("tokenize", &[]),
    ("config", &["paths"]),
    ("paths", &[]),
    ("console", &[]),
];

/// Files that are not layers: the crate root, the binary, this test and the tour's (`tour.rs`).
const NOT_LAYERS: &[&str] = &["lib.rs", "main.rs", "layering.rs", "tour.rs"];

type Module = Vec<String>;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/runner/actor/lifecycle.rs` → `[runner, actor, lifecycle]`; `src/api/mod.rs` → `[api]`.
fn module_of(file: &Path) -> Module {
    let rel = file.strip_prefix(src_dir()).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    if last != "mod.rs" {
        parts.push(last.trim_end_matches(".rs").to_owned());
    }
    parts
}

/// The code of a file without its comments.
fn code(text: &str) -> String {
    text.lines().map(|l| l.find("//").map_or(l, |i| &l[..i])).collect::<Vec<_>>().join("\n")
}

fn ident(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// The module paths a file names, made absolute: `crate::a::b::Item`, `crate::{a, b::c}`,
/// `super::x::Item` (relative to `me`).
fn references(me: &Module, code: &str) -> Vec<Module> {
    let mut out = Vec::new();
    // Paths start after a character that cannot be part of a longer path.
    let starts = code
        .match_indices("crate::")
        .map(|(i, _)| (i, true))
        .chain(code.match_indices("super::").map(|(i, _)| (i, false)));
    for (i, is_crate) in starts {
        if i > 0 && code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut base: Module = if is_crate {
            Vec::new()
        } else {
            // `super` of module a::b (file `a/b.rs` or `a/b/mod.rs`) is `a`.
            let mut m = me.clone();
            m.pop();
            m
        };
        let mut rest = &code[i + "crate::".len()..]; // as long as "super::"
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for item in inner.split(',') {
                let mut m = base.clone();
                m.extend(item.trim().split("::").map(|s| ident(s).to_owned()).filter(|s| !s.is_empty()));
                out.push(m);
            }
        } else {
            let mut m = base.clone();
            for seg in rest.split("::") {
                let id = ident(seg);
                if id.is_empty() {
                    break;
                }
                m.push(id.to_owned());
                if id.len() != seg.len() {
                    break;
                }
            }
            out.push(m);
        }
    }
    out
}

/// The longest prefix of `path` that is a module of the crate.
fn resolve(path: &Module, modules: &BTreeSet<Module>) -> Option<Module> {
    (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|m| modules.contains(m))
}

struct Graph {
    /// File module → the file modules it names (without ancestors).
    edges: BTreeMap<Module, BTreeSet<Module>>,
}

fn graph() -> Graph {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    files.retain(|f| !NOT_LAYERS.iter().any(|n| f.strip_prefix(src_dir()).unwrap() == Path::new(n)));
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(f)).collect();
    let mut edges = BTreeMap::new();
    for f in &files {
        let me = module_of(f);
        let text = std::fs::read_to_string(f).unwrap();
        let mut to = BTreeSet::new();
        for r in references(&me, &code(&text)) {
            if let Some(target) = resolve(&r, &modules) {
                let ancestor = me.starts_with(&target);
                if !ancestor {
                    to.insert(target);
                }
            }
        }
        edges.insert(me, to);
    }
    Graph { edges }
}

/// A cycle through the file graph, if any (as the list of modules on it).
fn find_cycle(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(
        m: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        marks: &mut BTreeMap<Module, Mark>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        match marks.get(m).copied().unwrap_or(Mark::New) {
            Mark::Done => return None,
            Mark::Active => {
                let from = stack.iter().position(|s| s == m).unwrap();
                return Some(stack[from..].to_vec());
            }
            Mark::New => {}
        }
        marks.insert(m.clone(), Mark::Active);
        stack.push(m.clone());
        for next in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, edges, marks, stack) {
                return Some(c);
            }
        }
        stack.pop();
        marks.insert(m.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for m in edges.keys() {
        if let Some(c) = visit(m, edges, &mut marks, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_layer_table_runs_one_way() {
    let order: Vec<&str> = LAYERS.iter().map(|(m, _)| *m).collect();
    for (i, (module, allowed)) in LAYERS.iter().enumerate() {
        for dep in *allowed {
            let j = order.iter().position(|m| m == dep).unwrap_or_else(|| panic!("{dep} is not a layer"));
            assert!(j > i, "{module} may use {dep}, which is listed above it");
        }
    }
}

/// The layer table of docs/architecture.md ("The supervisor's layers"): each row's layer
/// (its first cell, without the folder's slash) and the layers it may use (its last cell).
fn documented_layers() -> Vec<(String, Vec<String>)> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/architecture.md");
    let doc = std::fs::read_to_string(doc).unwrap();
    let section = doc.split("## The supervisor's layers").nth(1).expect("the layers section");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|row| {
            let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
            let layer = cells[0].trim_matches('`').trim_end_matches('/').to_owned();
            let uses = cells.last().unwrap();
            let uses = if *uses == "—" { Vec::new() } else { uses.split(", ").map(str::to_owned).collect() };
            (layer, uses)
        })
        .collect()
}

#[test]
fn the_documented_layers_are_these() {
    let want: Vec<(String, Vec<String>)> =
        LAYERS.iter().map(|(m, uses)| (m.to_string(), uses.iter().map(|u| u.to_string()).collect())).collect();
    assert_eq!(documented_layers(), want, "docs/architecture.md's layer table differs from LAYERS");
}

#[test]
fn every_top_level_module_is_a_layer() {
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).unwrap();
    let declared: BTreeSet<&str> =
        lib.lines().filter_map(|l| l.strip_prefix("pub mod ")).map(|l| l.trim_end_matches(';')).collect();
    let layers: BTreeSet<&str> = LAYERS.iter().map(|(m, _)| *m).collect();
    assert_eq!(declared, layers, "lib.rs modules and the layer table differ");
}

#[test]
fn no_module_uses_a_layer_above_or_beside_it() {
    let allowed: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut wrong = Vec::new();
    for (from, tos) in &graph().edges {
        for to in tos {
            let (a, b) = (from[0].as_str(), to[0].as_str());
            if a != b && !allowed[a].contains(&b) {
                wrong.push(format!("{} uses {}", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(wrong.is_empty(), "layering violations:\n{}", wrong.join("\n"));
}

#[test]
fn no_import_cycle_between_files() {
    let g = graph();
    assert!(g.edges.len() > 40, "found only {} files: is the scan broken?", g.edges.len());
    if let Some(cycle) = find_cycle(&g.edges) {
        let names: Vec<String> = cycle.iter().map(|m| m.join("::")).collect();
        panic!("import cycle: {} → {}", names.join(" → "), names[0]);
    }
}

#[test]
fn the_scanner_sees_paths() {
    let me: Module = vec!["runner".into(), "actor".into()];
    let refs = references(
        &me,
        "use crate::{batch::Queue, metrics};\nlet x = crate::paths::home_dir();\nuse super::handle::X;",
    );
    let names: Vec<String> = refs.iter().map(|m| m.join("::")).collect();
    assert_eq!(names, ["batch::Queue", "metrics", "paths::home_dir", "runner::handle::X"]);
    let mut edges = BTreeMap::new();
    edges.insert(vec!["a".to_owned()], BTreeSet::from([vec!["b".to_owned()]]));
    edges.insert(vec!["b".to_owned()], BTreeSet::from([vec!["a".to_owned()]]));
    assert!(find_cycle(&edges).is_some(), "a two-module cycle must be found");
}
