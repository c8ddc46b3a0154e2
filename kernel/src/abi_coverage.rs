//! Host test: the kernel defines every `sys_*` function that hermit-abi declares.
//!
//! It reads hermit-abi's real `src/lib.rs` from Cargo's registry (the version the workspace
//! lock file resolved, under `$CARGO_HOME`, default `~/.cargo`; `HERMIT_ABI_SRC` overrides
//! the path) and checks that `abi/check.rs`, which proves each signature at compile time,
//! lists each declared symbol with the declaration that carries it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The hermit-abi version the workspace resolved for the kernel (0.5.x).
fn locked_version(lock: &str) -> String {
    let mut versions: Vec<String> = Vec::new();
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "name = \"hermit-abi\""
            && let Some(v) = lines
                .next()
                .and_then(|l| l.trim().strip_prefix("version = \""))
        {
            versions.push(v.trim_end_matches('"').to_string());
        }
    }
    let matching: Vec<_> = versions
        .into_iter()
        .filter(|v| v.starts_with("0.5."))
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "expected one hermit-abi 0.5.x in Cargo.lock, found {matching:?}"
    );
    matching[0].clone()
}

fn hermit_abi_source() -> PathBuf {
    if let Some(path) = std::env::var_os("HERMIT_ABI_SRC") {
        return PathBuf::from(path);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lock = std::fs::read_to_string(manifest.join("../Cargo.lock"))
        .expect("reading the workspace Cargo.lock");
    let version = locked_version(&lock);
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cargo")
        });
    let registry = cargo_home.join("registry/src");
    let dirs = std::fs::read_dir(&registry)
        .unwrap_or_else(|e| panic!("reading {}: {e}", registry.display()));
    for dir in dirs.flatten() {
        let candidate = dir.path().join(format!("hermit-abi-{version}/src/lib.rs"));
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "hermit-abi {version} source not found under {}; set HERMIT_ABI_SRC",
        registry.display()
    );
}

/// Symbol name -> the Rust name hermit-abi declares it under, for every function in its
/// extern block: `#[link_name = "sys_x"] pub fn y(` and plain `fn sys_x(`.
fn declared(source: &str) -> BTreeMap<String, String> {
    let mut symbols = BTreeMap::new();
    let mut pending_link_name: Option<String> = None;
    for line in source.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("#[link_name = \"") {
            pending_link_name = Some(rest.trim_end_matches("\"]").to_string());
            continue;
        }
        let decl = line
            .strip_prefix("pub fn ")
            .or_else(|| line.strip_prefix("fn "));
        if let Some(decl) = decl {
            let name = decl.split('(').next().unwrap_or_default().to_string();
            match pending_link_name.take() {
                Some(symbol) => {
                    symbols.insert(symbol, name);
                }
                None if name.starts_with("sys_") => {
                    symbols.insert(name.clone(), name);
                }
                None => {}
            }
        }
    }
    symbols
}

/// Symbol -> hermit-abi name from the `same_signature!` lines of abi/check.rs
/// (`module::sys_x = h::y : type;`), plus the two private ones checked by type alone.
fn checked(source: &str) -> BTreeMap<String, String> {
    let mut symbols = BTreeMap::new();
    for line in source.lines().map(str::trim) {
        if let Some((ours, rest)) = line.split_once(" = h::") {
            let symbol = ours.rsplit("::").next().unwrap_or_default().to_string();
            let theirs = rest.split(' ').next().unwrap_or_default().to_string();
            symbols.insert(symbol, theirs);
        } else if let Some(rest) = line.strip_prefix("const _: ")
            && let Some(path) = rest.split(" = ").nth(1)
        {
            let symbol = path
                .trim_end_matches(';')
                .rsplit("::")
                .next()
                .unwrap_or_default()
                .to_string();
            if symbol.starts_with("sys_") {
                symbols.insert(symbol.clone(), symbol);
            }
        }
    }
    symbols
}

#[test]
fn every_hermit_abi_function_is_defined_with_its_declaration_checked() {
    let path = hermit_abi_source();
    let hermit = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let declared = declared(&hermit);
    assert!(
        declared.len() >= 80,
        "parsed only {} declarations from {}",
        declared.len(),
        path.display()
    );

    let check_rs = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/abi/check.rs");
    let checked = checked(&std::fs::read_to_string(&check_rs).expect("reading abi/check.rs"));

    let missing: Vec<_> = declared
        .keys()
        .filter(|s| !checked.contains_key(*s))
        .collect();
    assert!(
        missing.is_empty(),
        "declared by {} but not defined and checked: {missing:?}",
        path.display()
    );
    let extra: Vec<_> = checked
        .keys()
        .filter(|s| !declared.contains_key(*s))
        .collect();
    assert!(
        extra.is_empty(),
        "checked but not declared by hermit-abi: {extra:?}"
    );
    for (symbol, name) in &declared {
        assert_eq!(
            &checked[symbol], name,
            "{symbol} is checked against the wrong declaration"
        );
    }
}

#[test]
fn the_parsers_understand_both_declaration_forms() {
    let hermit = "extern \"C\" {\n\t#[link_name = \"sys_write\"]\n\tpub fn write(fd: i32) -> isize;\n\tfn sys_get_priority() -> u8;\n}\npub fn isatty(_fd: c_int) -> bool {";
    let d = declared(hermit);
    assert_eq!(d.len(), 2);
    assert_eq!(d["sys_write"], "write");
    assert_eq!(d["sys_get_priority"], "sys_get_priority");
    let c = checked(
        "    io::sys_write = h::write : unsafe extern \"C\" fn(i32) -> isize;\nconst _: Fn0<u8> = stubs::sys_get_priority;\n",
    );
    assert_eq!(c["sys_write"], "write");
    assert_eq!(c["sys_get_priority"], "sys_get_priority");
}
