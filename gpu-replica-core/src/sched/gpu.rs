//! GPU choice: keep what the replicaSet already holds, then add the free GPUs closest to it.

use std::collections::HashSet;

use crate::gpu::GpuInfo;

/// Picks `count` GPUs (UUIDs) from `gpus`.
///
/// `keep` are GPUs the caller already holds and wants to keep (a patch to more GPUs keeps the
/// old ones, so running work is not moved); `taken` are GPUs held by anyone else. When the
/// topology is known, the set with the smallest total distance wins; ties and unknown topology
/// fall back to the lowest indices. Returns `None` when not enough GPUs are free.
pub fn pick_gpus(
    gpus: &[GpuInfo],
    taken: &HashSet<String>,
    keep: &[String],
    count: usize,
) -> Option<Vec<String>> {
    if keep.len() >= count {
        return Some(keep[..count].to_vec());
    }
    let position = |uuid: &str| gpus.iter().position(|g| g.uuid == uuid);
    let kept: Vec<usize> = keep.iter().filter_map(|u| position(u)).collect();
    let free: Vec<usize> = (0..gpus.len())
        .filter(|&i| !taken.contains(&gpus[i].uuid) && !kept.contains(&i))
        .collect();
    let wanted = count - kept.len();
    if free.len() < wanted {
        return None;
    }
    if gpus.iter().all(|g| g.distances.is_empty()) {
        // No topology: every set is as close as any other, so the lowest indices win.
        let mut uuids: Vec<String> = keep.to_vec();
        uuids.extend(free[..wanted].iter().map(|&i| gpus[i].uuid.clone()));
        return Some(uuids);
    }
    let distance = |a: usize, b: usize| -> u32 { gpus[a].distances.get(b).copied().unwrap_or(0) };
    // Grow a set greedily from a seed, always adding the free GPU closest to the set.
    let grow = |mut chosen: Vec<usize>| -> (u32, Vec<usize>) {
        let mut cost = 0;
        while chosen.len() < kept.len() + wanted {
            let (best, added) = free
                .iter()
                .filter(|i| !chosen.contains(i))
                .map(|&i| (i, chosen.iter().map(|&c| distance(c, i)).sum::<u32>()))
                .min_by_key(|&(i, d)| (d, i))
                .expect("enough free GPUs checked above");
            cost += added;
            chosen.push(best);
        }
        (cost, chosen)
    };
    let best = if kept.is_empty() {
        free.iter()
            .map(|&seed| grow(vec![seed]))
            .min_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)))
            .map(|(_, chosen)| chosen)
            .unwrap_or_default()
    } else {
        grow(kept.clone()).1
    };
    let mut added: Vec<usize> = best[kept.len()..].to_vec();
    added.sort_unstable();
    let mut uuids: Vec<String> = keep.to_vec();
    uuids.extend(added.into_iter().map(|i| gpus[i].uuid.clone()));
    Some(uuids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::StaticInventory;

    fn gpus(n: u32) -> Vec<GpuInfo> {
        futures_util::FutureExt::now_or_never(crate::gpu::GpuInventory::gpus(
            &StaticInventory::fake(n),
        ))
        .unwrap()
        .unwrap()
    }

    fn taken(gpus: &[GpuInfo], indices: &[usize]) -> HashSet<String> {
        indices.iter().map(|&i| gpus[i].uuid.clone()).collect()
    }

    #[test]
    fn without_topology_the_lowest_free_indices_win() {
        let g = gpus(4);
        let picked = pick_gpus(&g, &taken(&g, &[0]), &[], 2).unwrap();
        assert_eq!(picked, vec![g[1].uuid.clone(), g[2].uuid.clone()]);
    }

    #[test]
    fn asking_for_more_than_is_free_gives_none() {
        let g = gpus(2);
        assert!(pick_gpus(&g, &taken(&g, &[1]), &[], 2).is_none());
    }

    #[test]
    fn growing_keeps_the_gpus_already_held() {
        let g = gpus(4);
        let keep = vec![g[2].uuid.clone()];
        let picked = pick_gpus(&g, &taken(&g, &[2]), &keep, 2).unwrap();
        assert_eq!(picked, vec![g[2].uuid.clone(), g[0].uuid.clone()]);
    }

    #[test]
    fn shrinking_keeps_the_first_gpus_held() {
        let g = gpus(4);
        let keep = vec![g[3].uuid.clone(), g[1].uuid.clone()];
        assert_eq!(
            pick_gpus(&g, &HashSet::new(), &keep, 1).unwrap(),
            vec![g[3].uuid.clone()]
        );
    }

    #[test]
    fn close_gpus_are_preferred_when_topology_is_known() {
        // Two PCIe switches: {0, 2} and {1, 3}. GPU 0 is taken, so a pair must come from {1, 3}.
        let mut g = gpus(4);
        let switch = [0, 1, 0, 1];
        for a in 0..4 {
            g[a].distances = (0..4)
                .map(|b| {
                    if a == b {
                        0
                    } else if switch[a] == switch[b] {
                        1
                    } else {
                        5
                    }
                })
                .collect();
        }
        let picked = pick_gpus(&g, &taken(&g, &[0]), &[], 2).unwrap();
        assert_eq!(picked, vec![g[1].uuid.clone(), g[3].uuid.clone()]);
        // Growing from GPU 2 takes its neighbour 0 if free, not the lower-cost index 1.
        let picked = pick_gpus(&g, &taken(&g, &[2]), &[g[2].uuid.clone()], 2).unwrap();
        assert_eq!(picked, vec![g[2].uuid.clone(), g[0].uuid.clone()]);
    }

    #[test]
    fn the_choice_is_deterministic() {
        let g = gpus(8);
        let t = taken(&g, &[1, 4]);
        let first = pick_gpus(&g, &t, &[], 3);
        for _ in 0..10 {
            assert_eq!(pick_gpus(&g, &t, &[], 3), first);
        }
    }
}
