//! Which file of a crate imports which: the module tree from `mod`
//! declarations, then every path a file names (`use` items, paths in code
//! and in macro arguments) resolved to the file that defines the item.
//!
//! Decisions, so that an edge means "this file needs that one":
//! - A module is inside its parent (Rust lets it see the parent's private
//!   items): `mod x;` is no edge, and neither is a child naming an item of
//!   an enclosing module (`super::Error`, `crate::Shared` from any file).
//!   A folder's `mod.rs` (a crate's `lib.rs`) is its shared vocabulary and
//!   its front; a parent using its children's items is an edge, and so is
//!   every import between siblings and cousins, so a cycle between files
//!   that do not enclose one another (the tangles issue 12 is about) is
//!   always found.
//! - A re-export (`pub use`, `pub(crate) use`) is a name, not a need: it is
//!   followed to the defining file and is an edge only where the same file
//!   uses the name itself. A private `use` is an edge where it is written.
//! - Paths resolve through `crate::`, `self::`, `super::`, child modules,
//!   `use` aliases and globs; a name found nowhere (std, another crate, a
//!   local variable, the prelude) is no edge.
//! - Doc links are no import. Method calls name no path, so an inherent
//!   `impl` in another file used only through `.method()` is invisible, as
//!   it is to every syntactic tool.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// Reading or parsing a source file failed.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// A `mod` declaration names a file that is not there.
    #[error("{from}:{line}: `mod {name};` has no file ({tried})")]
    MissingModule {
        /// The declaring file.
        from: PathBuf,
        /// Line of the declaration.
        line: usize,
        /// The module's name.
        name: String,
        /// The paths looked at.
        tried: String,
    },
    /// A file could not be read.
    #[error("reading {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// A file is not Rust that syn parses.
    #[error("parsing {path}:{line}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Line of the error.
        line: usize,
        /// syn's message.
        reason: String,
    },
}

/// Where source text comes from: the disk, or fixtures in tests.
pub trait Sources {
    /// The text of `path`, `None` when there is no such file.
    fn read(&self, path: &Path) -> Result<Option<String>, GraphError>;
}

/// The file system.
pub struct Disk;

impl Sources for Disk {
    fn read(&self, path: &Path) -> Result<Option<String>, GraphError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(GraphError::Read {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
        }
    }
}

impl Sources for BTreeMap<PathBuf, String> {
    fn read(&self, path: &Path) -> Result<Option<String>, GraphError> {
        Ok(self.get(path).cloned())
    }
}

/// The files of one crate target and who imports whom.
#[derive(Debug, Default)]
pub struct ImportGraph {
    /// Every file of the module tree, in discovery order.
    pub files: Vec<PathBuf>,
    /// `(from, to)` file indexes to the lines of `from` that import `to`.
    pub edges: BTreeMap<(usize, usize), BTreeSet<usize>>,
}

type ModId = usize;

#[derive(Debug)]
struct UseEntry {
    name: String,
    path: Vec<String>,
    glob: bool,
    reexport: bool,
    line: usize,
}

#[derive(Debug)]
struct Module {
    file: usize,
    parent: Option<ModId>,
    children: BTreeMap<String, ModId>,
    items: BTreeSet<String>,
    uses: Vec<UseEntry>,
    /// Paths named in code: segments and line.
    refs: Vec<(Vec<String>, usize)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Module(ModId),
    Item(ModId),
}

struct Builder<'s, S: Sources> {
    sources: &'s S,
    files: Vec<PathBuf>,
    modules: Vec<Module>,
}

/// Builds the import graph of the crate target whose root is `root`
/// (`src/lib.rs`, `src/main.rs`, `src/bin/x.rs`). File names in the graph
/// are as found under `root`'s directory.
pub fn build(sources: &impl Sources, root: &Path) -> Result<ImportGraph, GraphError> {
    let mut b = Builder {
        sources,
        files: Vec::new(),
        modules: Vec::new(),
    };
    let dir = root.parent().unwrap_or(Path::new("")).to_path_buf();
    b.load_file(root, None, dir)?;
    let mut graph = ImportGraph {
        files: b.files.clone(),
        edges: BTreeMap::new(),
    };
    for m in 0..b.modules.len() {
        let from = b.modules[m].file;
        let mut add = |target: Target, line: usize| {
            let (Target::Module(t) | Target::Item(t)) = target;
            let to = b.modules[t].file;
            if to != from && !b.is_ancestor(t, m) {
                graph.edges.entry((from, to)).or_default().insert(line);
            }
        };
        for u in b.modules[m].uses.iter().filter(|u| !u.reexport) {
            if let Some(t) = b.resolve(m, &u.path, 0) {
                add(t, u.line);
            }
        }
        for (path, line) in &b.modules[m].refs {
            if let Some(t) = b.resolve(m, path, 0) {
                add(t, *line);
            }
        }
    }
    Ok(graph)
}

impl<S: Sources> Builder<'_, S> {
    fn load_file(
        &mut self,
        path: &Path,
        parent: Option<ModId>,
        child_dir: PathBuf,
    ) -> Result<ModId, GraphError> {
        let text = self.sources.read(path)?.ok_or_else(|| GraphError::Read {
            path: path.to_path_buf(),
            reason: "no such file".into(),
        })?;
        let file = syn::parse_file(&text).map_err(|e| GraphError::Parse {
            path: path.to_path_buf(),
            line: e.span().start().line,
            reason: e.to_string(),
        })?;
        self.files.push(path.to_path_buf());
        let file_index = self.files.len() - 1;
        self.load_items(&file.items, file_index, parent, child_dir)
    }

    /// A module (a file's or an inline `mod x { ... }`) and its children.
    fn load_items(
        &mut self,
        items: &[syn::Item],
        file: usize,
        parent: Option<ModId>,
        child_dir: PathBuf,
    ) -> Result<ModId, GraphError> {
        let id = self.modules.len();
        self.modules.push(Module {
            file,
            parent,
            children: BTreeMap::new(),
            items: BTreeSet::new(),
            uses: Vec::new(),
            refs: Vec::new(),
        });
        let mut refs = Refs::default();
        for item in items {
            match item {
                syn::Item::Mod(m) => {
                    let name = m.ident.to_string();
                    let child = match &m.content {
                        Some((_, inner)) => {
                            self.load_items(inner, file, Some(id), child_dir.join(&name))?
                        }
                        None => {
                            let from = self.files[file].clone();
                            let (path, dir) = self.module_file(m, &from, &child_dir)?;
                            self.load_file(&path, Some(id), dir)?
                        }
                    };
                    self.modules[id].children.insert(name, child);
                    // Attributes of the declaration (`#[cfg(...)]`) name nothing.
                }
                syn::Item::Use(u) => {
                    let reexport = !matches!(u.vis, syn::Visibility::Inherited);
                    let mut prefix = Vec::new();
                    if u.leading_colon.is_some() {
                        prefix.push("::".to_owned());
                    }
                    flatten_use(&u.tree, &mut prefix, reexport, &mut self.modules[id].uses);
                }
                other => {
                    if let Some(name) = item_name(other) {
                        self.modules[id].items.insert(name);
                    }
                    refs.visit_item(other);
                }
            }
        }
        self.modules[id].refs = refs.paths;
        Ok(id)
    }

    /// The file of `mod name;` declared in a module whose children live in
    /// `dir`, and the directory of that file's own children.
    fn module_file(
        &self,
        m: &syn::ItemMod,
        from: &Path,
        dir: &Path,
    ) -> Result<(PathBuf, PathBuf), GraphError> {
        let name = m.ident.to_string();
        for attr in &m.attrs {
            if let syn::Meta::NameValue(nv) = &attr.meta {
                if nv.path.is_ident("path") {
                    if let syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(s),
                        ..
                    }) = &nv.value
                    {
                        let path = dir.join(s.value());
                        let child_dir = path.parent().unwrap_or(dir).to_path_buf();
                        return Ok((path, child_dir));
                    }
                }
            }
        }
        let flat = dir.join(format!("{name}.rs"));
        if self.sources.read(&flat)?.is_some() {
            return Ok((flat, dir.join(&name)));
        }
        let nested = dir.join(&name).join("mod.rs");
        if self.sources.read(&nested)?.is_some() {
            return Ok((nested, dir.join(&name)));
        }
        Err(GraphError::MissingModule {
            from: from.to_path_buf(),
            line: m.ident.span().start().line,
            name,
            tried: format!("{}, {}", flat.display(), nested.display()),
        })
    }

    /// What `path`, named inside module `m`, designates.
    fn resolve(&self, m: ModId, path: &[String], depth: usize) -> Option<Target> {
        if depth > 10 || path.is_empty() {
            return None;
        }
        let mut cur = m;
        let mut rest = path;
        match path[0].as_str() {
            "crate" => {
                cur = self.root();
                rest = &path[1..];
            }
            "::" => return None,
            _ => {}
        }
        for seg in rest {
            match seg.as_str() {
                "self" => continue,
                "super" => {
                    cur = self.modules[cur].parent?;
                    continue;
                }
                _ => {}
            }
            let module = &self.modules[cur];
            if let Some(&child) = module.children.get(seg) {
                cur = child;
                continue;
            }
            if module.items.contains(seg) {
                return Some(Target::Item(cur));
            }
            match self.lookup_use(cur, seg, depth)? {
                Target::Module(next) => cur = next,
                Target::Item(at) => return Some(Target::Item(at)),
            }
        }
        Some(Target::Module(cur))
    }

    /// `name` as brought into module `m` by its `use` items.
    fn lookup_use(&self, m: ModId, name: &str, depth: usize) -> Option<Target> {
        let module = &self.modules[m];
        for u in module.uses.iter().filter(|u| !u.glob && u.name == name) {
            if let Some(t) = self.resolve(m, &u.path, depth + 1) {
                return Some(t);
            }
        }
        for u in module.uses.iter().filter(|u| u.glob) {
            if let Some(Target::Module(g)) = self.resolve(m, &u.path, depth + 1) {
                if g == m {
                    continue;
                }
                if let Some(t) = self.resolve(g, &[name.to_owned()], depth + 1) {
                    return Some(t);
                }
            }
        }
        None
    }

    fn root(&self) -> ModId {
        0
    }

    /// Whether `a` encloses `m` (`m` is `a`'s child, grandchild, ...).
    fn is_ancestor(&self, a: ModId, m: ModId) -> bool {
        let mut cur = self.modules[m].parent;
        while let Some(p) = cur {
            if p == a {
                return true;
            }
            cur = self.modules[p].parent;
        }
        false
    }
}

/// The name an item defines in its module's namespace (not `use` or `mod`).
fn item_name(item: &syn::Item) -> Option<String> {
    let ident = match item {
        syn::Item::Const(i) => &i.ident,
        syn::Item::Enum(i) => &i.ident,
        syn::Item::Fn(i) => &i.sig.ident,
        syn::Item::Static(i) => &i.ident,
        syn::Item::Struct(i) => &i.ident,
        syn::Item::Trait(i) => &i.ident,
        syn::Item::TraitAlias(i) => &i.ident,
        syn::Item::Type(i) => &i.ident,
        syn::Item::Union(i) => &i.ident,
        syn::Item::Macro(i) => i.ident.as_ref()?,
        _ => return None,
    };
    Some(ident.to_string())
}

/// Every `use` leaf under `tree`, with its full path.
fn flatten_use(
    tree: &syn::UseTree,
    prefix: &mut Vec<String>,
    reexport: bool,
    out: &mut Vec<UseEntry>,
) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten_use(&p.tree, prefix, reexport, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let ident = n.ident.to_string();
            // `use a::b::{self}` names `a::b` itself.
            let (path, name) = if ident == "self" {
                (prefix.clone(), prefix.last().cloned().unwrap_or_default())
            } else {
                let mut path = prefix.clone();
                path.push(ident.clone());
                (path, ident)
            };
            out.push(UseEntry {
                name,
                path,
                glob: false,
                reexport,
                line: n.ident.span().start().line,
            });
        }
        syn::UseTree::Rename(r) => {
            let mut path = prefix.clone();
            path.push(r.ident.to_string());
            out.push(UseEntry {
                name: r.rename.to_string(),
                path,
                glob: false,
                reexport,
                line: r.ident.span().start().line,
            });
        }
        syn::UseTree::Glob(g) => out.push(UseEntry {
            name: String::new(),
            path: prefix.clone(),
            glob: true,
            reexport,
            line: g.star_token.span.start().line,
        }),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                flatten_use(t, prefix, reexport, out);
            }
        }
    }
}

/// Collects the paths code names, macro arguments included.
#[derive(Default)]
struct Refs {
    paths: Vec<(Vec<String>, usize)>,
}

impl<'ast> Visit<'ast> for Refs {
    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segs: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if let Some(first) = path.segments.first() {
            self.paths.push((segs, first.ident.span().start().line));
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.visit_path(&mac.path);
        scan_tokens(mac.tokens.clone(), &mut self.paths);
    }

    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {
        // `pub(crate)`, `pub(super)`: who may see, not what is needed.
    }

    fn visit_attribute(&mut self, _: &'ast syn::Attribute) {
        // Doc comments, derives, cfgs: no imports.
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        // A `use` inside a function body: an import of that file.
        let mut entries = Vec::new();
        flatten_use(&u.tree, &mut Vec::new(), false, &mut entries);
        self.paths.extend(
            entries
                .into_iter()
                .filter(|e| !e.glob)
                .map(|e| (e.path, e.line)),
        );
    }
}

/// Paths of two or more segments (`a::b`, `crate::x::y`, `$crate::x`) in
/// macro tokens.
fn scan_tokens(tokens: TokenStream, out: &mut Vec<(Vec<String>, usize)>) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            TokenTree::Group(g) => {
                scan_tokens(g.stream(), out);
                i += 1;
            }
            TokenTree::Ident(first) => {
                let line = first.span().start().line;
                let mut segs = vec![first.to_string()];
                let mut j = i + 1;
                while let (
                    Some(TokenTree::Punct(a)),
                    Some(TokenTree::Punct(b)),
                    Some(TokenTree::Ident(next)),
                ) = (tokens.get(j), tokens.get(j + 1), tokens.get(j + 2))
                {
                    if a.as_char() != ':' || b.as_char() != ':' {
                        break;
                    }
                    segs.push(next.to_string());
                    j += 3;
                }
                if segs.len() > 1 {
                    out.push((segs, line));
                }
                i = j;
            }
            // `$crate` is this crate: the identifier after it starts the path.
            TokenTree::Punct(_) | TokenTree::Literal(_) => i += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The graph of a fixture crate, as `from -> to: lines` over file names.
    fn edges(files: &[(&str, &str)]) -> Vec<String> {
        let sources: BTreeMap<PathBuf, String> = files
            .iter()
            .map(|(p, t)| (PathBuf::from("src").join(p), (*t).to_owned()))
            .collect();
        let g = build(&sources, Path::new("src/lib.rs")).unwrap();
        let name = |i: usize| {
            g.files[i]
                .strip_prefix("src")
                .unwrap()
                .display()
                .to_string()
        };
        g.edges
            .iter()
            .map(|(&(a, b), lines)| format!("{} -> {}: {lines:?}", name(a), name(b)))
            .collect()
    }

    #[test]
    fn use_items_and_paths_in_code_are_edges() {
        let e = edges(&[
            ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
            ("a.rs", "use crate::b::B;\n\npub struct A;\n"),
            ("b.rs", "pub struct B;\nfn f() {\n    crate::c::g();\n}\n"),
            ("c.rs", "pub fn g() {}\nfn h() { super::a::A; }\n"),
        ]);
        assert_eq!(
            e,
            [
                "a.rs -> b.rs: {1}",
                "b.rs -> c.rs: {3}",
                "c.rs -> a.rs: {2}"
            ]
        );
    }

    #[test]
    fn re_exports_are_followed_to_the_defining_file() {
        let e = edges(&[
            (
                "lib.rs",
                "mod a;\nmod b;\npub use a::{A, Other as Renamed};\n",
            ),
            ("a.rs", "pub struct A;\npub struct Other;\n"),
            ("b.rs", "use crate::A;\nfn f(_: crate::Renamed) {}\n"),
        ]);
        // lib.rs names a.rs's items but does not use them: no edge.
        assert_eq!(e, ["b.rs -> a.rs: {1, 2}"]);
    }

    #[test]
    fn a_parent_using_a_re_export_itself_imports_it() {
        let e = edges(&[
            ("lib.rs", "mod a;\npub use a::A;\nfn f() -> A { A }\n"),
            ("a.rs", "pub struct A;\n"),
        ]);
        assert_eq!(e, ["lib.rs -> a.rs: {3}"]);
    }

    #[test]
    fn children_naming_their_parents_are_inside_them() {
        // A folder: mod.rs shares Error and dispatches to its children.
        let e = edges(&[
            ("lib.rs", "mod cg;\npub struct Shared;\n"),
            ("cg/mod.rs", "mod v1;\nmod v2;\npub struct Error;\nfn f() { v1::go(); v2::go(); }\n"),
            ("cg/v1.rs", "use super::Error;\npub fn go() -> Result<(), Error> { let _ = crate::Shared; Ok(()) }\n"),
            ("cg/v2.rs", "pub fn go() -> Result<(), super::Error> { Ok(()) }\n"),
        ]);
        assert_eq!(
            e,
            ["cg/mod.rs -> cg/v1.rs: {4}", "cg/mod.rs -> cg/v2.rs: {4}"]
        );
    }

    #[test]
    fn siblings_in_a_folder_and_nested_files_resolve() {
        let e = edges(&[
            ("lib.rs", "pub mod state;\n"),
            ("state/mod.rs", "pub mod flows;\npub mod registry;\n"),
            (
                "state/flows.rs",
                "use super::registry::Registry;\npub struct Flow;\n",
            ),
            (
                "state/registry.rs",
                "pub struct Registry(Vec<crate::state::flows::Flow>);\n",
            ),
        ]);
        assert_eq!(
            e,
            [
                "state/flows.rs -> state/registry.rs: {1}",
                "state/registry.rs -> state/flows.rs: {1}"
            ]
        );
    }

    #[test]
    fn macro_arguments_count_doc_links_and_visibility_do_not() {
        let e = edges(&[
            ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
            ("a.rs", "/// See [`crate::b::B`].\npub(crate) struct A;\npub(in crate::c) fn f() {\n    println!(\"{}\", crate::c::NAME);\n}\n"),
            ("b.rs", "pub struct B;\n"),
            ("c.rs", "pub const NAME: &str = \"c\";\n"),
        ]);
        assert_eq!(e, ["a.rs -> c.rs: {4}"]);
    }

    #[test]
    fn globs_and_inline_test_modules_count_for_their_file() {
        let e = edges(&[
            ("lib.rs", "mod a;\nmod b;\n"),
            ("a.rs", "use crate::b::*;\nfn f() -> Thing { Thing }\n#[cfg(test)]\nmod tests {\n    use super::*;\n    #[test]\n    fn t() { let _ = f(); crate::b::helper(); }\n}\n"),
            ("b.rs", "pub struct Thing;\npub fn helper() {}\n"),
        ]);
        assert_eq!(e, ["a.rs -> b.rs: {1, 2, 7}"]);
    }

    #[test]
    fn other_crates_and_locals_are_no_edge() {
        let e = edges(&[
            ("lib.rs", "mod a;\nmod b;\n"),
            ("a.rs", "use std::path::Path;\nfn f(b: &Path) { let a = b; drop(a); let _ = ::std::mem::size_of::<u8>(); }\n"),
            ("b.rs", "use ipnet::IpNet;\npub fn g(_: IpNet) {}\n"),
        ]);
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn function_local_use_is_an_edge() {
        let e = edges(&[
            ("lib.rs", "mod a;\nmod b;\n"),
            ("a.rs", "fn f() {\n    use crate::b::g;\n    g();\n}\n"),
            ("b.rs", "pub fn g() {}\n"),
        ]);
        assert_eq!(e, ["a.rs -> b.rs: {2}"]);
    }

    #[test]
    fn a_missing_module_file_is_an_error() {
        let sources: BTreeMap<PathBuf, String> =
            [(PathBuf::from("src/lib.rs"), "\nmod gone;\n".to_owned())]
                .into_iter()
                .collect();
        let err = build(&sources, Path::new("src/lib.rs")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("src/lib.rs:2: `mod gone;` has no file"),
            "{err}"
        );
    }
}
