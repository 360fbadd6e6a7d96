//! The house rules `src/lib.rs` states, checked against the code: the import table (which
//! top-level module may import which), and the module map naming every module there is.
//! No services needed: this reads the source files.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// `module -> modules it may import`, from the text block of `lib.rs`'s `//!` docs.
fn allowed_imports(lib: &str) -> BTreeMap<String, BTreeSet<String>> {
    let docs: Vec<&str> = lib
        .lines()
        .filter_map(|line| line.strip_prefix("//!"))
        .map(str::trim)
        .collect();
    let intro = docs
        .iter()
        .position(|line| line.starts_with("Imports run one way"))
        .expect("lib.rs states the import rules (`Imports run one way ...`)");
    let start = intro
        + docs[intro..]
            .iter()
            .position(|line| *line == "```text")
            .expect("the import table follows in a ```text block");
    let mut table = BTreeMap::new();
    for row in docs[start + 1..].iter().take_while(|l| **l != "```") {
        let (from, to) = row.split_once("->").expect("a row reads `a, b -> c, d`");
        let to = to.split('(').next().unwrap_or_default();
        let targets: BTreeSet<String> = to
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        for module in from.split(',').map(str::trim) {
            table.insert(module.to_owned(), targets.clone());
        }
    }
    table
}

/// The source without comments (doc links may point anywhere; imports may not).
fn code_of(source: &str) -> String {
    source
        .lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `code` of a module `depth` levels below the crate root (`src/relay/mod.rs`: 1,
/// `src/relay/pipeline/read.rs`: 3) with every `super::` chain that climbs to the root
/// written as `crate::`, so `super::super::store` counts like `crate::store`.
fn rooted(code: &str, depth: usize) -> String {
    let chain = "super::".repeat(depth);
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(i) = rest.find(&chain) {
        let climbs_further = rest[..i].ends_with("super::");
        out.push_str(&rest[..i]);
        out.push_str(if climbs_further { &chain } else { "crate::" });
        rest = &rest[i + chain.len()..];
    }
    out.push_str(rest);
    out
}

/// How many levels below the crate root the module in `file` sits.
fn depth_of(src: &Path, file: &Path) -> usize {
    let relative = file.strip_prefix(src).expect("a file under src/");
    let parts = relative.components().count();
    if relative.ends_with("mod.rs") {
        parts - 1
    } else {
        parts
    }
}

/// The top-level modules `code` names: `crate::x` paths and the first segments inside
/// `use crate::{x::..., y, ...}` groups.
fn imports_of(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // top-level items of the group: split at commas outside nested braces
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        item_start = true;
                        continue;
                    }
                    _ => {}
                }
                if item_start && !c.is_whitespace() {
                    found.insert(ident(&group[j..]));
                    item_start = false;
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|m| !m.is_empty());
    found
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src/") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`src/relay/batch.rs` -> `relay`).
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("a file under src/");
    let first = relative
        .components()
        .next()
        .expect("a path")
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

#[test]
fn imports_follow_the_table_in_lib_rs() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let allowed = allowed_imports(&lib);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut broken = Vec::new();
    let mut modules = BTreeSet::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" || module == "main" {
            continue;
        }
        modules.insert(module.clone());
        let Some(may) = allowed.get(&module) else {
            broken.push(format!(
                "module `{module}` has no row in lib.rs's import table"
            ));
            continue;
        };
        let code = code_of(&std::fs::read_to_string(file).expect("a source file"));
        // An inline `mod tests` sits one level deeper than its file.
        let depth = depth_of(&src, file);
        let code = match code.split_once("#[cfg(test)]\nmod tests {") {
            Some((module, tests)) => rooted(module, depth) + &rooted(tests, depth + 1),
            None => rooted(&code, depth),
        };
        for import in imports_of(&code) {
            if import != module && !may.contains(&import) {
                broken.push(format!(
                    "{} imports `{import}`, which `{module}` may not (lib.rs: {module} -> {})",
                    file.strip_prefix(&src).unwrap_or(file).display(),
                    may.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
    let stale: Vec<&String> = allowed.keys().filter(|m| !modules.contains(*m)).collect();
    assert!(
        stale.is_empty(),
        "lib.rs's table names modules that do not exist: {stale:?}"
    );
}

#[test]
fn the_table_has_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let allowed = allowed_imports(&lib);
    // Depth-first search from every module; a module reachable from itself is a cycle.
    for start in allowed.keys() {
        let mut stack: Vec<&String> = allowed[start].iter().collect();
        let mut seen = BTreeSet::new();
        while let Some(next) = stack.pop() {
            assert_ne!(next, start, "the import table lets `{start}` reach itself");
            if seen.insert(next) {
                stack.extend(allowed.get(next).into_iter().flatten());
            }
        }
    }
}

#[test]
fn the_module_map_names_every_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';').to_owned())
        .collect();
    let mapped: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//! - [`"))
        .filter_map(|l| l.split_once("`]"))
        .map(|(name, _)| name.to_owned())
        .collect();
    assert_eq!(
        declared, mapped,
        "lib.rs's `pub mod`s and its module map differ"
    );
    let tabled: BTreeSet<String> = allowed_imports(&lib).into_keys().collect();
    assert_eq!(
        declared, tabled,
        "lib.rs's `pub mod`s and its import table differ"
    );
}

#[test]
fn the_import_reader_sees_paths_and_groups() {
    let code = "use crate::{config::{Config, TableName}, event::OutboxEvent};\n\
                let x = crate::store::listen(a);\nuse crate::backoff;";
    let found: Vec<String> = imports_of(code).into_iter().collect();
    assert_eq!(found, ["backoff", "config", "event", "store"]);
    assert!(imports_of(&code_of("// see crate::relay::policy")).is_empty());
    // `super::` chains that reach the root count as `crate::`; shorter ones are siblings
    let nested = "use super::super::relay::policy;\nuse super::sibling;";
    let found: Vec<String> = imports_of(&rooted(nested, 2)).into_iter().collect();
    assert_eq!(found, ["relay"]);
    let src = Path::new("/src");
    assert_eq!(depth_of(src, Path::new("/src/relay/mod.rs")), 1);
    assert_eq!(depth_of(src, Path::new("/src/relay/pipeline/read.rs")), 3);
}
