//! The check behind issue 12's rule "nothing in a crate's `src/` may import
//! in a circle": the files of each crate target are nodes, a file naming an
//! item of another file is an edge ([`graph`] says exactly what counts),
//! and every elementary cycle is reported with the lines that close it.

pub mod cycles;
pub mod graph;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// At most this many cycles are listed per crate target.
pub const CYCLE_LIMIT: usize = 200;

/// One step of a cycle: `from` imports `to` at `lines` of `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The importing file.
    pub from: PathBuf,
    /// Its lines that name `to`'s items.
    pub lines: Vec<usize>,
    /// The imported file.
    pub to: PathBuf,
}

/// The import cycles of one crate target.
#[derive(Debug, Default)]
pub struct Findings {
    /// Files in the module tree.
    pub files: usize,
    /// Distinct file-to-file imports.
    pub imports: usize,
    /// Each cycle as its steps, the last step's `to` being the first's `from`.
    pub cycles: Vec<Vec<Step>>,
    /// More cycles than [`CYCLE_LIMIT`] exist.
    pub truncated: bool,
}

/// The cycles of the crate target whose root file is `root`.
pub fn check(sources: &impl graph::Sources, root: &Path) -> Result<Findings, graph::GraphError> {
    let g = graph::build(sources, root)?;
    let pairs: BTreeSet<(usize, usize)> = g.edges.keys().copied().collect();
    let (found, truncated) = cycles::elementary_cycles(g.files.len(), &pairs, CYCLE_LIMIT);
    let cycles = found
        .into_iter()
        .map(|nodes| {
            (0..nodes.len())
                .map(|i| {
                    let (a, b) = (nodes[i], nodes[(i + 1) % nodes.len()]);
                    Step {
                        from: g.files[a].clone(),
                        lines: g.edges[&(a, b)].iter().copied().collect(),
                        to: g.files[b].clone(),
                    }
                })
                .collect()
        })
        .collect();
    Ok(Findings {
        files: g.files.len(),
        imports: pairs.len(),
        cycles,
        truncated,
    })
}

/// A cycle as text: `a.rs:3,9 -> b.rs:12 -> a.rs`, paths relative to `base`.
pub fn describe(cycle: &[Step], base: &Path) -> String {
    let short = |p: &Path| p.strip_prefix(base).unwrap_or(p).display().to_string();
    let mut s = String::new();
    for step in cycle {
        let mut lines: Vec<String> = step.lines.iter().take(6).map(usize::to_string).collect();
        if step.lines.len() > 6 {
            lines.push(format!("+{}", step.lines.len() - 6));
        }
        let _ = write!(s, "{}:{} -> ", short(&step.from), lines.join(","));
    }
    if let Some(first) = cycle.first() {
        s.push_str(&short(&first.from));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_cycle_is_described_with_its_lines() {
        let files: BTreeMap<PathBuf, String> = [
            ("c/src/lib.rs", "mod a;\nmod b;\n"),
            ("c/src/a.rs", "use crate::b::B;\npub struct A(B);\n"),
            (
                "c/src/b.rs",
                "pub struct B;\npub fn f() -> crate::a::A { todo!() }\n",
            ),
        ]
        .into_iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_owned()))
        .collect();
        let found = check(&files, Path::new("c/src/lib.rs")).unwrap();
        assert_eq!((found.files, found.imports), (3, 2));
        assert_eq!(found.cycles.len(), 1);
        assert_eq!(
            describe(&found.cycles[0], Path::new("c")),
            "src/a.rs:1,2 -> src/b.rs:2 -> src/a.rs"
        );
    }
}
