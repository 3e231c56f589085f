//! A HiCuts-style multi-way decision tree over seven packet fields.
//!
//! Every rule is a box: per field a short list of inclusive integer ranges
//! (addresses, protocol, source port, destination port, project id, the
//! other end's encoded peer, see [`crate::peer`]). An
//! inner node cuts one field of its region at a few points (chosen among
//! the rules' own range ends, so cuts land on prefix and port boundaries)
//! and keeps, per child, the rules that overlap the child's region, in
//! their original order. A leaf holds at most [`LEAF_SIZE`] rules (more
//! only when no cut helps or the memory budget is spent) and is scanned in
//! order, so the first match in a leaf is the first match of the whole
//! chain: exact first-match semantics with a lookup of a few node hops
//! plus a short scan.
//!
//! Three things keep the tree small: every rule after one that covers the
//! whole region of a node on all fields is dropped there (it can never be
//! the first match), adjacent children with identical rule lists are
//! merged into one, and a budget per rule ([`BUDGET_PER_RULE`]) turns
//! nodes into leaves once the tree would outgrow it.

use std::fmt::Debug;

/// Number of fields a rule constrains.
pub(crate) const FIELDS: usize = 7;
/// Field positions in a key and a rule box.
pub(crate) const SRC: usize = 0;
pub(crate) const DST: usize = 1;
pub(crate) const PROTO: usize = 2;
pub(crate) const SRC_PORT: usize = 3;
pub(crate) const DST_PORT: usize = 4;
pub(crate) const PROJECT: usize = 5;
pub(crate) const PEER: usize = 6;

/// Leaves hold at most this many rules when a cut can still separate them.
const LEAF_SIZE: usize = 4;
/// Most children of one node.
const MAX_FANOUT: usize = 64;
/// A cut may replicate rules into children up to this factor of the
/// node's rule count; wider cuts that replicate more are refused.
const SPACE_FACTOR: usize = 4;
/// Single cut points tried per field.
const BINARY_SAMPLES: usize = 16;
/// A mask with every field's bit.
const ALL_FIELDS: u8 = (1 << FIELDS) - 1;
/// The whole tree may hold this many leaf entries and nodes per rule (plus
/// [`BUDGET_BASE`]): realistic rule sets use a few, but rules constraining
/// different fields interleaved (a cross product) would otherwise grow the
/// tree quadratically.
const BUDGET_PER_RULE: usize = 32;
/// Budget every tree gets whatever its rule count.
const BUDGET_BASE: usize = 4096;
/// Budget a node keeps back for each rule of its children not built yet.
const SIBLING_RESERVE: usize = 4;
/// Deeper nodes become leaves whatever their size.
const MAX_DEPTH: usize = 40;

/// An integer field value: `u32` for IPv4 trees, `u128` for IPv6 trees.
pub(crate) trait FieldValue: Copy + Ord + Debug + Send + Sync + 'static {
    /// `self + 1`; only called below the field's maximum.
    fn next(self) -> Self;
    /// `self - 1`; only called above the field's minimum.
    fn prev(self) -> Self;
}

impl FieldValue for u32 {
    fn next(self) -> Self {
        self.saturating_add(1)
    }
    fn prev(self) -> Self {
        self.saturating_sub(1)
    }
}

impl FieldValue for u128 {
    fn next(self) -> Self {
        self.saturating_add(1)
    }
    fn prev(self) -> Self {
        self.saturating_sub(1)
    }
}

/// Per field, one inclusive range: a node's region of the key space.
pub(crate) type Region<K> = [(K, K); FIELDS];

/// A rule as the tree sees it.
#[derive(Debug, Clone)]
pub(crate) struct BoxRule<K> {
    /// Per field, sorted disjoint inclusive ranges (never empty).
    pub ranges: [Vec<(K, K)>; FIELDS],
    /// The rule's index in its chain.
    pub index: u32,
}

#[derive(Debug, Clone, Copy)]
enum Node {
    Cut {
        field: u8,
        /// Start in `bounds`; child `i` holds values `< bounds[i]` and
        /// `>= bounds[i - 1]`.
        bounds: u32,
        /// Number of bounds; there is one more child.
        count: u32,
        /// Index in `nodes` of the first child; the others follow it, so a
        /// hop costs no extra indirection.
        children: u32,
    },
    Leaf {
        start: u32,
        len: u32,
    },
}

/// One rule in a leaf, laid out so the common case is checked without
/// leaving the entry: per field the rule's range hull clipped to the leaf
/// region, and a mask of the fields whose ranges have gaps inside it.
#[derive(Debug, Clone, Copy)]
struct Entry<K> {
    hull: [(K, K); FIELDS],
    /// The rule's chain index, returned on a match.
    index: u32,
    /// Position in `Tree::offsets`, for fields listed in `gaps`.
    rule: u32,
    /// Bit per field where the hull is not exact (port lists, tcp+udp,
    /// project lists): those fields are checked against the full ranges.
    gaps: u8,
}

/// The compiled tree; immutable after [`Tree::build`].
#[derive(Debug, Clone)]
pub(crate) struct Tree<K> {
    nodes: Vec<Node>,
    bounds: Vec<K>,
    entries: Vec<Entry<K>>,
    /// Per rule, where each field's ranges start in `ranges` (and end).
    offsets: Vec<[u32; FIELDS + 1]>,
    ranges: Vec<(K, K)>,
}

/// Size figures of a built tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TreeStats {
    /// Inner and leaf nodes.
    pub nodes: usize,
    /// Rule references in all leaves (rules replicated across leaves count
    /// once per leaf).
    pub leaf_entries: usize,
    /// Longest root-to-leaf path.
    pub depth: usize,
    /// Largest leaf.
    pub max_leaf: usize,
    /// Heap bytes held by the tree.
    pub bytes: usize,
}

impl<K: FieldValue> Tree<K> {
    /// Builds the tree for `rules` (in chain order) over the key space `full`.
    pub(crate) fn build(rules: &[BoxRule<K>], full: Region<K>) -> Tree<K> {
        let mut tree = Tree {
            nodes: Vec::new(),
            bounds: Vec::new(),
            entries: Vec::new(),
            offsets: Vec::with_capacity(rules.len()),
            ranges: Vec::new(),
        };
        for rule in rules {
            let mut offsets = [0u32; FIELDS + 1];
            for (field, ranges) in rule.ranges.iter().enumerate() {
                offsets[field] = arena_index(tree.ranges.len());
                tree.ranges.extend_from_slice(ranges);
            }
            offsets[FIELDS] = arena_index(tree.ranges.len());
            tree.offsets.push(offsets);
        }
        let ids: Vec<u32> = (0..rules.len()).map(arena_index).collect();
        let mut builder = Builder {
            rules,
            tree: &mut tree,
            stamp: Vec::new(),
        };
        builder.tree.nodes.push(Node::Leaf { start: 0, len: 0 });
        let budget = BUDGET_PER_RULE * rules.len() + BUDGET_BASE;
        builder.fill(0, full, ids, 0, budget);
        tree
    }

    /// Chain index of the first rule matching `key`.
    #[inline]
    pub(crate) fn lookup(&self, key: &[K; FIELDS]) -> Option<u32> {
        let mut node = 0usize;
        loop {
            match self.nodes[node] {
                Node::Cut {
                    field,
                    bounds,
                    count,
                    children,
                } => {
                    let bounds = &self.bounds[bounds as usize..(bounds + count) as usize];
                    let value = key[usize::from(field)];
                    // A branch-free count instead of a binary search: the
                    // loads are independent (and vectorize for IPv4), where
                    // a binary search waits on one cache miss per probe.
                    let child: usize = bounds.iter().map(|&b| usize::from(b <= value)).sum();
                    node = children as usize + child;
                }
                Node::Leaf { start, len } => {
                    let entries = &self.entries[start as usize..(start + len) as usize];
                    return entries
                        .iter()
                        .find(|e| self.entry_matches(e, key))
                        .map(|e| e.index);
                }
            }
        }
    }

    #[inline]
    fn entry_matches(&self, entry: &Entry<K>, key: &[K; FIELDS]) -> bool {
        let mut inside = true;
        for (&(lo, hi), &value) in entry.hull.iter().zip(key) {
            inside &= lo <= value && value <= hi;
        }
        if !inside {
            return false;
        }
        if entry.gaps == 0 {
            return true;
        }
        let offsets = &self.offsets[entry.rule as usize];
        let mut check = entry.gaps;
        while check != 0 {
            let field = check.trailing_zeros() as usize;
            check &= check - 1;
            let ranges = &self.ranges[offsets[field] as usize..offsets[field + 1] as usize];
            let value = key[field];
            if !ranges.iter().any(|&(lo, hi)| lo <= value && value <= hi) {
                return false;
            }
        }
        true
    }

    /// Size figures, for the benchmark and the docs.
    pub(crate) fn stats(&self) -> TreeStats {
        let mut stats = TreeStats {
            nodes: self.nodes.len(),
            leaf_entries: self.entries.len(),
            bytes: self.nodes.capacity() * std::mem::size_of::<Node>()
                + self.bounds.capacity() * std::mem::size_of::<K>()
                + self.entries.capacity() * std::mem::size_of::<Entry<K>>()
                + self.offsets.capacity() * std::mem::size_of::<[u32; FIELDS + 1]>()
                + self.ranges.capacity() * std::mem::size_of::<(K, K)>(),
            ..TreeStats::default()
        };
        if !self.nodes.is_empty() {
            self.walk(0, 1, &mut stats);
        }
        stats
    }

    fn walk(&self, node: usize, depth: usize, stats: &mut TreeStats) {
        stats.depth = stats.depth.max(depth);
        match self.nodes[node] {
            Node::Cut {
                count, children, ..
            } => {
                for c in 0..=count {
                    self.walk((children + c) as usize, depth + 1, stats);
                }
            }
            Node::Leaf { len, .. } => stats.max_leaf = stats.max_leaf.max(len as usize),
        }
    }
}

/// Arena positions are `u32`; a rule set big enough to overflow that
/// would not fit in memory anyway.
fn arena_index(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn covers<K: FieldValue>(ranges: &[(K, K)], lo: K, hi: K) -> bool {
    ranges.iter().any(|&(a, b)| a <= lo && hi <= b)
}

struct Builder<'a, K> {
    rules: &'a [BoxRule<K>],
    tree: &'a mut Tree<K>,
    /// Scratch: per child, the last rule counted into it.
    stamp: Vec<u32>,
}

/// The cut chosen for a node.
struct Cut<K> {
    field: usize,
    bounds: Vec<K>,
    max_child: usize,
    total: usize,
}

impl<K: FieldValue> Builder<'_, K> {
    /// Nothing after a rule covering the whole region can match first.
    fn prune(&self, region: &Region<K>, ids: &mut Vec<u32>) {
        if let Some(pos) = ids.iter().position(|&id| {
            let rule = &self.rules[id as usize];
            (0..FIELDS).all(|f| covers(&rule.ranges[f], region[f].0, region[f].1))
        }) {
            ids.truncate(pos + 1);
        }
    }

    /// Makes `nodes[me]` (already allocated) the subtree for `ids` in
    /// `region`, using at most `budget` leaf entries and nodes (at least
    /// `ids.len()`: a leaf is always affordable).
    fn fill(&mut self, me: u32, region: Region<K>, mut ids: Vec<u32>, depth: usize, budget: usize) {
        self.prune(&region, &mut ids);
        let cut = if ids.len() <= LEAF_SIZE || depth >= MAX_DEPTH {
            None
        } else {
            self.choose_cut(&region, &ids)
        };
        let Some(cut) = cut else {
            self.leaf(me, &region, &ids);
            return;
        };

        // Rule lists per child, then merge neighbours with equal lists.
        let mut lists: Vec<Vec<u32>> = vec![Vec::new(); cut.bounds.len() + 1];
        for &id in &ids {
            for &(lo, hi) in &self.rules[id as usize].ranges[cut.field] {
                let (lo, hi) = (lo.max(region[cut.field].0), hi.min(region[cut.field].1));
                if lo > hi {
                    continue;
                }
                let first = cut.bounds.partition_point(|&b| b <= lo);
                let last = cut.bounds.partition_point(|&b| b <= hi);
                for list in &mut lists[first..=last] {
                    if list.last() != Some(&id) {
                        list.push(id);
                    }
                }
            }
        }
        let mut bounds = Vec::with_capacity(cut.bounds.len());
        let mut merged: Vec<Vec<u32>> = Vec::with_capacity(lists.len());
        for (i, list) in lists.into_iter().enumerate() {
            match merged.last() {
                Some(prev) if *prev == list => {}
                _ => {
                    if i > 0 {
                        bounds.push(cut.bounds[i - 1]);
                    }
                    merged.push(list);
                }
            }
        }

        let regions: Vec<Region<K>> = (0..merged.len())
            .map(|i| {
                let mut child = region;
                if i > 0 {
                    child[cut.field].0 = bounds[i - 1];
                }
                if let Some(&b) = bounds.get(i) {
                    // Bounds lie strictly inside the region, so b - 1 exists.
                    child[cut.field].1 = b.prev();
                }
                child
            })
            .collect();
        for (list, child) in merged.iter_mut().zip(&regions) {
            self.prune(child, list);
        }
        // The budget goes to the children in proportion to their rule
        // lists; a cut the budget cannot pay for leaves a (longer) leaf.
        let total: usize = merged.iter().map(Vec::len).sum();
        let Some(spare) = budget.checked_sub(merged.len()).filter(|&s| s >= total) else {
            self.leaf(me, &region, &ids);
            return;
        };

        let bounds_start = arena_index(self.tree.bounds.len());
        self.tree.bounds.extend_from_slice(&bounds);
        let children_start = arena_index(self.tree.nodes.len());
        self.tree.nodes.extend(std::iter::repeat_n(
            Node::Leaf { start: 0, len: 0 },
            merged.len(),
        ));
        // A child may use the whole budget but a reserve for the children
        // still to build (a few times their list lengths, never less than
        // the lengths themselves), so the budget only binds when the whole
        // tree would exceed it.
        let (mut spare, mut total) = (spare, total);
        for (i, (list, child)) in merged.into_iter().zip(regions).enumerate() {
            let len = list.len();
            let reserve = (total - len).saturating_mul(SIBLING_RESERVE);
            let share = spare.saturating_sub(reserve).max(len);
            let before = self.tree.entries.len() + self.tree.nodes.len();
            let slot = children_start + arena_index(i);
            self.fill(slot, child, list, depth + 1, share);
            let used = self.tree.entries.len() + self.tree.nodes.len() - before;
            spare = spare.saturating_sub(used);
            total -= len;
        }
        self.tree.nodes[me as usize] = Node::Cut {
            field: u8::try_from(cut.field).unwrap_or(0),
            bounds: bounds_start,
            count: arena_index(bounds.len()),
            children: children_start,
        };
    }

    fn leaf(&mut self, me: u32, region: &Region<K>, ids: &[u32]) {
        let start = arena_index(self.tree.entries.len());
        for &id in ids {
            let rule = &self.rules[id as usize];
            let mut hull = *region;
            let mut gaps = 0u8;
            for (f, ranges) in rule.ranges.iter().enumerate() {
                let (rlo, rhi) = region[f];
                let inside: Vec<(K, K)> = ranges
                    .iter()
                    .filter(|&&(lo, hi)| lo <= rhi && hi >= rlo)
                    .map(|&(lo, hi)| (lo.max(rlo), hi.min(rhi)))
                    .collect();
                if let (Some(first), Some(last)) = (inside.first(), inside.last()) {
                    hull[f] = (first.0, last.1);
                }
                if inside.len() > 1 {
                    gaps |= 1 << f;
                }
            }
            self.tree.entries.push(Entry {
                hull,
                index: rule.index,
                rule: id,
                gaps,
            });
        }
        self.tree.nodes[me as usize] = Node::Leaf {
            start,
            len: arena_index(ids.len()),
        };
    }

    /// The field and cut points that leave the fewest rules in the fullest
    /// child, without replicating rules beyond [`SPACE_FACTOR`].
    fn choose_cut(&mut self, region: &Region<K>, ids: &[u32]) -> Option<Cut<K>> {
        let mut best: Option<Cut<K>> = None;
        // Per rule, the fields on which it covers the whole region.
        let masks: Vec<u8> = ids
            .iter()
            .map(|&id| {
                let rule = &self.rules[id as usize];
                (0..FIELDS)
                    .filter(|&f| covers(&rule.ranges[f], region[f].0, region[f].1))
                    .fold(0u8, |m, f| m | 1 << f)
            })
            .collect();
        for field in 0..FIELDS {
            let (rlo, rhi) = region[field];
            if rlo == rhi {
                continue;
            }
            let mut points = Vec::new();
            for &id in ids {
                for &(lo, hi) in &self.rules[id as usize].ranges[field] {
                    if hi < rlo || lo > rhi {
                        continue;
                    }
                    if lo > rlo {
                        points.push(lo);
                    }
                    if hi < rhi {
                        points.push(hi.next());
                    }
                }
            }
            if points.is_empty() {
                continue;
            }
            points.sort_unstable();
            points.dedup();

            let mut consider = |cut: Cut<K>| {
                let better = best
                    .as_ref()
                    .is_none_or(|b| (cut.max_child, cut.total) < (b.max_child, b.total));
                if better && cut.max_child < ids.len() {
                    best = Some(cut);
                }
            };
            // The best single cut among points sampled along the field.
            let samples = points.len().min(BINARY_SAMPLES);
            for i in 0..samples {
                let bounds = vec![points[i * points.len() / samples]];
                let (max_child, total) = self.evaluate(field, region, ids, &masks, &bounds);
                consider(Cut {
                    field,
                    bounds,
                    max_child,
                    total,
                });
            }
            // The widest multi-way cut (bounds at quantiles of the rules'
            // range ends) that stays within the replication budget.
            let mut fanout = MAX_FANOUT;
            while fanout > 2 {
                let wanted = (fanout - 1).min(points.len());
                let mut bounds: Vec<K> = (0..wanted)
                    .map(|i| points[(i + 1) * points.len() / (wanted + 1)])
                    .collect();
                bounds.dedup();
                let (max_child, total) = self.evaluate(field, region, ids, &masks, &bounds);
                if total <= SPACE_FACTOR * ids.len() {
                    consider(Cut {
                        field,
                        bounds,
                        max_child,
                        total,
                    });
                    break;
                }
                fanout /= 2;
            }
        }
        best
    }

    /// (rules in the fullest child, rules summed over children) of a cut,
    /// counting in each child only the rules up to the first one that
    /// covers the whole child (the later ones are pruned there).
    fn evaluate(
        &mut self,
        field: usize,
        region: &Region<K>,
        ids: &[u32],
        masks: &[u8],
        bounds: &[K],
    ) -> (usize, usize) {
        let children = bounds.len() + 1;
        let (rlo, rhi) = region[field];
        let child_lo = |c: usize| if c == 0 { rlo } else { bounds[c - 1] };
        let child_hi = |c: usize| bounds.get(c).map_or(rhi, |b| b.prev());
        let mut counts = vec![0usize; children];
        let mut closed = vec![false; children];
        self.stamp.clear();
        self.stamp.resize(children, u32::MAX);
        for (&id, &mask) in ids.iter().zip(masks) {
            let covers_others = (mask | 1 << field) == ALL_FIELDS;
            for &(lo, hi) in &self.rules[id as usize].ranges[field] {
                let (lo, hi) = (lo.max(rlo), hi.min(rhi));
                if lo > hi {
                    continue;
                }
                let first = bounds.partition_point(|&b| b <= lo);
                let last = bounds.partition_point(|&b| b <= hi);
                for c in first..=last {
                    if closed[c] {
                        continue;
                    }
                    if self.stamp[c] != id {
                        self.stamp[c] = id;
                        counts[c] += 1;
                    }
                    if covers_others && lo <= child_lo(c) && child_hi(c) <= hi {
                        closed[c] = true;
                    }
                }
            }
        }
        let max = counts.iter().copied().max().unwrap_or(0);
        (max, counts.iter().sum())
    }
}
