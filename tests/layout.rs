//! The source tree's shape (ARCHITECTURE.md, "Where the code is"): the modules of `src/`
//! import each other one way only, from the commands down to the leaves, and never in a
//! circle. Read from the `crate::` paths in the code (comments left out), so a new import
//! that breaks the order fails here, naming the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules by layer, lowest first. A module imports only modules of lower layers,
/// or of its own layer when that makes no circle.
const LAYERS: &[(&str, &[&str])] = &[
    ("leaves", &["config", "console", "error", "existing", "keymap", "select", "stop", "verify"]),
    ("report, S3 control plane, endpoint", &["report", "s3", "endpoint"]),
    ("stages", &["source", "queue", "fetch", "writer"]),
    ("the copy as a whole, and its audit", &["run", "audit"]),
    ("commands", &["cli"]),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("read src/").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`fetch` for `src/fetch/lean.rs`).
fn top_module(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src/");
    let first = rel.components().next().expect("a path").as_os_str().to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// The top-level modules named by `crate::` paths in `code` (comment lines left out):
/// `crate::a::b`, and each name of a group `crate::{a, b::c}`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let code: String = code.lines().filter(|l| !l.trim_start().starts_with("//")).map(|l| format!("{l}\n")).collect();
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // `s3uring_crate::`, not ours
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut name = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(ident(name.trim()));
                        name.clear();
                    }
                    _ if depth == 0 => name.push(c),
                    _ => {}
                }
            }
            found.insert(ident(name.trim()));
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|m| !m.is_empty() && m != "say" && m != "say_raw");
    found
}

#[test]
fn modules_import_downwards_and_never_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let layer: BTreeMap<&str, usize> =
        LAYERS.iter().enumerate().flat_map(|(i, (_, mods))| mods.iter().map(move |m| (*m, i))).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for file in &files {
        let from = top_module(&src, file);
        if from == "lib" || from == "main" {
            continue;
        }
        let Some(&from_layer) = layer.get(from.as_str()) else {
            wrong.push(format!("{}: module '{from}' has no layer in tests/layout.rs", file.display()));
            continue;
        };
        let code = std::fs::read_to_string(file).expect("read a source file");
        for to in crate_paths(&code) {
            if to == from {
                continue;
            }
            match layer.get(to.as_str()) {
                None => wrong.push(format!("{}: imports '{to}', which has no layer", file.display())),
                Some(&l) if l > from_layer => wrong.push(format!(
                    "{}: '{from}' ({}) imports '{to}' ({}), a higher layer",
                    file.display(),
                    LAYERS[from_layer].0,
                    LAYERS[l].0
                )),
                Some(_) => {}
            }
            graph.entry(from.clone()).or_default().insert(to);
        }
    }
    assert!(wrong.is_empty(), "imports against the layering:\n{}", wrong.join("\n"));
    // Within a layer: no circle (depth-first search for a back edge).
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut circle = path[at..].to_vec();
            circle.push(m.to_owned());
            return Some(circle);
        }
        if !done.insert(m.to_owned()) {
            return None;
        }
        path.push(m.to_owned());
        for next in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        if let Some(circle) = visit(m, &graph, &mut Vec::new(), &mut done) {
            panic!("import circle: {}", circle.join(" → "));
        }
    }
    // The check sees the imports it must: the copy imports every stage.
    let run = &graph["run"];
    for stage in ["source", "queue", "fetch", "writer", "report", "s3"] {
        assert!(run.contains(stage), "run imports {stage}: {run:?}");
    }
}

#[test]
fn crate_paths_reads_groups_and_skips_comments() {
    let code = "use crate::{a, b::{c, d}, e::f};\n// crate::g\n/// crate::h\nlet x = crate::i::j(1);\n";
    let want: BTreeSet<String> = ["a", "b", "e", "i"].iter().map(|s| s.to_string()).collect();
    assert_eq!(crate_paths(code), want);
}
