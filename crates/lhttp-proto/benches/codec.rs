//! Parse and encode throughput for a typical chat message and for a larger one.
//!
//! `cargo bench -p lhttp-proto --bench codec`

#![allow(missing_docs)] // criterion_group! generates undocumented public functions.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lhttp_proto::Message;

/// A chat message as the SDK sends it: two headers, a 64-byte body.
fn chat() -> Message {
    Message::builder("chat")
        .header("publish", "chatroom")
        .header("request-id", "4f9a1c27")
        .body(vec![b'x'; 64])
        .build()
        .unwrap()
}

/// A larger message: ten headers, a 4 KiB body.
fn large() -> Message {
    let mut builder = Message::builder("upload");
    for i in 0..10 {
        builder = builder.header(
            format!("x-header-{i}"),
            format!("value number {i}: some text"),
        );
    }
    builder.body(vec![0xa5u8; 4096]).build().unwrap()
}

fn codec(c: &mut Criterion) {
    for (name, msg) in [("chat_64b_2h", chat()), ("body_4k_10h", large())] {
        let wire = msg.to_bytes();
        assert_eq!(Message::parse(wire.clone()).as_ref(), Ok(&msg));

        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_function("parse", |b| {
            b.iter(|| Message::parse(black_box(wire.clone())).unwrap())
        });
        let mut buf = BytesMut::with_capacity(wire.len());
        group.bench_function("encode", |b| {
            b.iter(|| {
                buf.clear();
                black_box(&msg).encode(&mut buf);
                black_box(&buf);
            })
        });
        group.bench_function("to_bytes", |b| {
            b.iter(|| -> Bytes { black_box(&msg).to_bytes() })
        });
        group.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
