//! Corpora as lists of documents: the embedded default and user files/directories.

use super::clean::{decode_bytes, looks_binary};
use super::Document;
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

const ALICE: &str = include_str!("../../data/embedded/carroll-alice.txt");

/// The embedded default corpus (Alice's Adventures in Wonderland, public domain), one document
/// per chapter: 12 documents named `carroll-alice/chapter-01` … `chapter-12`. The title line
/// before the first chapter belongs to chapter 1. Each text is trimmed and ends with a newline.
pub fn embedded_documents() -> Vec<Document> {
    split_chapters("carroll-alice", &ALICE.replace("\r\n", "\n"))
}

/// Split a book at lines whose trimmed text starts with `CHAPTER `.
fn split_chapters(book: &str, text: &str) -> Vec<Document> {
    let mut starts: Vec<usize> = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with("CHAPTER ") {
            starts.push(offset);
        }
        offset += line.len();
    }
    if starts.is_empty() {
        starts.push(0);
    }
    starts[0] = 0; // any preamble goes with the first chapter
    starts.push(text.len());
    starts
        .windows(2)
        .enumerate()
        .map(|(i, w)| Document {
            name: format!("{book}/chapter-{:02}", i + 1),
            text: format!("{}\n", text[w[0]..w[1]].trim()),
        })
        .collect()
}

/// Whether a file found while walking a directory is a corpus file: `*.txt` or no extension,
/// not hidden.
fn is_corpus_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .map(|n| n.to_string_lossy().starts_with('.'))
        .unwrap_or(true);
    if hidden {
        return false;
    }
    match path.extension() {
        None => true,
        Some(ext) => ext.eq_ignore_ascii_case("txt"),
    }
}

/// Collect corpus files under `dir` recursively, in sorted order (hidden entries skipped).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot read directory {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot read directory {}", dir.display()))?;
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .map(|n| n.to_string_lossy().starts_with('.'))
            .unwrap_or(true);
        if path.is_dir() {
            if !hidden {
                walk(&path, out)?;
            }
        } else if is_corpus_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Read one file as text (UTF-8 with Latin-1 fallback, CRLF → LF); errors if it is binary.
fn read_text_file(path: &Path) -> Result<String> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if looks_binary(&bytes) {
        bail!(
            "{} looks like a binary file (NUL bytes or mostly non-text), not a text corpus",
            path.display()
        );
    }
    Ok(decode_bytes(&bytes).0.replace("\r\n", "\n"))
}

/// Read text files and directories into documents, one document per file.
///
/// Directories are walked recursively in sorted order, taking `*.txt` files and files without
/// an extension (like Brown's `ca01`); hidden files and directories are skipped. Files named
/// explicitly are read whatever their extension. Text is UTF-8 with a Latin-1 fallback.
/// Whitespace-only files found inside a directory are skipped; an explicitly named empty file is
/// an error, as are a missing path, a binary file, a directory without text files and a corpus
/// without any non-whitespace text.
pub fn read_documents(paths: &[PathBuf]) -> Result<Vec<Document>> {
    if paths.is_empty() {
        bail!("no input paths given");
    }
    let mut docs = Vec::new();
    for root in paths {
        if !root.exists() {
            bail!("input path {} does not exist", root.display());
        }
        if root.is_dir() {
            let mut files = Vec::new();
            walk(root, &mut files)?;
            if files.is_empty() {
                bail!(
                    "directory {} contains no text files (*.txt or files without extension)",
                    root.display()
                );
            }
            for file in files {
                let text = read_text_file(&file)?;
                if !text.trim().is_empty() {
                    docs.push(Document {
                        name: file.display().to_string(),
                        text,
                    });
                }
            }
        } else {
            let text = read_text_file(root)?;
            if text.trim().is_empty() {
                bail!("{} is empty (no non-whitespace text)", root.display());
            }
            docs.push(Document {
                name: root.display().to_string(),
                text,
            });
        }
    }
    if docs.is_empty() {
        let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        bail!(
            "empty corpus: no non-whitespace text in {}",
            list.join(", ")
        );
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chapters_split() {
        let docs = split_chapters("b", "Title\n\nCHAPTER I. A\ntext\n  CHAPTER II\nmore\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].text, "Title\n\nCHAPTER I. A\ntext\n");
        assert_eq!(docs[1].text, "CHAPTER II\nmore\n");
        assert_eq!(docs[1].name, "b/chapter-02");
    }
}
