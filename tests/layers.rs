//! The house's structure, read from the sources: which file of a crate names which (`use
//! crate::…`, `super::…` and inline `crate::…` paths), and the import circles that makes. A
//! circle means no file in it can be read, tested or changed without the others.
//!
//! Neither crate has one, and none may appear. Core's files also stand on floors (the ground:
//! records' types and the three backends; the engine's context; steps; supervision;
//! operations; start-up), and an import may only run down them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A crate's files by module path (`engine::claims`), and what each names.
struct Crate {
    files: BTreeMap<Vec<String>, PathBuf>,
    edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
}

fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its `#[cfg(test)]` module (tests may
/// reach anywhere).
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path a use-tree starting at `rest` spells (`{a::B, c}` gives `a::B` and `c`).
fn use_tree(rest: &str, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix.to_vec();
    let bytes = rest.as_bytes();
    let mut i = 0;
    loop {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        if i > start {
            path.push(rest[start..i].to_string());
        }
        if rest[i..].starts_with("::") {
            i += 2;
            if rest[i..].starts_with('{') {
                i += 1;
                loop {
                    while rest[i..].starts_with([' ', '\n', ',']) {
                        i += 1;
                    }
                    if rest[i..].starts_with('}') {
                        return i + 1;
                    }
                    i += use_tree(&rest[i..], &path, out);
                }
            }
            continue;
        }
        out.push(path);
        return i;
    }
}

impl Crate {
    fn read(src: &Path) -> Crate {
        let mut paths = Vec::new();
        rust_files(src, &mut paths);
        let files: BTreeMap<Vec<String>, PathBuf> = paths
            .iter()
            .map(|p| (module_of(src, p), p.clone()))
            .collect();
        // The crate root is a face: names it re-exports (`pub use crate::engine::Engine`)
        // stand for the files that define them, and its own `use`s are no imports.
        let mut faces = BTreeMap::new();
        if let Some(root) = files.get(&Vec::new()) {
            let text = code(&std::fs::read_to_string(root).unwrap());
            let mut named = Vec::new();
            for (at, _) in text.match_indices("pub use ") {
                let rest = &text[at + "pub use ".len()..];
                let rest = rest
                    .strip_prefix("crate::")
                    .or_else(|| rest.strip_prefix("self::"))
                    .unwrap_or(rest);
                use_tree(rest, &[], &mut named);
            }
            for path in named {
                if let Some((name, module)) = path.split_last() {
                    faces.insert(name.clone(), module.to_vec());
                }
            }
        }
        let mut edges = BTreeMap::new();
        for (module, path) in &files {
            if module.is_empty() {
                edges.insert(module.clone(), BTreeSet::new());
                continue;
            }
            let text = code(&std::fs::read_to_string(path).unwrap());
            let mut named = Vec::new();
            for (at, _) in text.match_indices("crate::") {
                let before = text[..at].chars().last();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue; // `gpu_replica_core::…` and the like
                }
                use_tree(&text[at + "crate::".len()..], &[], &mut named);
            }
            for (at, _) in text.match_indices("super::") {
                if text[..at].ends_with("super::") {
                    continue; // counted with the first `super::` of the chain
                }
                // Each `super` goes up one module from this file's.
                let mut rest = &text[at..];
                let mut base = module.as_slice();
                while let Some(after) = rest.strip_prefix("super::") {
                    base = &base[..base.len().saturating_sub(1)];
                    rest = after;
                }
                use_tree(rest, base, &mut named);
            }
            for (at, _) in text.match_indices("self::") {
                let before = text[..at].chars().last();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                use_tree(&text[at + "self::".len()..], module, &mut named);
            }
            let mut targets = BTreeSet::new();
            for mut path in named {
                if let Some(module) = path.first().and_then(|name| faces.get(name)) {
                    path = module.iter().chain(&path).cloned().collect();
                }
                // The longest prefix that is a file of the crate.
                let target = (0..=path.len())
                    .rev()
                    .map(|n| path[..n].to_vec())
                    .find(|p| files.contains_key(p));
                // A folder's mod.rs holds its files (and hands their names on): naming one
                // of its own is no import.
                if let Some(target) = target.filter(|t| !t.starts_with(module)) {
                    targets.insert(target);
                }
            }
            edges.insert(module.clone(), targets);
        }
        Crate { files, edges }
    }

    /// The circles: strongly connected groups of more than one file (Tarjan's algorithm).
    fn circles(&self) -> Vec<BTreeSet<String>> {
        struct Walk<'a> {
            edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
            index: BTreeMap<&'a Vec<String>, usize>,
            low: BTreeMap<&'a Vec<String>, usize>,
            stack: Vec<&'a Vec<String>>,
            on_stack: BTreeSet<&'a Vec<String>>,
            found: Vec<BTreeSet<String>>,
        }
        fn visit<'a>(w: &mut Walk<'a>, v: &'a Vec<String>) {
            let n = w.index.len();
            w.index.insert(v, n);
            w.low.insert(v, n);
            w.stack.push(v);
            w.on_stack.insert(v);
            for next in &w.edges[v] {
                if !w.index.contains_key(next) {
                    visit(w, next);
                    let low = w.low[v].min(w.low[next]);
                    w.low.insert(v, low);
                } else if w.on_stack.contains(next) {
                    let low = w.low[v].min(w.index[next]);
                    w.low.insert(v, low);
                }
            }
            if w.low[v] == w.index[v] {
                let mut group = BTreeSet::new();
                while let Some(top) = w.stack.pop() {
                    w.on_stack.remove(top);
                    group.insert(if top.is_empty() {
                        "lib".to_string()
                    } else {
                        top.join("::")
                    });
                    if top == v {
                        break;
                    }
                }
                if group.len() > 1 {
                    w.found.push(group);
                }
            }
        }
        let mut walk = Walk {
            edges: &self.edges,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            found: Vec::new(),
        };
        for module in self.files.keys() {
            if !walk.index.contains_key(module) {
                visit(&mut walk, module);
            }
        }
        walk.found
    }
}

impl Crate {
    /// The imports inside each circle, `a -> b`, to say what ties it.
    fn ties(&self, circles: &[BTreeSet<String>]) -> Vec<String> {
        let name = |m: &Vec<String>| {
            if m.is_empty() {
                "lib".to_string()
            } else {
                m.join("::")
            }
        };
        let mut ties = Vec::new();
        for circle in circles {
            for (from, targets) in &self.edges {
                for to in targets {
                    if circle.contains(&name(from)) && circle.contains(&name(to)) {
                        ties.push(format!("{} -> {}", name(from), name(to)));
                    }
                }
            }
        }
        ties
    }
}

fn src_of(krate: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(krate)
        .join("src")
}

#[test]
fn the_http_crate_has_no_import_circle() {
    let http = Crate::read(&src_of("gpu-replica-http"));
    assert!(http.files.len() > 15, "read {} files", http.files.len());
    let circles = http.circles();
    assert!(
        circles.is_empty(),
        "import circles in gpu-replica-http: {circles:#?}"
    );
}

/// Core's floors, from the ground up: a file imports files of its own floor or below only.
/// The first prefix that matches a module names its floor.
const CORE_FLOORS: &[(&str, &[&str])] = &[
    ("start", &["start", "testkit"]),
    ("operations", &["ops", "cluster::nodes", "metrics::scrape"]),
    ("supervise", &["supervise"]),
    ("steps", &["steps"]),
    ("engine", &["engine"]),
    (
        "ground",
        &[
            "backup",
            "error",
            "keys",
            "names",
            "size",
            "limits",
            "input",
            "failpoint",
            "model",
            "gpu",
            "store",
            "runtime",
            "sched",
            "cluster",
            "metrics",
            "network",
            "screen",
        ],
    ),
];

fn floor_of(module: &[String]) -> Option<(usize, &'static str)> {
    let name = module.join("::");
    CORE_FLOORS
        .iter()
        .enumerate()
        .find_map(|(i, (floor, prefixes))| {
            prefixes
                .iter()
                .any(|p| name == *p || name.starts_with(&format!("{p}::")))
                .then_some((CORE_FLOORS.len() - i, *floor))
        })
}

/// Calls between files through the methods of `Engine` (the operations) and of its
/// `Context` (what they stand on), which no import shows: `file -> file` where the first
/// calls `.name(` of a method that the second defines in an `impl Engine` or `impl Context`
/// block (only names defined once in the crate, so `Txn::delete` is never taken for
/// `Engine::delete`).
fn engine_calls(src: &Path) -> Vec<(Vec<String>, Vec<String>, String)> {
    let mut paths = Vec::new();
    rust_files(src, &mut paths);
    let texts: Vec<(Vec<String>, String)> = paths
        .iter()
        .map(|p| {
            (
                module_of(src, p),
                code(&std::fs::read_to_string(p).unwrap()),
            )
        })
        .collect();
    let mut defined: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    let mut engine_methods: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (module, text) in &texts {
        for (at, _) in text.match_indices("fn ") {
            let name: String = text[at + 3..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                defined.entry(name).or_default().push(module.clone());
            }
        }
        let mut rest = text.as_str();
        while let Some(at) = ["\nimpl Engine {", "\nimpl Context {"]
            .iter()
            .filter_map(|block| rest.find(block))
            .min()
        {
            let body = &rest[at..];
            let end = body.find("\n}\n").unwrap_or(body.len());
            for (at, _) in body[..end].match_indices("fn ") {
                let name: String = body[at + 3..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                engine_methods.insert(name, module.clone());
            }
            rest = &body[end..];
        }
    }
    let mut calls = Vec::new();
    for (module, text) in &texts {
        for (name, owner) in &engine_methods {
            if owner == module || defined.get(name).is_none_or(|d| d.len() != 1) {
                continue;
            }
            // Through the engine or its context: `self.name(`, `self.ctx.name(`, `engine.name(`
            // where a task holds it (never `self.docker.events(` and the like).
            if ["self", "engine", "ctx"]
                .iter()
                .any(|receiver| text.contains(&format!("{receiver}.{name}(")))
            {
                calls.push((module.clone(), owner.clone(), name.clone()));
            }
        }
    }
    calls
}

#[test]
fn core_calls_run_down_its_floors_only() {
    let src = src_of("gpu-replica-core");
    let mut upward = Vec::new();
    for (from, to, method) in engine_calls(&src) {
        if from.is_empty() || from.first().is_some_and(|m| m == "failure_tests") {
            continue;
        }
        let (Some((a, a_name)), Some((b, b_name))) = (floor_of(&from), floor_of(&to)) else {
            panic!("{} or {} has no floor", from.join("::"), to.join("::"));
        };
        if b > a {
            upward.push(format!(
                "{} ({a_name}) calls {method} of {} ({b_name})",
                from.join("::"),
                to.join("::")
            ));
        }
    }
    assert!(upward.is_empty(), "calls running back up: {upward:#?}");
}

#[test]
fn core_has_no_import_circle() {
    let core = Crate::read(&src_of("gpu-replica-core"));
    assert!(core.files.len() > 40, "read {} files", core.files.len());
    let circles = core.circles();
    assert!(
        circles.is_empty(),
        "import circles in gpu-replica-core: {:#?}",
        core.ties(&circles)
    );
}

#[test]
fn core_imports_run_down_its_floors_only() {
    let core = Crate::read(&src_of("gpu-replica-core"));
    let mut upward = Vec::new();
    for (module, targets) in &core.edges {
        if module.is_empty() || module.first().is_some_and(|m| m == "failure_tests") {
            continue; // the crate's face, and its unit tests of failures
        }
        let (from, from_name) = floor_of(module)
            .unwrap_or_else(|| panic!("{} has no floor in CORE_FLOORS", module.join("::")));
        for target in targets.iter().filter(|t| !t.is_empty()) {
            let (to, to_name) = floor_of(target)
                .unwrap_or_else(|| panic!("{} has no floor in CORE_FLOORS", target.join("::")));
            if to > from {
                upward.push(format!(
                    "{} ({from_name}) -> {} ({to_name})",
                    module.join("::"),
                    target.join("::")
                ));
            }
        }
    }
    assert!(upward.is_empty(), "imports running back up: {upward:#?}");
}

#[test]
fn the_reader_finds_a_circle_when_there_is_one() {
    let dir = std::env::temp_dir().join(format!("layers-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("low")).unwrap();
    std::fs::write(dir.join("lib.rs"), "mod low;\nmod high;\n").unwrap();
    std::fs::write(dir.join("high.rs"), "use crate::low::{Down, other::X};\n").unwrap();
    std::fs::write(dir.join("low/mod.rs"), "pub mod other;\npub struct Down;\n").unwrap();
    std::fs::write(
        dir.join("low/other.rs"),
        "// crate::high is only named in a comment\nfn f() -> super::Down { super::Down }\n",
    )
    .unwrap();
    let quiet = Crate::read(&dir);
    assert!(quiet.circles().is_empty(), "{:?}", quiet.edges);
    // An import running back up, from the lower file to the higher.
    std::fs::write(
        dir.join("low/other.rs"),
        "fn f() { super::super::high::up(); }\n",
    )
    .unwrap();
    let circled = Crate::read(&dir);
    assert_eq!(
        circled.circles(),
        vec![["high", "low::other"]
            .iter()
            .map(|s| s.to_string())
            .collect()]
    );
    std::fs::remove_dir_all(dir).unwrap();
}
