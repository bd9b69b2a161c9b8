//! The modules of `sync-runtime` form layers: their dependency graph has no cycle.
//!
//! The check reads the sources as plain text (no parser, no extra dependency):
//!
//! - A node is a top-level module: `src/foo.rs`, `src/foo/mod.rs` and every file
//!   under `src/foo/` are node `foo`. `src/lib.rs` is the crate root, not a node.
//! - A node depends on every other node its files name through a `crate::` path:
//!   `use crate::a::X;`, groups such as `use crate::{a::{self, X}, b::Y};`, and
//!   paths in code such as `crate::a::f(x)`. A `super::` path that climbs to the
//!   crate root (`super::` in `src/foo.rs`, `super::super::` in `src/foo/bar.rs` or
//!   in an inline `mod` of `src/foo.rs`) counts as a `crate::` path; one that stays
//!   inside the node does not.
//! - `crate::Name`, where `Name` is imported at the top level of `lib.rs` (such as
//!   `pub use db::{Options, SyncDb};`), names the module it comes from. A segment
//!   that is neither a node nor such a name (`crate::params`, a macro) is ignored,
//!   and so is `$crate::`.
//! - Comments, string and char literals (raw and byte strings too) and test code
//!   are ignored: an item under `#[cfg(test)]` is skipped up to its `;` or the end
//!   of its braces, and a file module declared `#[cfg(test)] mod name;` is not read.
//!
//! A cycle is reported with, for each of its edges, the first line that creates it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// A token of code: an identifier (or number), `::` or another single character.
#[derive(Clone)]
struct Tok {
    text: String,
    line: usize,
}

/// The tokens of a source, without whitespace, comments and string and char literals.
fn tokens(source: &str) -> Vec<Tok> {
    let c: Vec<char> = source.chars().collect();
    let at = |k: usize| c.get(k).copied().unwrap_or('\0');
    let is_ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let find = |from: usize, ch: char| (from..c.len()).find(|&k| c[k] == ch);
    let (mut toks, mut line, mut i) = (Vec::new(), 1, 0);
    while i < c.len() {
        let start = i;
        let r = i + usize::from(matches!(at(i), 'b' | 'c')); // `r"…"`, `br#"…"#`, `cr"…"`
        let hashes = (r + 1..).take_while(|&k| at(k) == '#').count();
        if at(r) == 'r' && at(r + 1 + hashes) == '"' {
            i = r + 2 + hashes;
            while i < c.len() && !(c[i] == '"' && (1..=hashes).all(|n| at(i + n) == '#')) {
                i += 1;
            }
            i += 1 + hashes;
        } else if (at(i), at(i + 1)) == ('/', '/') {
            i = find(i, '\n').unwrap_or(c.len());
        } else if (at(i), at(i + 1)) == ('/', '*') {
            let mut depth = 0; // block comments nest
            while i < c.len() {
                let pair = (at(i), at(i + 1));
                depth += i32::from(pair == ('/', '*')) - i32::from(pair == ('*', '/'));
                i += 1 + usize::from(matches!(pair, ('/', '*') | ('*', '/')));
                if depth == 0 {
                    break;
                }
            }
        } else if at(i) == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += 1 + usize::from(c[i] == '\\');
            }
            i += 1;
        } else if at(i) == '\'' && (at(i + 1) == '\\' || at(i + 2) == '\'') {
            // `'x'`, `'\''`, `'\u{…}'`; a lifetime `'a` is code.
            let from = i + 2 + usize::from(at(i + 1) == '\\');
            i = find(from, '\'').map_or(c.len(), |k| k + 1);
        } else {
            i += match (at(i), at(i + 1)) {
                (ch, _) if is_ident(ch) => c[i..].iter().take_while(|&&ch| is_ident(ch)).count(),
                (':', ':') => 2,
                _ => 1,
            };
            let text: String = c[start..i].iter().collect();
            if !c[start].is_whitespace() {
                toks.push(Tok { text, line });
            }
        }
        i = i.min(c.len());
        line += c[start..i].iter().filter(|&&ch| ch == '\n').count();
    }
    toks
}

fn text(toks: &[Tok], k: usize) -> &str {
    toks.get(k).map_or("", |t| t.text.as_str())
}

fn is_cfg_test(toks: &[Tok], k: usize) -> bool {
    let attribute = ["#", "[", "cfg", "(", "test", ")", "]"];
    attribute
        .iter()
        .enumerate()
        .all(|(n, s)| text(toks, k + n) == *s)
}

/// The tokens of a source's code: without `#[cfg(test)]` items either.
fn code(source: &str) -> Vec<Tok> {
    let toks = tokens(source);
    let (mut out, mut i) = (Vec::new(), 0);
    while i < toks.len() {
        if !is_cfg_test(&toks, i) {
            out.push(toks[i].clone());
            i += 1;
            continue;
        }
        // Skip the item: up to its `;` (or `,` for a field), or to the end of its `{…}`.
        let (mut nest, mut angle, mut braces) = (0, 0, 0);
        i += 7;
        while i < toks.len() {
            let t = text(&toks, i);
            match t {
                "(" | "[" => nest += 1,
                ")" | "]" => nest -= 1,
                "<" => angle += 1,
                ">" if !matches!(text(&toks, i - 1), "-" | "=") => angle -= 1,
                "{" => braces += 1,
                "}" if braces == 0 => break, // the end of the enclosing block
                "}" => braces -= 1,
                _ => {}
            }
            i += 1;
            let ends = t == ";" || t == "}" || (t == "," && angle == 0);
            if nest == 0 && braces == 0 && ends {
                break;
            }
        }
    }
    out
}

/// Walks the use tree (or path) at `toks[*i]`, pushing `[first segment, name]` for
/// each leaf: `a::{self, X as Y}` gives `[a, a]` and `[a, Y]`, a glob `[a, *]`.
fn walk(toks: &[Tok], i: &mut usize, head: Option<&str>, prev: &str, out: &mut Vec<[String; 2]>) {
    let seg = text(toks, *i);
    if seg == "{" {
        *i += 1;
        while !matches!(text(toks, *i), "}" | "") {
            walk(toks, i, head, prev, out);
            while !matches!(text(toks, *i), "," | "}" | "") {
                *i += 1;
            }
            *i += usize::from(text(toks, *i) == ",");
        }
        *i += 1;
    } else if !seg.starts_with(|c: char| c.is_alphanumeric() || c == '_') {
        out.extend(head.map(|h| [h.to_string(), "*".to_string()])); // `*`, or `::<T>`
    } else {
        *i += 1;
        let head = head.unwrap_or(seg);
        if text(toks, *i) == "::" {
            *i += 1;
            return walk(toks, i, Some(head), seg, out);
        }
        let name = match (text(toks, *i), seg) {
            ("as", _) => text(toks, *i + 1),
            (_, "self") => prev,
            _ => seg,
        };
        out.push([head.to_string(), name.to_string()]);
    }
}

/// What the segment after `crate::` can name: a node, or a name imported at the
/// top level of `lib.rs`, which stands for the node it comes from.
struct Names {
    nodes: BTreeSet<String>,
    reexports: BTreeMap<String, String>,
}

fn node_of(module: &str) -> &str {
    module.split_once("::").map_or(module, |(node, _)| node)
}

fn names(files: &[(String, String)], root: &str) -> Names {
    let nodes: BTreeSet<String> = files.iter().map(|(m, _)| node_of(m).to_string()).collect();
    let (toks, mut reexports, mut braces) = (code(root), BTreeMap::new(), 0);
    for (i, t) in toks.iter().enumerate() {
        braces += i32::from(t.text == "{") - i32::from(t.text == "}");
        if t.text != "use" || braces != 0 {
            continue;
        }
        let mut j = i + 1;
        j += match (text(&toks, j), text(&toks, j + 1)) {
            ("crate" | "self", "::") => 2,
            ("::", _) => 1,
            _ => 0,
        };
        let mut leaves = Vec::new();
        walk(&toks, &mut j, None, "", &mut leaves);
        for [head, name] in leaves {
            if nodes.contains(&head) && name != "*" && name != "_" {
                reexports.insert(name, head);
            }
        }
    }
    Names { nodes, reexports }
}

/// The nodes that a file of module `module` (`foo` or `foo::bar`) names, each with
/// the line naming it, in source order.
fn references(module: &str, source: &str, names: &Names) -> Vec<(String, usize)> {
    let toks = code(source);
    let (mut inline_mods, mut braces, mut out) = (Vec::new(), 0, Vec::new());
    for i in 0..toks.len() {
        let prev = if i == 0 { "" } else { text(&toks, i - 1) };
        let mut start = None;
        match (text(&toks, i), text(&toks, i + 1)) {
            ("{", _) => {
                braces += 1;
                if i >= 2 && text(&toks, i - 2) == "mod" {
                    inline_mods.push(braces);
                }
            }
            ("}", _) => {
                if inline_mods.last() == Some(&braces) {
                    inline_mods.pop();
                }
                braces -= 1;
            }
            ("crate", "::") if !matches!(prev, "$" | "::") => start = Some(i + 2),
            ("super", "::") if prev != "::" => {
                let supers = (0..)
                    .take_while(|n| text(&toks, i + 2 * n) == "super")
                    .count();
                let depth = module.split("::").count() + inline_mods.len();
                start = (supers >= depth).then_some(i + 2 * supers);
            }
            _ => {}
        }
        let Some(mut j) = start else { continue };
        let mut leaves = Vec::new();
        walk(&toks, &mut j, None, "", &mut leaves);
        for [head, _] in leaves {
            let node = names.nodes.get(&head).or(names.reexports.get(&head));
            out.extend(node.map(|n| (n.clone(), toks[i].line)));
        }
    }
    out
}

/// The dependency graph of the nodes of `files` (`(module, source)`, where the module
/// is `foo` for `src/foo.rs` and `foo::bar` for `src/foo/bar.rs`); `root` is `lib.rs`.
fn graph(files: &[(String, String)], root: &str) -> Graph {
    let names = names(files, root);
    let mut graph = Graph::new();
    for (module, source) in files {
        let node = node_of(module);
        let deps = graph.entry(node.to_string()).or_default();
        for (target, _) in references(module, source, &names) {
            if target != node {
                deps.insert(target);
            }
        }
    }
    graph
}

/// One cycle of the graph as a path (`["db", "remote", "db"]`), if there is one.
fn cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        graph: &Graph,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            return Some([&path[at..], &[node.to_string()]].concat());
        }
        if !done.insert(node.to_string()) {
            return None;
        }
        path.push(node.to_string());
        let found = graph
            .get(node)
            .into_iter()
            .flatten()
            .find_map(|next| visit(graph, next, path, done));
        path.pop();
        found
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(graph, node, &mut Vec::new(), &mut done))
}

/// The layers of an acyclic graph: a node's layer is one above its highest dependency.
fn layers(graph: &Graph) -> Vec<Vec<&str>> {
    fn layer<'g>(graph: &'g Graph, node: &'g str, memo: &mut BTreeMap<&'g str, usize>) -> usize {
        if let Some(&l) = memo.get(node) {
            return l;
        }
        let deps = graph.get(node).into_iter().flatten();
        let l = deps.map(|d| layer(graph, d, memo) + 1).max().unwrap_or(0);
        memo.insert(node, l);
        l
    }
    let (mut memo, mut out) = (BTreeMap::new(), Vec::<Vec<&str>>::new());
    for node in graph.keys() {
        let l = layer(graph, node, &mut memo);
        out.resize(out.len().max(l + 1), Vec::new());
        out[l].push(node);
    }
    out
}

/// A file of the runtime: its path in the crate, its module and its source.
struct File {
    path: String,
    module: String,
    source: String,
}

/// The runtime's files, by path, without `lib.rs` and test-only file modules; and `lib.rs`.
fn runtime_sources() -> (Vec<File>, String) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (mut files, mut dirs) = (Vec::new(), vec![src.clone()]);
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(dir).expect("a readable directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(&src).expect("a file under src");
                let rel = rel.to_string_lossy().replace('\\', "/");
                let name = rel.trim_end_matches(".rs");
                let module = name.strip_suffix("/mod").unwrap_or(name).replace('/', "::");
                let source = fs::read_to_string(&path).expect("a readable source");
                let path = format!("src/{rel}");
                files.push(File {
                    path,
                    module,
                    source,
                });
            }
        }
    }
    // Not nodes: `lib.rs`, and the files of a `#[cfg(test)] mod name;` and all under it.
    let mut skipped = vec!["lib::".to_string()];
    for file in &files {
        let toks = tokens(&file.source);
        for i in (0..toks.len()).filter(|&i| is_cfg_test(&toks, i)) {
            let k = i + 7 + usize::from(text(&toks, i + 7) == "pub");
            if text(&toks, k) == "mod" && text(&toks, k + 2) == ";" {
                let module = format!("{}::{}::", file.module, text(&toks, k + 1));
                skipped.push(module.strip_prefix("lib::").unwrap_or(&module).to_string());
            }
        }
    }
    files.retain(|f| {
        !skipped
            .iter()
            .any(|s| format!("{}::", f.module).starts_with(s))
    });
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let root = fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    (files, root)
}

fn modules(files: &[File]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|f| (f.module.clone(), f.source.clone()))
        .collect()
}

#[test]
fn the_runtime_modules_form_layers() {
    let (files, root) = runtime_sources();
    let graph = graph(&modules(&files), &root);
    if let Some(cycle) = cycle(&graph) {
        let names = names(&modules(&files), &root);
        let mut report = format!("the modules form a cycle: {}\n", cycle.join(" -> "));
        for edge in cycle.windows(2) {
            let (from, to) = (&edge[0], &edge[1]);
            let first = files
                .iter()
                .filter(|f| node_of(&f.module) == from)
                .find_map(|f| {
                    let refs = references(&f.module, &f.source, &names);
                    let (_, line) = refs.into_iter().find(|(node, _)| node == to)?;
                    let code = f.source.lines().nth(line - 1).unwrap_or_default().trim();
                    Some(format!("{}:{line}: {code}", f.path))
                });
            report += &format!("  {from} -> {to}, first at {}\n", first.unwrap_or_default());
        }
        panic!("{report}");
    }
    for (n, layer) in layers(&graph).iter().enumerate() {
        println!("layer {n}: {}", layer.join(", "));
    }
}

#[test]
fn a_planted_cycle_is_found() {
    let (files, root) = runtime_sources();
    let modules = modules(&files);
    let (real, names) = (graph(&modules, &root), names(&modules, &root));
    // A real edge `a -> b` without `b -> a`, where `a` has a name re-exported at the root.
    let edges = real
        .iter()
        .flat_map(|(a, deps)| deps.iter().map(move |b| (a, b)));
    let (a, b, reexported) = edges
        .filter(|(a, b)| !real[*b].contains(*a))
        .find_map(|(a, b)| {
            let (name, _) = names.reexports.iter().find(|(_, node)| *node == a)?;
            Some((a.clone(), b.clone(), name.clone()))
        })
        .expect("an edge to plant a cycle on");
    assert!(cycle(&real).is_none(), "the real graph has no cycle");
    let plants = [
        format!("use crate::{a}::Something;"),
        format!("use crate::{{{b}::{{self, Y}}, {a}::Z}};"),
        format!("fn f() {{ crate::{a}::g(); }}"),
        format!("fn f() {{ let _ = crate::{reexported}; }}"),
    ];
    for plant in plants {
        let mut planted = modules.clone();
        let (_, source) = planted
            .iter_mut()
            .find(|(m, _)| *m == b)
            .expect("the file of b");
        source.push_str(&format!("\n{plant}\n"));
        let found = cycle(&graph(&planted, &root));
        let found = found.unwrap_or_else(|| panic!("no cycle with `{plant}` in {b}"));
        assert!(
            found.contains(&a) && found.contains(&b),
            "{found:?} for `{plant}`"
        );
    }
}

/// The edges (`"a -> b"`) between synthetic files, with nodes `b`, `c` and `d` (empty).
fn edges(files: &[(&str, &str)], root: &str) -> Vec<String> {
    let nodes = [("b", ""), ("c", ""), ("d", "")];
    let files: Vec<_> = files
        .iter()
        .chain(&nodes)
        .map(|(m, s)| (m.to_string(), s.to_string()))
        .collect();
    let graph = graph(&files, root);
    graph
        .iter()
        .flat_map(|(a, deps)| deps.iter().map(move |b| format!("{a} -> {b}")))
        .collect()
}

#[test]
fn comments_literals_and_tests_are_ignored() {
    let a = r###"
        //! See [`crate::b`].
        /// [`SyncDb`](crate::SyncDb) and [x](crate::b::X)
        // use crate::b::X;
        /* a /* nested */ crate::b::X */
        const S: &str = "crate::b::X \" crate::b::Y";
        const R: &str = r#"crate::b::X " crate::b::Y"#;
        const B: &[u8] = br"crate::b::X";
        const Q: [char; 2] = ['"', '\''];
        fn f<'a>(x: &'a str) -> &'a str { $crate::b::X; crate::params!(); crate::c::f(x) }
        #[cfg(test)]
        mod tests {
            use crate::b::X;
            fn g() { crate::d::h() }
        }
        #[cfg(test)]
        use crate::b::Y;
        struct S { #[cfg(test)] f: fn() -> crate::b::X, g: crate::d::Y }
    "###;
    let found = edges(&[("a", a)], "pub use b::SyncDb;");
    assert_eq!(found, ["a -> c", "a -> d"]);
}

#[test]
fn super_paths_resolve_from_their_module() {
    let files = [
        ("a", "use super::b::X;"),
        ("c::inner", "use super::Named; use super::super::d::Z;"),
        ("e", "mod m { use super::super::d::X; use super::Named; }"),
        ("f::g", "mod deeper { use super::super::Named; }"),
    ];
    let found = edges(&files, "pub use b::Named;");
    assert_eq!(found, ["a -> b", "c -> d", "e -> d"]);
}

#[test]
fn groups_and_root_reexports_are_followed() {
    let root = "
        mod a;
        #[cfg(feature = \"x\")]
        pub use c::{
            One,
            Two as Deux,
        };
        pub use external::Three;
        pub use d::inner::{self};
        pub use crate::b::Six;
        pub mod hidden { pub use crate::d::Four; }
    ";
    let cases = [
        ("use crate::{b::{self, X}, c::Y};", vec!["a -> b", "a -> c"]),
        ("use crate::{self as root, One};", vec!["a -> c"]),
        ("fn f() -> crate::Deux { crate::Two }", vec!["a -> c"]),
        ("crate::Three; crate::Four; crate::hidden::Four;", vec![]),
        ("crate::inner::f(); crate::Six;", vec!["a -> b", "a -> d"]),
        ("use crate::{{b::X}, d::*};", vec!["a -> b", "a -> d"]),
        ("crate::b::g::<crate::d::T>();", vec!["a -> b", "a -> d"]),
    ];
    for (a, expected) in cases {
        assert_eq!(edges(&[("a", a)], root), expected, "{a}");
    }
}
