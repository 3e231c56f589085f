//! Cycles of a directed graph on nodes `0..n`: the strongly connected
//! components (every file in one imports, through the others, itself) and
//! the elementary cycles inside them, bounded so a tangle cannot flood the
//! output.

use std::collections::BTreeSet;

/// The elementary cycles of the graph, each as its nodes in order (the
/// last imports the first), starting at its smallest node; at most `limit`
/// of them, and whether there were more.
pub fn elementary_cycles(
    n: usize,
    edges: &BTreeSet<(usize, usize)>,
    limit: usize,
) -> (Vec<Vec<usize>>, bool) {
    let mut adjacency = vec![Vec::new(); n];
    for &(a, b) in edges {
        if a < n && b < n {
            adjacency[a].push(b);
        }
    }
    let component = components(&adjacency);
    let mut cycles = Vec::new();
    let mut more = false;
    // Cycles through `start` whose other nodes are all larger: each cycle
    // is found exactly once, from its smallest node.
    for start in 0..n {
        if adjacency[start].contains(&start) {
            push(&mut cycles, &mut more, limit, vec![start]);
        }
        let mut path = vec![start];
        let mut on_path = vec![false; n];
        on_path[start] = true;
        let mut stack: Vec<usize> = vec![0];
        while let Some(&next_index) = stack.last() {
            let Some(&node) = path.last() else { break };
            let candidates = &adjacency[node];
            if next_index >= candidates.len() {
                stack.pop();
                on_path[node] = false;
                path.pop();
                continue;
            }
            if let Some(top) = stack.last_mut() {
                *top += 1;
            }
            let to = candidates[next_index];
            if component[to] != component[start] || to < start {
                continue;
            }
            if to == start {
                if path.len() > 1 {
                    push(&mut cycles, &mut more, limit, path.clone());
                }
            } else if !on_path[to] {
                on_path[to] = true;
                path.push(to);
                stack.push(0);
            }
            if more {
                return (cycles, true);
            }
        }
    }
    (cycles, more)
}

fn push(cycles: &mut Vec<Vec<usize>>, more: &mut bool, limit: usize, cycle: Vec<usize>) {
    if cycles.len() < limit {
        cycles.push(cycle);
    } else {
        *more = true;
    }
}

/// Tarjan's strongly connected components: the component index of each
/// node (iterative, so a deep graph cannot overflow the stack).
pub fn components(adjacency: &[Vec<usize>]) -> Vec<usize> {
    let n = adjacency.len();
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut component = vec![usize::MAX; n];
    let mut next_index = 0;
    let mut next_component = 0;
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        // (node, position in its adjacency list)
        let mut work = vec![(root, 0usize)];
        index[root] = next_index;
        low[root] = next_index;
        next_index += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (node, ref mut pos)) = work.last_mut() {
            if let Some(&to) = adjacency[node].get(*pos) {
                *pos += 1;
                if index[to] == usize::MAX {
                    index[to] = next_index;
                    low[to] = next_index;
                    next_index += 1;
                    stack.push(to);
                    on_stack[to] = true;
                    work.push((to, 0));
                } else if on_stack[to] {
                    low[node] = low[node].min(index[to]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[node]);
            }
            if low[node] == index[node] {
                while let Some(member) = stack.pop() {
                    on_stack[member] = false;
                    component[member] = next_component;
                    if member == node {
                        break;
                    }
                }
                next_component += 1;
            }
        }
    }
    component
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edges(list: &[(usize, usize)]) -> BTreeSet<(usize, usize)> {
        list.iter().copied().collect()
    }

    #[test]
    fn a_chain_has_no_cycle() {
        let (cycles, more) = elementary_cycles(4, &edges(&[(0, 1), (1, 2), (2, 3), (0, 3)]), 10);
        assert!(cycles.is_empty());
        assert!(!more);
    }

    #[test]
    fn every_elementary_cycle_once() {
        // 0 -> 1 -> 0, 1 -> 2 -> 1, 0 -> 1 -> 2 -> 0, and 3 <-> 4 apart.
        let g = edges(&[(0, 1), (1, 0), (1, 2), (2, 1), (2, 0), (3, 4), (4, 3)]);
        let (mut cycles, more) = elementary_cycles(5, &g, 10);
        cycles.sort();
        assert_eq!(
            cycles,
            vec![vec![0, 1], vec![0, 1, 2], vec![1, 2], vec![3, 4]]
        );
        assert!(!more);
    }

    #[test]
    fn the_count_is_bounded() {
        // A complete graph on 6 nodes has hundreds of cycles.
        let g: BTreeSet<_> = (0..6)
            .flat_map(|a| (0..6).filter(move |&b| b != a).map(move |b| (a, b)))
            .collect();
        let (cycles, more) = elementary_cycles(6, &g, 20);
        assert_eq!(cycles.len(), 20);
        assert!(more);
    }

    #[test]
    fn components_group_mutual_reachability() {
        let adjacency = vec![vec![1], vec![2], vec![0, 3], vec![]];
        let c = components(&adjacency);
        assert_eq!(c[0], c[1]);
        assert_eq!(c[1], c[2]);
        assert_ne!(c[2], c[3]);
    }
}
