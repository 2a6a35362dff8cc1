//! Multipart bodies: the `parts()` of any parsed message, and offsets made from the first
//! bytes of the input over the rest as a body. Never panics; parts that parse are slices of
//! their byte range and survive a round trip through `MultipartBuilder`.

#![no_main]

use bytes::Bytes;
use lhttp_proto::{Limits, Message, MultipartBuilder, Part, multipart::parse_parts};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Message::parse(Bytes::copy_from_slice(data)) {
        let _ = msg.parts();
    }

    // Byte 0: number of offsets (low 3 bits) and whether to sort them (high bit); then two
    // bytes per offset; the rest is the body.
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(control & 7);
    if rest.len() < 2 * count {
        return;
    }
    let (raw, body) = rest.split_at(2 * count);
    let mut offsets: Vec<usize> = raw
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (body.len() + 2))
        .collect();
    if control & 0x80 != 0 {
        offsets.sort_unstable();
        offsets.dedup();
    }
    let value = offsets
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    let body = Bytes::copy_from_slice(body);
    let direct = parse_parts(&value, &body, &Limits::default());

    // The same through a message's header.
    let msg = Message::builder("m")
        .header("multipart", value.clone())
        .body(body.clone())
        .build()
        .expect("offsets and a binary body make a valid message");
    assert_eq!(msg.parts(), direct.clone().map(Some));

    let Ok(parts) = direct else {
        return;
    };
    assert_eq!(parts.len(), offsets.len());
    for (i, part) in parts.iter().enumerate() {
        let end = offsets.get(i + 1).copied().unwrap_or(body.len());
        let start = end - part.body.len();
        assert!(start >= offsets[i]);
        assert_eq!(part.body, body.slice(start..end));
    }

    // Rebuilt with the builder, the parts come back equal.
    let mut builder = MultipartBuilder::new();
    for part in &parts {
        let headers = part
            .headers
            .iter()
            .map(|h| (h.name().to_owned(), h.value().to_owned()));
        builder
            .part(headers, &part.body)
            .expect("parsed headers are valid");
    }
    let (value, body) = builder.finish();
    let rebuilt: Vec<Part> =
        parse_parts(&value, &body, &Limits::default()).expect("rebuilt parts parse");
    assert_eq!(rebuilt, parts);
});
