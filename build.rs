//! Records what the binary was built from (`git describe --always --dirty`, or "unknown"
//! outside a git checkout): the code version every experiment run's summary carries.

fn main() {
    let version = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CARD_GIT_VERSION={version}");
    // A commit moves the index; an edit, the sources.
    for path in [".git/HEAD", ".git/index", "src", "configs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
