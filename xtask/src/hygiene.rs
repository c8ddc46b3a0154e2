//! Repository hygiene checks, run as unit tests (`cargo test -p xtask`, and so by
//! `cargo xtask test`).
//!
//! The facts the code relies on live in `docs/`. Notes kept outside the repository (a
//! `shared` folder beside the checkout) do not exist for anyone who clones it, so no file in
//! the repository may point there. The check walks the working tree, so a new file fails it
//! before it is even committed.

use std::fs;
use std::path::{Path, PathBuf};

/// What no file may mention: paths to notes outside the repository. Spelled in pieces, so
/// that this file does not mention them itself.
const FORBIDDEN: [&str; 2] = [concat!("..", "/shared/"), concat!("/work", "/shared")];

/// One line that mentions a forbidden path.
#[derive(Debug, PartialEq, Eq)]
struct Mention {
    /// Relative to the scanned root, with `/` separators.
    path: String,
    /// 1-based.
    line: usize,
    text: String,
}

impl std::fmt::Display for Mention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.path, self.line, self.text.trim())
    }
}

/// Every line under `root` that mentions a [`FORBIDDEN`] path, in path order. Skips `.git`,
/// every `target` directory, `skip_dir` (Cargo's target directory when it lies elsewhere
/// inside `root`) and files that are not UTF-8 text.
fn mentions(root: &Path, skip_dir: Option<&Path>) -> std::io::Result<Vec<Mention>> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mut entries = fs::read_dir(&dir)?.collect::<Result<Vec<_>, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                let name = entry.file_name();
                if name != ".git" && name != "target" && Some(path.as_path()) != skip_dir {
                    pending.push(path);
                }
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let rel = relative(root, &path);
            // Binary files (images, archives) are not text anyone reads for references.
            let Ok(text) = String::from_utf8(fs::read(&path)?) else {
                continue;
            };
            for (i, line) in text.lines().enumerate() {
                if FORBIDDEN.iter().any(|p| line.contains(p)) {
                    found.push(Mention {
                        path: rel.clone(),
                        line: i + 1,
                        text: line.to_string(),
                    });
                }
            }
        }
    }
    found.sort_by(|a, b| (&a.path, a.line).cmp(&(&b.path, b.line)));
    Ok(found)
}

fn relative(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_points_outside_the_repository() {
        let root = crate::root();
        let target = crate::target_dir();
        let found = mentions(&root, Some(&target)).expect("the repository can be read");
        let list: Vec<String> = found.iter().map(Mention::to_string).collect();
        assert!(
            found.is_empty(),
            "{} line(s) point at notes outside the repository; put the facts in docs/ and \
             cite that instead:\n{}",
            found.len(),
            list.join("\n")
        );
    }

    /// A scratch directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let dir =
                std::env::temp_dir().join(format!("roam-hygiene-{}-{nanos}", std::process::id()));
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn write(&self, rel: &str, bytes: &[u8]) {
            let path = self.0.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, bytes).unwrap();
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn mentions_are_found_with_file_and_line_and_build_output_is_skipped() {
        let s = Scratch::new();
        let [up, abs] = FORBIDDEN;
        s.write(
            "README.md",
            format!("intro\nsee {up}DESIGN.md\n").as_bytes(),
        );
        s.write(
            "src/a.rs",
            format!("// fine\n// fine\n// from {abs}/spec/x.md\n").as_bytes(),
        );
        s.write("docs/ok.md", b"see docs/ixgbevf.md and a shared/ folder\n");
        s.write(
            "target/debug/out.txt",
            format!("{up} in build output\n").as_bytes(),
        );
        s.write(
            "out/target/x.txt",
            format!("{abs} in a nested target\n").as_bytes(),
        );
        s.write(
            ".git/COMMIT_EDITMSG",
            format!("{up} in git's own files\n").as_bytes(),
        );
        s.write(
            "cargo-out/y.txt",
            format!("{up} in CARGO_TARGET_DIR\n").as_bytes(),
        );
        s.write("blob.bin", &[b"\xff\xfe", up.as_bytes(), b"\x00"].concat());
        let found = mentions(&s.0, Some(&s.0.join("cargo-out"))).unwrap();
        let at: Vec<(&str, usize)> = found.iter().map(|m| (m.path.as_str(), m.line)).collect();
        assert_eq!(at, [("README.md", 2), ("src/a.rs", 3)]);
        assert_eq!(
            found[0].to_string(),
            format!("README.md:2: see {up}DESIGN.md")
        );
    }
}
