//! No two files of one folder import each other, directly or round a longer loop: the
//! import graph of each folder below `src/`, and the depth-first search for its loops.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[test]
fn no_import_loop_between_files_of_a_folder() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut loops = Vec::new();
    for folder in folders(&src) {
        let rel = folder
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        loops.extend(
            loops_in(&file_graph(&folder, &rel))
                .iter()
                .map(|l| format!("src/{rel}: {}", l.join(" -> "))),
        );
    }
    assert!(loops.is_empty(), "import loops:\n{}", loops.join("\n"));
}

#[test]
fn the_loop_check_finds_a_loop_and_not_a_re_export() {
    let graph = graph_of(
        "serve",
        &[
            ("mod", "pub mod a;\npub mod b;\npub use a::Thing;\npub(crate) use b::{\n  Other,\n};\npub fn now() {}"),
            ("a", "use super::b::Other;\nfn f() -> super::Thing { todo!() }"),
            ("b", "use crate::serve::{a, c};\n// super::c in a comment"),
            ("c", "fn g() { super::now() }\n#[cfg(test)]\nmod tests {\n    use super::super::a;\n}"),
        ],
    );
    // Re-exports are no edges of mod.rs; `super::Thing` is a's own re-exported type.
    assert_eq!(graph["mod"], BTreeSet::new());
    assert_eq!(graph["a"], ["b"].map(String::from).into());
    assert_eq!(graph["b"], ["a", "c"].map(String::from).into());
    assert_eq!(graph["c"], ["mod"].map(String::from).into());
    assert_eq!(loops_in(&graph), vec![vec!["a", "b", "a"]]);
    // mod.rs using a child in code, and the child using an item mod.rs defines: a loop.
    let graph = graph_of(
        "serve",
        &[
            (
                "mod",
                "mod http;\npub struct App;\nfn run() { http::serve() }",
            ),
            ("http", "use super::App;\npub fn serve() {}"),
        ],
    );
    assert_eq!(loops_in(&graph), vec![vec!["http", "mod", "http"]]);
}

/// Every folder below `src/` (not `src/` itself: the layer check orders its modules).
fn folders(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.push(p.clone());
            out.extend(folders(&p));
        }
    }
    out.sort();
    out
}

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The import graph of one folder (`rel`, as `serve` or `model/fused`): its files by stem
/// (`mod` for mod.rs) and its subfolders by name (read from their mod.rs).
fn file_graph(folder: &Path, rel: &str) -> Graph {
    let mut files = Vec::new();
    for e in std::fs::read_dir(folder).unwrap() {
        let p = e.unwrap().path();
        let (name, file) = if p.is_dir() {
            (
                p.file_name().unwrap().to_string_lossy().to_string(),
                p.join("mod.rs"),
            )
        } else if p.extension().is_some_and(|x| x == "rs") {
            (p.file_stem().unwrap().to_string_lossy().to_string(), p)
        } else {
            continue;
        };
        if let Ok(text) = std::fs::read_to_string(&file) {
            files.push((name, text));
        }
    }
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    graph_of(rel, &files)
}

/// File A → file B when A names B's module, or (for a child) an item B defines or mod.rs
/// re-exports from B; child → `mod` when the child names an item mod.rs itself defines.
/// mod.rs declaring a child (`mod b;`) or re-exporting from it (`pub use b::X;`) is no edge.
fn graph_of(rel: &str, files: &[(&str, &str)]) -> Graph {
    let names: BTreeSet<&str> = files.iter().map(|(n, _)| *n).collect();
    let absolute = format!("crate::{}::", rel.replace('/', "::"));
    let root = files
        .iter()
        .find(|(n, _)| *n == "mod")
        .map(|(_, t)| code_of(t));
    let defined = root.as_deref().map(items_defined).unwrap_or_default();
    let exported = root.as_deref().map(re_exported).unwrap_or_default();
    let mut graph = Graph::new();
    for (name, text) in files {
        let code = code_of(text);
        let mut to = BTreeSet::new();
        if *name == "mod" {
            let own = without_re_exports(&code);
            let mut named = path_heads(&own, "self::");
            named.extend(path_heads(&own, &absolute));
            named.extend(
                names
                    .iter()
                    .filter(|b| starts_path(&own, b))
                    .map(|b| b.to_string()),
            );
            to.extend(
                named
                    .into_iter()
                    .filter(|b| names.contains(b.as_str()) && b != "mod"),
            );
        } else {
            let mut named = path_heads(&code, "super::");
            named.extend(path_heads(&code, &absolute));
            for item in named {
                let target = if names.contains(item.as_str()) {
                    Some(item)
                } else if defined.contains(&item) {
                    Some("mod".to_string())
                } else {
                    exported.get(&item).cloned()
                };
                to.extend(target.filter(|t| t != name && names.contains(t.as_str())));
            }
        }
        graph.insert(name.to_string(), to);
    }
    graph
}

/// Whether `b::` starts a path somewhere in `code` (mod.rs naming its child `b`).
fn starts_path(code: &str, b: &str) -> bool {
    code.match_indices(&format!("{b}::"))
        .any(|(i, _)| path_start(code, i))
}

/// A file's code: comments and `#[cfg(test)]` modules (whose `super` is the file itself)
/// dropped.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let code = line.split("//").next().unwrap_or("");
        let is_test_mod = code.trim() == "#[cfg(test)]"
            && lines.peek().is_some_and(|l| {
                l.trim_start().starts_with("mod ") || l.trim_start().starts_with("pub mod ")
            });
        if is_test_mod {
            let mut depth = 0i32;
            let mut opened = false;
            for l in lines.by_ref() {
                let l = l.split("//").next().unwrap_or("");
                depth += l.matches('{').count() as i32 - l.matches('}').count() as i32;
                opened |= l.contains('{');
                if opened && depth <= 0 {
                    break;
                }
            }
            continue;
        }
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Whether a path may start at byte `i`: not after an identifier or another `::`.
fn path_start(code: &str, i: usize) -> bool {
    let before = &code[..i];
    !before.ends_with("::")
        && !before
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$')
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The first name after each path-starting `prefix`: `super::a::f` gives `a`,
/// `super::{a, b::c}` gives `a` and `b`.
fn path_heads(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code
        .match_indices(prefix)
        .filter(|(i, _)| path_start(code, *i))
    {
        let rest = &code[i + prefix.len()..];
        let Some(group) = rest.strip_prefix('{') else {
            out.insert(ident(rest));
            continue;
        };
        // The head of every top-level element of the group.
        let (mut depth, mut head) = (0, true);
        for (j, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => head = true,
                c if head && depth == 0 && (c.is_alphanumeric() || c == '_') => {
                    out.insert(ident(&group[j..]));
                    head = false;
                }
                _ => {}
            }
        }
    }
    out.remove("");
    out
}

/// mod.rs's code without its `pub use` / `pub(crate) use` statements.
fn without_re_exports(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(i) = re_export_at(rest) {
        out.push_str(&rest[..i]);
        rest = rest[i..].split_once(';').map_or("", |(_, r)| r);
    }
    out.push_str(rest);
    out
}

fn re_export_at(code: &str) -> Option<usize> {
    ["pub use ", "pub(crate) use ", "pub(super) use "]
        .iter()
        .filter_map(|p| code.find(p))
        .min()
}

/// Names mod.rs re-exports, each with the child it comes from: `pub use b::{X, Y as Z};`
/// gives X → b and Z → b.
fn re_exported(code: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = code;
    while let Some(i) = re_export_at(rest) {
        let stmt = &rest[i..];
        let (stmt, after) = stmt.split_once(';').unwrap_or((stmt, ""));
        let path = stmt.split_once(" use ").map_or("", |(_, p)| p).trim();
        let path = path.strip_prefix("self::").unwrap_or(path);
        let child = ident(path);
        // The exported names: those a `,`, `}` or the statement's end follows.
        let mut at = 0;
        while at < path.len() {
            let name = ident(&path[at..]);
            if name.is_empty() {
                at += path[at..].chars().next().map_or(1, char::len_utf8);
                continue;
            }
            at += name.len();
            let next = path[at..].trim_start().chars().next();
            if matches!(next, None | Some(',') | Some('}')) && name != "self" && name != child {
                out.insert(name, child.clone());
            }
        }
        rest = after;
    }
    out
}

/// The items mod.rs itself defines (at the top level).
fn items_defined(code: &str) -> BTreeSet<String> {
    const KINDS: &[&str] = &[
        "fn", "struct", "enum", "trait", "const", "static", "type", "union",
    ];
    let mut out = BTreeSet::new();
    for line in code.lines().filter(|l| !l.starts_with(char::is_whitespace)) {
        let mut words = line
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '!'))
            .filter(|w| !w.is_empty())
            .peekable();
        while let Some(w) = words.next() {
            let const_fn = w == "const" && words.peek() == Some(&"fn");
            if !const_fn && (KINDS.contains(&w) || w == "macro_rules!") {
                out.extend(words.next().map(String::from));
                break;
            }
            if ![
                "pub", "crate", "super", "async", "unsafe", "extern", "const",
            ]
            .contains(&w)
            {
                break;
            }
        }
    }
    out
}

/// One loop per back edge a depth-first search meets, as the path round it.
fn loops_in(graph: &Graph) -> Vec<Vec<String>> {
    fn visit(
        n: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        out: &mut Vec<Vec<String>>,
    ) {
        path.push(n.to_string());
        for m in &graph[n] {
            if let Some(at) = path.iter().position(|p| p == m) {
                let mut cycle = path[at..].to_vec();
                cycle.push(m.clone());
                out.push(cycle);
            } else if !done.contains(m) {
                visit(m, graph, path, done, out);
            }
        }
        path.pop();
        done.insert(n.to_string());
    }
    let (mut done, mut out) = (BTreeSet::new(), Vec::new());
    for n in graph.keys() {
        if !done.contains(n) {
            visit(n, graph, &mut Vec::new(), &mut done, &mut out);
        }
    }
    out
}
