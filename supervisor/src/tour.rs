//! The newcomer's tour in docs/architecture.md ("A request's path, file by file") stays
//! true: every file it names exists, and it visits every layer of the supervisor
//! (`layering.rs`'s table), so a layer added or a file moved shows up here.

use std::path::Path;

use crate::layering::LAYERS;

/// The tour's text: from its heading to the next `## ` heading.
fn tour() -> String {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/architecture.md")).unwrap();
    let start = doc.find("## A request's path, file by file").expect("the tour's heading in docs/architecture.md");
    let rest = &doc[start + 3..];
    rest[..rest.find("\n## ").unwrap_or(rest.len())].to_owned()
}

/// The repository paths the tour names in backquotes.
fn named_paths(tour: &str) -> Vec<String> {
    tour.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| ["supervisor/", "worker/", "protocol/"].iter().any(|p| s.starts_with(p)))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_file_the_tour_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let named = named_paths(&tour());
    assert!(named.len() > 20, "the tour names files: {named:?}");
    let missing: Vec<&String> = named.iter().filter(|p| !root.join(p).exists()).collect();
    assert!(missing.is_empty(), "docs/architecture.md's tour names files that do not exist: {missing:?}");
}

#[test]
fn the_tour_visits_every_layer() {
    let named = named_paths(&tour());
    let unvisited: Vec<&str> = LAYERS
        .iter()
        .map(|(layer, _)| *layer)
        .filter(|layer| {
            let (folder, file) = (format!("supervisor/src/{layer}/"), format!("supervisor/src/{layer}.rs"));
            !named.iter().any(|p| p.starts_with(&folder) || *p == file)
        })
        .collect();
    assert!(unvisited.is_empty(), "docs/architecture.md's tour does not visit these layers: {unvisited:?}");
}
