//! The dependency order of host-vmm's modules (ARCHITECTURE.md, "host-vmm's layers"),
//! checked on the source: every `crate::MODULE` a module's code names must be one it may
//! use. Comments are skipped (a doc link may point anywhere); `test_utils` is for tests.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each top-level module and the modules its code may name.
const ALLOWED: &[(&str, &[&str])] = &[
    ("config", &[]),
    ("pause", &[]),
    ("events", &[]),
    ("memory", &[]),
    ("peer", &[]),
    ("arch", &["config"]),
    ("loader", &["arch", "config", "memory"]),
    ("io_thread", &["pause"]),
    ("devices", &["config", "io_thread", "memory", "pause"]),
    ("tap", &["devices"]),
    ("roaming", &["config", "devices", "tap"]),
    ("kvm", &["arch", "config", "devices", "memory"]),
    (
        "device_manager",
        &[
            "config",
            "devices",
            "io_thread",
            "kvm",
            "memory",
            "roaming",
            "tap",
        ],
    ),
    ("vcpu_gate", &["devices", "kvm", "pause"]),
    (
        "vmm",
        &[
            "arch",
            "config",
            "device_manager",
            "devices",
            "io_thread",
            "kvm",
            "loader",
            "memory",
            "pause",
            "vcpu_gate",
        ],
    ),
    (
        "migration",
        &[
            "config",
            "device_manager",
            "devices",
            "kvm",
            "memory",
            "pause",
            "roaming",
            "vcpu_gate",
            "vmm",
        ],
    ),
    ("api", &["config", "devices", "events", "migration", "peer"]),
    // The home agent runs beside the VMM, never inside it: events only.
    ("mobility", &["events"]),
    (
        "control",
        &[
            "api",
            "config",
            "device_manager",
            "devices",
            "events",
            "kvm",
            "memory",
            "migration",
            "pause",
            "roaming",
            "vcpu_gate",
            "vmm",
        ],
    ),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The `.rs` files of a module (`NAME.rs` or the folder `NAME/`).
fn files(module: &str) -> Vec<PathBuf> {
    let dir = src().join(module);
    let file = src().join(format!("{module}.rs"));
    let mut out = Vec::new();
    if file.is_file() {
        out.push(file);
    }
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out
}

/// The `crate::NAME` modules named in the code of `text` (comments skipped), with lines.
fn named_modules(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                out.push((name, i + 1));
            }
        }
        // `use crate::{a, b}` names several at once.
        if let Some(at) = code.find("crate::{") {
            let inner = &code[at + "crate::{".len()..];
            for part in inner.split([',', '}']) {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push((name, i + 1));
                }
            }
        }
    }
    out
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let known: BTreeSet<&str> = ALLOWED.iter().map(|(m, _)| *m).collect();
    let mut wrong = Vec::new();
    for (module, allowed) in ALLOWED {
        let paths = files(module);
        assert!(!paths.is_empty(), "module {module} has no source files");
        for path in paths {
            let text = std::fs::read_to_string(&path).expect("readable source");
            for (name, line) in named_modules(&text) {
                if name == *module || name == "test_utils" || !known.contains(name.as_str()) {
                    continue;
                }
                if !allowed.contains(&name.as_str()) {
                    wrong.push(format!(
                        "{}:{line}: {module} uses crate::{name}",
                        path.strip_prefix(src()).unwrap_or(&path).display()
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layer order (ARCHITECTURE.md):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn every_top_level_module_has_a_place_in_the_order() {
    let known: BTreeSet<&str> = ALLOWED.iter().map(|(m, _)| *m).collect();
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("lib.rs");
    for line in lib.lines() {
        if let Some(name) = line.trim().strip_prefix("pub mod ") {
            let name = name.trim_end_matches(';');
            assert!(
                known.contains(name),
                "module {name} is not in tests/layers.rs's ALLOWED table: give it its layer"
            );
        }
    }
}

#[test]
fn the_checker_sees_an_upward_import() {
    let found = named_modules("use crate::control::Controller;\n// crate::api in a comment\n");
    assert_eq!(found, vec![("control".to_string(), 1)]);
    let found = named_modules("use crate::{vmm, migration::source};");
    let names: Vec<_> = found.into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"vmm".to_string()) && names.contains(&"migration".to_string()));
}

#[test]
fn there_is_one_post_arrival_path() {
    let mut defs = Vec::new();
    for (module, _) in ALLOWED {
        for path in files(module) {
            let text = std::fs::read_to_string(&path).expect("readable source");
            for (i, line) in text.lines().enumerate() {
                if line.contains("fn after_arrival") {
                    defs.push(format!("{}:{}", path.display(), i + 1));
                }
            }
        }
    }
    assert_eq!(defs.len(), 1, "post-arrival paths: {defs:?}");
}
