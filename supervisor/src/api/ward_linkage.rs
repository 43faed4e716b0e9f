//! Ward's hierarchical clustering and the `maxclust` cut exactly as scipy computes them
//! (scipy 1.17, `scipy/cluster/_hierarchy.pyx`): `linkage(condensed, method="ward")` runs the
//! nearest-neighbour chain (`nn_chain`) with the Lance–Williams update `_ward`
//! (`_hierarchy_distance_update.pxi`) on whatever distances it is given, sorts the merges by
//! height (stable) and relabels them with a union-find (`label`); `fcluster(Z, t,
//! criterion="maxclust")` bisects the merge heights for the lowest cut giving at most `t`
//! clusters (`cluster_maxclust_monocrit`) and numbers the clusters in the tree's depth-first
//! order (`cluster_monocrit`). PyLate's token pooling is built on these two calls
//! (docs/hybrid-search.md, "Token pooling"). Same loops, same comparisons and the same
//! floating-point expressions as scipy, so ties break as scipy breaks them.
//!
//! Cost: O(n²) memory (the condensed matrix) and O(n²) to O(n³) time for n points; n is a
//! document's token count (at most its `document_length`, a few hundred).

/// One merge of the linkage matrix: scipy's `Z` row `[a, b, height, size]`, `a < b`, ids
/// `>= n` naming earlier merges (`n + row`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Merge {
    pub a: usize,
    pub b: usize,
    pub height: f64,
    pub size: usize,
}

/// scipy's `condensed_index`: where distance (i, j), i != j, sits in the condensed matrix.
fn condensed_index(n: usize, i: usize, j: usize) -> usize {
    let (i, j) = if i < j { (i, j) } else { (j, i) };
    n * i - (i * (i + 1) / 2) + (j - i - 1)
}

/// scipy's `_ward`: the distance from cluster i to the merge of x and y.
fn ward(d_xi: f64, d_yi: f64, d_xy: f64, nx: usize, ny: usize, ni: usize) -> f64 {
    let t = 1.0 / (nx + ny + ni) as f64;
    ((ni + nx) as f64 * t * d_xi * d_xi + (ni + ny) as f64 * t * d_yi * d_yi - ni as f64 * t * d_xy * d_xy).sqrt()
}

/// `scipy.cluster.hierarchy.linkage(condensed, method="ward")` for `n >= 2` points; `None`
/// when a distance is not finite (scipy raises there) or a merge height is NaN (scipy's
/// `fcluster` then refuses the linkage matrix).
pub fn ward_linkage(condensed: &[f64], n: usize) -> Option<Vec<Merge>> {
    assert!(n >= 2 && condensed.len() == n * (n - 1) / 2, "a condensed matrix of n >= 2 points");
    if condensed.iter().any(|d| !d.is_finite()) {
        return None;
    }
    let mut d = condensed.to_vec();
    let mut size = vec![1usize; n];
    let mut chain: Vec<usize> = Vec::with_capacity(n);
    let mut z = Vec::with_capacity(n - 1);
    for _ in 0..n - 1 {
        if chain.is_empty() {
            chain.push((0..n).find(|&i| size[i] > 0).expect("a cluster is left"));
        }
        // Follow nearest neighbours until two are each other's (`nn_chain`).
        let (x, y, current) = loop {
            let x = chain[chain.len() - 1];
            let (mut y, mut current) = if chain.len() > 1 {
                let prev = chain[chain.len() - 2];
                (prev, d[condensed_index(n, x, prev)])
            } else {
                (0, f64::INFINITY)
            };
            for i in 0..n {
                if size[i] == 0 || i == x {
                    continue;
                }
                let dist = d[condensed_index(n, x, i)];
                if dist < current {
                    current = dist;
                    y = i;
                }
            }
            if chain.len() > 1 && y == chain[chain.len() - 2] {
                break (x, y, current);
            }
            chain.push(y);
        };
        chain.truncate(chain.len() - 2);
        let (x, y) = if x > y { (y, x) } else { (x, y) };
        let (nx, ny) = (size[x], size[y]);
        z.push(Merge { a: x, b: y, height: current, size: nx + ny });
        size[x] = 0;
        size[y] = nx + ny;
        for i in 0..n {
            let ni = size[i];
            if ni == 0 || i == y {
                continue;
            }
            let updated = ward(d[condensed_index(n, i, x)], d[condensed_index(n, i, y)], current, nx, ny, ni);
            d[condensed_index(n, i, y)] = updated;
        }
    }
    if z.iter().any(|m| m.height.is_nan()) {
        return None; // Ward's update on distances that are not Euclidean can leave sqrt(< 0)
    }
    // numpy's stable `argsort(kind="mergesort")` by height, then `label`.
    z.sort_by(|p, q| p.height.partial_cmp(&q.height).unwrap_or(std::cmp::Ordering::Equal));
    label(&mut z, n);
    Some(z)
}

/// scipy's `label`: merge ids from a union-find over the sorted merges.
fn label(z: &mut [Merge], n: usize) {
    let mut parent: Vec<usize> = (0..2 * n - 1).collect();
    let mut sizes = vec![1usize; 2 * n - 1];
    let find = |parent: &mut Vec<usize>, mut x: usize| {
        let mut p = x;
        while parent[x] != x {
            x = parent[x];
        }
        while parent[p] != x {
            let next = parent[p];
            parent[p] = x;
            p = next;
        }
        x
    };
    for (k, m) in z.iter_mut().enumerate() {
        let (xr, yr) = (find(&mut parent, m.a), find(&mut parent, m.b));
        (m.a, m.b) = if xr < yr { (xr, yr) } else { (yr, xr) };
        let next = n + k;
        parent[xr] = next;
        parent[yr] = next;
        sizes[next] = sizes[xr] + sizes[yr];
        m.size = sizes[next];
    }
}

/// `get_max_dist_for_each_cluster`: per merge, the largest height in its subtree.
fn max_dists(z: &[Merge], n: usize) -> Vec<f64> {
    let mut md = vec![0f64; n - 1];
    for (k, m) in z.iter().enumerate() {
        // Children are earlier rows, so one pass in row order sees them first.
        let mut h = m.height;
        for c in [m.a, m.b] {
            if c >= n && md[c - n] > h {
                h = md[c - n];
            }
        }
        md[k] = h;
    }
    md
}

/// The clusters (count, over the tree's depth-first walk) when every subtree whose
/// criterion is `<= thresh` is one, stopping past `max_nc` (`cluster_maxclust_monocrit`'s
/// inner walk).
fn count_clusters(z: &[Merge], mc: &[f64], n: usize, thresh: f64, max_nc: usize) -> usize {
    let mut visited = vec![false; 2 * n - 1];
    let mut stack = vec![2 * n - 2];
    let mut nc = 0;
    while let Some(&node) = stack.last() {
        let root = node - n;
        let (lc, rc) = (z[root].a, z[root].b);
        if mc[root] <= thresh {
            nc += 1;
            if nc > max_nc {
                return nc;
            }
            stack.pop();
            visited[lc] = true;
            visited[rc] = true;
            continue;
        }
        let mut descended = false;
        for c in [lc, rc] {
            if !visited[c] {
                visited[c] = true;
                if c >= n {
                    stack.push(c);
                    descended = true;
                    break;
                }
                nc += 1;
                if nc > max_nc {
                    return nc;
                }
            }
        }
        if !descended {
            stack.pop();
        }
    }
    nc
}

/// `fcluster(Z, t=max_nc, criterion="maxclust")`: each point's cluster label, 1-based.
pub fn fcluster_maxclust(z: &[Merge], n: usize, max_nc: usize) -> Vec<usize> {
    if max_nc >= n {
        return (1..=n).collect();
    }
    let mc = max_dists(z, n);
    // Bisect over the (sorted) criteria; index -1 stands for "-inf".
    let (mut lower, mut upper) = (-1i64, n as i64 - 1);
    while upper - lower > 1 {
        let i = (lower + upper) >> 1;
        if count_clusters(z, &mc, n, mc[i as usize], max_nc) > max_nc {
            lower = i;
        } else {
            upper = i;
        }
    }
    // `MC[upper_idx]` with upper_idx = n - 1 reads past the n - 1 criteria in scipy; it
    // cannot happen there either: a cut at the root's height always gives 1 cluster.
    monocrit(z, &mc, mc[(upper as usize).min(n - 2)], n)
}

/// `cluster_monocrit`: label each point by a depth-first walk, a subtree whose criterion is
/// `<= cutoff` being one cluster, numbered as the walk reaches them.
fn monocrit(z: &[Merge], mc: &[f64], cutoff: f64, n: usize) -> Vec<usize> {
    let mut t = vec![0usize; n];
    let mut visited = vec![false; 2 * n - 1];
    let mut stack = vec![2 * n - 2];
    let (mut n_cluster, mut leader): (usize, Option<usize>) = (0, None);
    while let Some(&node) = stack.last() {
        let root = node - n;
        let (lc, rc) = (z[root].a, z[root].b);
        if leader.is_none() && mc[root] <= cutoff {
            leader = Some(root);
            n_cluster += 1;
        }
        if lc >= n && !visited[lc] {
            visited[lc] = true;
            stack.push(lc);
            continue;
        }
        if rc >= n && !visited[rc] {
            visited[rc] = true;
            stack.push(rc);
            continue;
        }
        for c in [lc, rc] {
            if c < n {
                if leader.is_none() {
                    n_cluster += 1;
                }
                t[c] = n_cluster;
            }
        }
        if leader == Some(root) {
            leader = None;
        }
        stack.pop();
    }
    t
}

#[cfg(test)]
#[path = "ward_linkage_tests.rs"]
mod tests;
