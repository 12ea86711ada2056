//! GPU and port scheduling: a claim's choice with 8 and with 1024 GPUs.

use std::collections::HashSet;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use gpu_replica_core::sched::{pick_gpus, pick_ports, PortRange};
use gpu_replica_core::GpuInfo;

fn gpus(count: u32, topology: bool) -> Vec<GpuInfo> {
    (0..count)
        .map(|index| GpuInfo {
            index,
            uuid: format!("GPU-{index:08}"),
            name: "bench".into(),
            memory_total: None,
            memory_used: None,
            utilization: None,
            // Eight GPUs per PCIe switch.
            distances: if topology {
                (0..count)
                    .map(|other| if other / 8 == index / 8 { 1 } else { 5 })
                    .collect()
            } else {
                Vec::new()
            },
        })
        .collect()
}

fn scheduler(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick_gpus");
    for count in [8u32, 1024] {
        for topology in [false, true] {
            let all = gpus(count, topology);
            // Half the host taken, every other GPU: the worst case for closeness.
            let taken: HashSet<String> = all.iter().step_by(2).map(|g| g.uuid.clone()).collect();
            let label = format!(
                "{count}_gpus_{}",
                if topology { "topology" } else { "flat" }
            );
            group.bench_function(BenchmarkId::new("claim_2", &label), |b| {
                b.iter(|| pick_gpus(&all, &taken, &[], 2))
            });
            let keep = vec![all[1].uuid.clone()];
            group.bench_function(BenchmarkId::new("grow_1_to_4", &label), |b| {
                b.iter(|| pick_gpus(&all, &taken, &keep, 4))
            });
        }
    }
    group.finish();
    let range = PortRange {
        start: 40000,
        end: 65535,
    };
    let taken: HashSet<u16> = (40000..41000).collect();
    c.bench_function("pick_ports/2_of_25536_with_1000_taken", |b| {
        b.iter(|| pick_ports(range, &taken, 2, |_| true))
    });
}

criterion_group!(benches, scheduler);
criterion_main!(benches);
