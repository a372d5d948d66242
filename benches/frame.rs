//! Framing cost over a buffer of typical server messages: header checks alone, the relay's forward (check every
//! header, copy the span to the client's output buffer once), and splitting into owned frames (client side).

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use pgsplit::protocol::{frame, Frame};

fn bench(c: &mut Criterion) {
    // A result of 100 DataRows of ~60 bytes, as a server sends it.
    let mut wire = BytesMut::new();
    for i in 0..100 {
        let row = format!("row number {i:>8} with some text payload ......");
        Frame {
            tag: b'D',
            body: bytes::Bytes::from(row),
        }
        .encode(&mut wire);
    }
    let wire = wire.freeze();
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(100));
    g.bench_function("check_100_rows", |b| {
        b.iter(|| {
            let mut pos = 0;
            while let Ok(Some(n)) = frame::check(black_box(&wire[pos..]), 1 << 30) {
                pos += n;
            }
            pos
        })
    });
    let mut out = BytesMut::with_capacity(wire.len());
    g.bench_function("forward_100_rows", |b| {
        b.iter(|| {
            out.clear();
            let mut pos = 0;
            while let Ok(Some(n)) = frame::check(black_box(&wire[pos..]), 1 << 30) {
                pos += n;
            }
            out.extend_from_slice(&wire[..pos]);
            out.len()
        })
    });
    g.bench_function("split_100_rows", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            let mut n = 0;
            while let Ok(Some(f)) = Frame::split(&mut buf, 1 << 30) {
                n += f.body.len();
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
