use super::*;

fn decode_all(decoder: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, HpackError> {
    let mut fields = Vec::new();
    decoder.decode(block, |name, value| {
        fields.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ))
    })?;
    Ok(fields)
}

fn pairs(fields: &[(&str, &str)]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// Huffman-encodes with the RFC's code table, padding with ones.
fn huffman_encode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut bits, mut count) = (0u64, 0u32);
    for &byte in bytes {
        let (code, length) = CODES[byte as usize];
        bits = bits << length | code as u64;
        count += length as u32;
        while count >= 8 {
            out.push((bits >> (count - 8)) as u8);
            count -= 8;
        }
    }
    if count > 0 {
        out.push((bits << (8 - count)) as u8 | (0xff >> count));
    }
    out
}

/// RFC 7541 C.4: three requests with Huffman-coded literals sharing one dynamic table.
#[test]
fn rfc_7541_request_examples_with_huffman() {
    let mut decoder = Decoder::default();
    let first = [
        0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90,
        0xf4, 0xff,
    ];
    assert_eq!(
        decode_all(&mut decoder, &first).unwrap(),
        pairs(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ])
    );
    let second = [
        0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
    ];
    assert_eq!(
        decode_all(&mut decoder, &second).unwrap(),
        pairs(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
            ("cache-control", "no-cache"),
        ])
    );
    let third = [
        0x82, 0x87, 0x85, 0xbf, 0x40, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f, 0x89,
        0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf,
    ];
    assert_eq!(
        decode_all(&mut decoder, &third).unwrap(),
        pairs(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ])
    );
    // 57 + 53 + 54 bytes in the table (RFC 7541 C.4.3).
    assert_eq!(decoder.size, 164);
}

#[test]
fn huffman_round_trips_every_byte_value() {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut inputs: Vec<Vec<u8>> = vec![(0..=255).collect(), Vec::new(), b"a".to_vec()];
    for _ in 0..500 {
        let length = rng.usize(0..64);
        inputs.push((0..length).map(|_| rng.u8(..)).collect());
    }
    for input in inputs {
        let mut out = Vec::new();
        huffman_decode(&huffman_encode(&input), &mut out).unwrap();
        assert_eq!(out, input);
    }
}

#[test]
fn bad_huffman_padding_is_an_error() {
    // "a" is 00011 (5 bits); padding with zeros is not a prefix of EOS.
    assert_eq!(
        huffman_decode(&[0b0001_1000], &mut Vec::new()),
        Err(HpackError::Huffman)
    );
    // Eight or more bits of ones are padding longer than allowed.
    let mut padded = huffman_encode(b"a");
    padded.push(0xff);
    assert_eq!(
        huffman_decode(&padded, &mut Vec::new()),
        Err(HpackError::Huffman)
    );
    // EOS itself (thirty ones) in the string.
    assert_eq!(
        huffman_decode(&[0xff, 0xff, 0xff, 0xff], &mut Vec::new()),
        Err(HpackError::Huffman)
    );
}

#[test]
fn the_dynamic_table_evicts_and_obeys_size_updates() {
    let mut decoder = Decoder::new(100);
    // Literal with indexing, new name: "aaaa: bbbb" costs 40.
    let entry = |name: &str, value: &str| {
        let mut block = vec![0x40, name.len() as u8];
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
        block
    };
    decode_all(&mut decoder, &entry("aaaa", "1111")).unwrap();
    decode_all(&mut decoder, &entry("bbbb", "2222")).unwrap();
    assert_eq!(decoder.table.len(), 2);
    // A third does not fit in 100: the oldest goes.
    decode_all(&mut decoder, &entry("cccc", "3333")).unwrap();
    assert_eq!(
        decode_all(&mut decoder, &[0xbe, 0xbf]).unwrap(),
        pairs(&[("cccc", "3333"), ("bbbb", "2222")])
    );
    assert_eq!(
        decode_all(&mut decoder, &[0xc0]),
        Err(HpackError::BadIndex(64))
    );
    // A size update to zero empties the table; above the allowed size is an error; so
    // is one after a field.
    decode_all(&mut decoder, &[0x20]).unwrap();
    assert_eq!(decoder.table.len(), 0);
    assert_eq!(
        decode_all(&mut decoder, &[0x3f, 0x62]),
        Err(HpackError::TableSize(129, 100))
    );
    assert_eq!(
        decode_all(&mut decoder, &[0x82, 0x20]),
        Err(HpackError::LateSizeUpdate)
    );
}

#[test]
fn truncated_and_oversized_input_is_an_error_not_a_panic() {
    let mut decoder = Decoder::default();
    for block in [
        &[0x40][..],
        &[0x40, 0x05, b'a'],
        &[0x7f],
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
        &[0x80],
        &[0x00, 0x81],
    ] {
        assert!(decode_all(&mut decoder, block).is_err(), "{block:?}");
    }
    // Any bytes at all: an answer or an error.
    let mut rng = fastrand::Rng::with_seed(11);
    for _ in 0..20_000 {
        let length = rng.usize(0..40);
        let block: Vec<u8> = (0..length).map(|_| rng.u8(..)).collect();
        let _ = decode_all(&mut decoder, &block);
    }
}

#[test]
fn agrees_with_an_independent_decoder_on_our_own_requests() {
    // The agent's request block, decoded here and by loona-hpack.
    let prepared = super::super::frames::Prepared::for_method(
        super::super::frames::Method::Check,
        true,
        "api.internal:443",
        "svc",
        "agent/1",
        &[("x-k".into(), "v".into())],
    )
    .unwrap();
    let mut out = bytes::BytesMut::new();
    prepared.encode(&mut out, 1, std::time::Duration::from_secs(1), 16_384);
    let block = &out[9..9 + super::super::frames::FrameHeader::parse(&out).length];
    let ours = decode_all(&mut Decoder::default(), block).unwrap();
    let theirs: Vec<(String, String)> = loona_hpack::Decoder::new()
        .decode(block)
        .unwrap()
        .into_iter()
        .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
        .collect();
    assert_eq!(ours, theirs);
}
