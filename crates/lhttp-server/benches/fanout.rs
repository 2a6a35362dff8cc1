//! Hub fan-out in process: one publish of a 64-byte chat message to 1, 100 and 10,000
//! subscribers (encode once, queue the shared bytes for each, then dequeue as writers do).
//!
//! `cargo bench -p lhttp-server --bench fanout`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lhttp_server::{bench_support::FanOut, proto::Message};

fn fanout(c: &mut Criterion) {
    let message = Message::builder("chat")
        .header("publish", "bench")
        .header("nick", "ann")
        .body(vec![b'x'; 64])
        .build()
        .expect("valid message");
    let mut group = c.benchmark_group("fanout");
    for subscribers in [1usize, 100, 10_000] {
        let mut fixture = FanOut::new(subscribers);
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(subscribers),
            &subscribers,
            |b, _| b.iter(|| fixture.publish_and_drain(&message)),
        );
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
