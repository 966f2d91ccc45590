//! Micro-benchmarks of the on-disk codec: checksum, leader decode, whole-area decode. These
//! run on every renewal and ballot, so their cost bounds the CPU side of the data path.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tenure_format::area::{decode_area, encode_lockspace_area, identify, lockspace_sector0};
use tenure_format::{checksum, Geometry, LeaderRecord, Name};

fn bench(c: &mut Criterion) {
    let g = Geometry::LEGACY_512;
    let name = Name::new("bench").expect("valid name");
    let mut area = vec![0u8; g.area_bytes() as usize];
    encode_lockspace_area(&mut area, g, name, 10);
    lockspace_sector0(&mut area[..512], g, name, 10);
    c.bench_function("checksum_168", |b| {
        b.iter(|| checksum(black_box(&area[..168])))
    });
    c.bench_function("leader_decode", |b| {
        b.iter(|| LeaderRecord::decode(black_box(&area[..512])))
    });
    let probe = identify(&area);
    c.bench_function("lockspace_area_decode_512_1M", |b| {
        b.iter(|| decode_area(0, black_box(&probe), black_box(&area)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
