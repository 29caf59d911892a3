//! The module rule of ARCHITECTURE.md: no module imports one that imports it back. Reads each
//! crate's `src/` and follows `crate::a::b` and `super::x` paths between its module files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Module path of a source file: `src/lib.rs` → `[]`, `src/engine/mod.rs` → `[engine]`,
/// `src/engine/agents.rs` → `[engine, agents]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Code outside `#[cfg(test)]` modules (tests may use anything).
fn without_tests(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod ").map_or(text, |i| &text[..i])
}

/// The modules of this crate that `text` (in module `me`) names by path.
fn imports(text: &str, me: &[String], known: &BTreeSet<Vec<String>>) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let (base, skip): (Vec<String>, usize) = if rest.starts_with("crate::")
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        {
            (Vec::new(), "crate::".len())
        } else if rest.starts_with("super::")
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        {
            let mut b = me.to_vec();
            b.pop();
            (b, "super::".len())
        } else {
            i += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        // The longest module prefix of the path that follows.
        let path: String = rest[skip..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let mut target = base.clone();
        let mut best = base;
        for seg in path.split("::").filter(|s| !s.is_empty()) {
            target.push(seg.to_owned());
            if known.contains(&target) {
                best = target.clone();
            } else {
                break;
            }
        }
        if best != me {
            out.insert(best);
        }
        i += skip;
    }
    out
}

/// Pairs of modules that import each other, in every crate under `crates/`.
pub fn cycles(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    for krate in std::fs::read_dir(root.join("crates")).context("crates/")? {
        let src = krate?.path().join("src");
        if !src.is_dir() {
            continue;
        }
        let mut files = Vec::new();
        rust_files(&src, &mut files).with_context(|| format!("reading {}", src.display()))?;
        let modules: BTreeMap<Vec<String>, PathBuf> = files
            .iter()
            .filter(|f| !f.starts_with(src.join("bin")))
            .map(|f| (module_of(&src, f), f.clone()))
            .collect();
        let known: BTreeSet<Vec<String>> = modules.keys().cloned().collect();
        let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
        for (m, f) in &modules {
            let text = std::fs::read_to_string(f).with_context(|| format!("{}", f.display()))?;
            edges.insert(m.clone(), imports(without_tests(&text), m, &known));
        }
        for (a, targets) in &edges {
            for b in targets {
                if a < b && edges.get(b).is_some_and(|t| t.contains(a)) {
                    let name = |m: &Vec<String>| {
                        if m.is_empty() {
                            "lib".to_owned()
                        } else {
                            m.join("::")
                        }
                    };
                    found.push(format!(
                        "{}: {} <-> {}",
                        src.parent()
                            .and_then(Path::file_name)
                            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                        name(a),
                        name(b)
                    ));
                }
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_resolve_to_the_longest_known_module() {
        let known: BTreeSet<Vec<String>> = [
            vec![],
            vec!["engine".to_owned()],
            vec!["engine".to_owned(), "model".to_owned()],
            vec!["error".to_owned()],
        ]
        .into_iter()
        .collect();
        let me = vec!["engine".to_owned(), "agents".to_owned()];
        let found = imports(
            "use super::*;\nuse crate::error::EngineError;\nlet x = super::model::AgentRt::new();",
            &me,
            &known,
        );
        let expected: BTreeSet<Vec<String>> = [
            vec!["engine".to_owned()],
            vec!["error".to_owned()],
            vec!["engine".to_owned(), "model".to_owned()],
        ]
        .into_iter()
        .collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn the_workspace_has_no_module_cycles() {
        // FERRY_MODULES_ROOT points the check at another checkout.
        let root = std::env::var_os("FERRY_MODULES_ROOT").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
            PathBuf::from,
        );
        let found = cycles(&root).expect("read the crates");
        assert!(
            found.is_empty(),
            "modules that import each other: {found:#?}"
        );
    }
}
