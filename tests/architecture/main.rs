//! The architecture of docs/architecture.md, checked on the source: every top-level module
//! imports only modules below it, no two files of one folder import each other (directly or
//! round a longer loop), files (tests included) stay readable top to bottom, clap stays in
//! `cli/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

mod loops;

/// Top-level modules from the bottom up; a module may use only modules of a lower rank.
const LAYERS: &[&[&str]] = &[
    &["runtime", "dist"],
    &["config"],
    &["data", "kernels"],
    &["model", "noise"],
    &["objective"],
    &["checkpoint", "decode"],
    &["eval", "import"],
    &["train"],
    &["bench"],
    &["experiment", "serve"],
    &["cli"],
];

const MAX_LINES: usize = 600;

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a source file belongs to (None for the crate roots).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .to_string();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// Top-level modules a file names as `crate::NAME` (comments excluded).
fn uses(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn src_files() -> (PathBuf, Vec<PathBuf>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    (src, files)
}

#[test]
fn modules_import_only_lower_layers() {
    let (src, files) = src_files();
    let mut violations = Vec::new();
    let mut seen = BTreeSet::new();
    for f in &files {
        let Some(module) = module_of(&src, f) else {
            continue;
        };
        let Some(own) = rank(&module) else {
            violations.push(format!("{}: module `{module}` has no layer", f.display()));
            continue;
        };
        seen.insert(module.clone());
        for used in uses(&std::fs::read_to_string(f).unwrap()) {
            if used == module {
                continue;
            }
            match rank(&used) {
                Some(r) if r < own => {}
                Some(_) => violations.push(format!(
                    "{}: `{module}` uses `{used}`, which is not below it",
                    f.display()
                )),
                None => violations.push(format!("{}: unknown module `{used}`", f.display())),
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    // Every listed layer exists, so the table stays true to the tree.
    for module in LAYERS.iter().flat_map(|l| l.iter()) {
        assert!(
            seen.contains(*module),
            "layer table names `{module}`, which is gone"
        );
    }
}

#[test]
fn the_layer_check_catches_an_upward_import() {
    // The checker itself: an upward use is found, a comment is not.
    let found =
        uses("use crate::train::Trainer;\n// crate::serve in a comment\nlet x = crate::eval::f();");
    assert_eq!(found, ["eval", "train"].map(String::from).into());
    assert!(rank("train").unwrap() > rank("eval").unwrap());
}

/// Fails naming every file over `MAX_LINES` lines.
fn assert_readable(files: &[PathBuf]) {
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).unwrap().lines().count();
            (n > MAX_LINES).then(|| format!("{} has {n} lines", f.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn source_files_stay_readable() {
    assert_readable(&src_files().1);
}

#[test]
fn clap_stays_in_the_command_line() {
    let (src, files) = src_files();
    let outside: Vec<String> = files
        .iter()
        .filter(|f| module_of(&src, f).is_some_and(|m| m != "cli"))
        .filter(|f| std::fs::read_to_string(f).unwrap().contains("clap::"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(outside.is_empty(), "clap outside cli/: {outside:?}");
}

#[test]
fn test_files_stay_readable() {
    let mut files = Vec::new();
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests"),
        &mut files,
    );
    assert_readable(&files);
}

/// The longest a function in `cli/` may be: a command parses, calls and prints.
const MAX_CLI_FN_LINES: usize = 80;

/// (name, lines) of every `fn` in `text`, from its signature to the closing brace at the
/// signature's indentation (rustfmt's layout).
fn function_lengths(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let code = line.trim_start();
        let indent = &line[..line.len() - code.len()];
        let rest = ["pub ", "pub(crate) ", "pub(super) "]
            .iter()
            .find_map(|p| code.strip_prefix(p))
            .unwrap_or(code);
        let rest = rest.strip_prefix("async ").unwrap_or(rest);
        let Some(sig) = rest.strip_prefix("fn ") else {
            continue;
        };
        let name: String = sig
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let close = format!("{indent}}}");
        if let Some(end) = lines[i + 1..].iter().position(|l| *l == close) {
            out.push((name, end + 2));
        }
    }
    out
}

#[test]
fn command_line_functions_stay_short() {
    let (src, files) = src_files();
    let long: Vec<String> = files
        .iter()
        .filter(|f| module_of(&src, f).is_some_and(|m| m == "cli"))
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            function_lengths(&text)
                .into_iter()
                .filter(|(_, n)| *n > MAX_CLI_FN_LINES)
                .map(|(name, n)| format!("{}: fn {name} has {n} lines", f.display()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        long.is_empty(),
        "over {MAX_CLI_FN_LINES} lines in cli/ (move the work below the command line):\n{}",
        long.join("\n")
    );
}

#[test]
fn the_length_check_measures_a_function() {
    let text = "fn short() {\n    x();\n}\n\n    pub fn inner(a: u8) {\n        if a {\n        }\n    }\n";
    assert_eq!(
        function_lengths(text),
        [("short".to_string(), 3), ("inner".to_string(), 4)]
    );
}

#[test]
fn kernels_know_nothing_of_the_model() {
    // Kernels sit below the model: they take slices, tensors and `config::Heads`.
    let (src, files) = src_files();
    let up: Vec<String> = files
        .iter()
        .filter(|f| module_of(&src, f).is_some_and(|m| m == "kernels"))
        .flat_map(|f| {
            let used = uses(&std::fs::read_to_string(f).unwrap());
            used.into_iter()
                .filter(|u| !["kernels", "runtime", "config"].contains(&u.as_str()))
                .map(move |u| format!("{} uses `{u}`", f.display()))
        })
        .collect();
    assert!(up.is_empty(), "{}", up.join("\n"));
}
