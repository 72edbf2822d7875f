use super::*;

fn decode_block(block: &[u8]) -> Vec<(String, String)> {
    let mut decoder = loona_hpack::Decoder::new();
    decoder
        .decode(block)
        .expect("a valid header block")
        .into_iter()
        .map(|(name, value)| {
            (
                String::from_utf8(name).unwrap(),
                String::from_utf8(value).unwrap(),
            )
        })
        .collect()
}

/// Splits encoded frames back into (header, payload) pairs.
fn split_frames(mut bytes: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let header = FrameHeader::parse(bytes);
        let end = FRAME_HEADER_LEN + header.length;
        frames.push((header, bytes[FRAME_HEADER_LEN..end].to_vec()));
        bytes = &bytes[end..];
    }
    frames
}

fn prepared() -> Prepared {
    let metadata = vec![("x-probe".to_string(), "haproxy".to_string())];
    Prepared::for_method(
        Method::Check,
        false,
        "api.internal:50051",
        "orders",
        "agent/1.0",
        &metadata,
    )
    .unwrap()
}

#[test]
fn a_check_is_one_headers_and_one_data_frame_with_every_header() {
    let mut out = BytesMut::new();
    prepared().encode(&mut out, 7, Duration::from_millis(1500), MAX_FRAME_SIZE);
    let frames = split_frames(&out);
    assert_eq!(frames.len(), 2);
    let (headers, block) = &frames[0];
    assert_eq!(
        (headers.kind, headers.flags, headers.stream),
        (kind::HEADERS, flag::END_HEADERS, 7)
    );
    assert_eq!(
        decode_block(block),
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/grpc.health.v1.Health/Check"),
            (":authority", "api.internal:50051"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("user-agent", "agent/1.0"),
            ("x-probe", "haproxy"),
            ("grpc-timeout", "1500m"),
        ]
        .map(|(name, value)| (name.to_string(), value.to_string()))
    );
    let (data, body) = &frames[1];
    assert_eq!(
        (data.kind, data.flags, data.stream),
        (kind::DATA, flag::END_STREAM, 7)
    );
    let expected = HealthCheckRequest {
        service: "orders".into(),
    }
    .encode_to_vec();
    assert_eq!(body[0], 0, "not compressed");
    assert_eq!(
        u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize,
        expected.len()
    );
    assert_eq!(&body[5..], &expected[..]);
}

#[test]
fn a_large_header_block_continues_in_continuation_frames() {
    let long = "v".repeat(40_000);
    let metadata = vec![("x-long".to_string(), long.clone())];
    let prepared = Prepared::for_method(Method::Check, true, "b:1", "", "ua", &metadata).unwrap();
    let mut out = BytesMut::new();
    prepared.encode(&mut out, 1, Duration::from_secs(1), MAX_FRAME_SIZE);
    let frames = split_frames(&out);
    let kinds: Vec<(u8, u8)> = frames.iter().map(|(h, _)| (h.kind, h.flags)).collect();
    assert_eq!(
        kinds,
        [
            (kind::HEADERS, 0),
            (kind::CONTINUATION, 0),
            (kind::CONTINUATION, flag::END_HEADERS),
            (kind::DATA, flag::END_STREAM),
        ]
    );
    assert!(frames.iter().all(|(h, _)| h.length <= MAX_FRAME_SIZE));
    let block: Vec<u8> = frames[..3].iter().flat_map(|(_, p)| p.clone()).collect();
    let fields = decode_block(&block);
    assert!(fields.contains(&(":scheme".into(), "https".into())));
    assert!(fields.contains(&("x-long".into(), long)));
}

#[test]
fn hpack_integers_past_their_prefix() {
    let mut out = BytesMut::new();
    put_int(&mut out, 0x00, 4, 58);
    assert_eq!(&out[..], [0x0f, 0x2b]);
    out.clear();
    put_int(&mut out, 0x00, 7, 1337);
    assert_eq!(&out[..], [0x7f, 0xba, 0x09]);
}

#[test]
fn grpc_timeouts_have_at_most_eight_digits() {
    assert_eq!(grpc_timeout(Duration::from_micros(10)), "1m");
    assert_eq!(grpc_timeout(Duration::from_secs(3)), "3000m");
    assert_eq!(grpc_timeout(Duration::from_secs(200_000)), "200000S");
}

#[test]
fn an_authority_that_is_not_one_is_refused() {
    let error = Prepared::for_method(Method::Check, false, "a b", "", "ua", &[]).unwrap_err();
    assert!(matches!(error, ProbeError::InvalidTarget(_)), "{error:?}");
}

#[test]
fn frame_headers_round_trip_and_ignore_the_reserved_bit() {
    let mut out = BytesMut::new();
    put_frame_header(&mut out, 70_000, kind::SETTINGS, flag::ACK, 5);
    let header = FrameHeader::parse(&out);
    assert_eq!(
        header,
        FrameHeader {
            length: 70_000,
            kind: kind::SETTINGS,
            flags: flag::ACK,
            stream: 5
        }
    );
    out[5] |= 0x80;
    assert_eq!(FrameHeader::parse(&out).stream, 5);
}

#[test]
fn the_opening_is_the_preface_then_settings_then_a_window_update() {
    let opening = client_opening();
    assert!(opening.starts_with(PREFACE));
    let frames = split_frames(&opening[PREFACE.len()..]);
    assert_eq!(frames[0].0.kind, kind::SETTINGS);
    assert_eq!(frames[0].1, [0, 2, 0, 0, 0, 0, 0, 6, 0, 1, 0, 0]);
    assert_eq!(frames[1].0.kind, kind::WINDOW_UPDATE);
    let increment = u32::from_be_bytes(frames[1].1[..].try_into().unwrap()) as i64;
    assert_eq!(DEFAULT_WINDOW + increment, MAX_WINDOW);
}

/// An answer built from header blocks (each: fields, end of stream) and DATA chunks in
/// the order they are listed.
enum Part<'a> {
    Block(&'a [(&'a str, &'a str)], bool),
    Data(Vec<u8>),
}

fn answer(parts: &[Part]) -> Result<Outcome, ProbeError> {
    let mut answer = Answer::default();
    for part in parts {
        match part {
            Part::Block(fields, end_stream) => {
                for (name, value) in *fields {
                    answer.field(name.as_bytes(), value.as_bytes());
                }
                answer.end_block(*end_stream)?;
            }
            Part::Data(bytes) => answer.data(bytes)?,
        }
    }
    Ok(answer.outcome())
}

fn message(status: i32) -> Vec<u8> {
    let encoded = HealthCheckResponse { status }.encode_to_vec();
    let mut framed = vec![0];
    framed.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    framed.extend_from_slice(&encoded);
    framed
}

const OK_HEADERS: &[(&str, &str)] = &[(":status", "200"), ("content-type", "application/grpc")];
const OK_TRAILERS: &[(&str, &str)] = &[("grpc-status", "0")];

fn reason(result: Result<Outcome, ProbeError>) -> String {
    match result {
        Ok(outcome) => outcome.reason(),
        Err(error) => format!("error: {error}"),
    }
}

#[test]
fn a_normal_answer_gives_its_serving_status() {
    for (status, expected) in [
        (1, Outcome::Answered(ServingStatus::Serving)),
        (2, Outcome::Answered(ServingStatus::NotServing)),
        (3, Outcome::Answered(ServingStatus::ServiceUnknown)),
        (999, Outcome::Answered(ServingStatus::Unrecognized(999))),
    ] {
        let parts = [
            Part::Block(OK_HEADERS, false),
            Part::Data(message(status)),
            Part::Block(OK_TRAILERS, true),
        ];
        assert_eq!(answer(&parts).unwrap(), expected);
    }
    // The message may arrive in pieces, and content-type may carry a subtype.
    let whole = message(1);
    let parts = [
        Part::Block(
            &[
                (":status", "200"),
                ("content-type", "application/grpc+proto"),
            ],
            false,
        ),
        Part::Data(whole[..3].to_vec()),
        Part::Data(whole[3..].to_vec()),
        Part::Block(OK_TRAILERS, true),
    ];
    assert_eq!(
        answer(&parts).unwrap(),
        Outcome::Answered(ServingStatus::Serving)
    );
}

#[test]
fn every_malformed_answer_has_its_own_reason() {
    let cases: Vec<(Vec<Part>, &str)> = vec![
        (
            vec![Part::Block(&[(":status", "500")], true)],
            "transport: http status 500",
        ),
        (
            vec![Part::Block(
                &[(":status", "503"), ("grpc-status", "14")],
                true,
            )],
            "transport: http status 503, grpc UNAVAILABLE",
        ),
        (
            vec![Part::Block(
                &[(":status", "200"), ("grpc-status", "0")],
                true,
            )],
            "transport: answer without content-type",
        ),
        (
            vec![Part::Block(
                &[(":status", "200"), ("content-type", "text/html")],
                true,
            )],
            "transport: content-type \"text/html\" is not grpc",
        ),
        (
            vec![Part::Block(OK_HEADERS, true)],
            "transport: headers ended the answer without grpc-status",
        ),
        (
            vec![
                Part::Block(OK_HEADERS, false),
                Part::Data(message(1)),
                Part::Block(&[("grpc-message", "x")], true),
            ],
            "transport: trailers without grpc-status",
        ),
        (
            vec![Part::Block(OK_HEADERS, false), Part::Data(message(1))],
            "transport: no trailers after the message",
        ),
        (
            vec![
                Part::Block(OK_HEADERS, false),
                Part::Data(message(1)),
                Part::Block(&[("grpc-status", "zero")], true),
            ],
            "transport: unparsable grpc-status",
        ),
        (
            vec![Part::Block(
                &[
                    (":status", "200"),
                    ("content-type", "application/grpc"),
                    ("grpc-status", "5"),
                    ("grpc-message", "unknown%20service"),
                ],
                true,
            )],
            "grpc NOT_FOUND: unknown service",
        ),
        (
            vec![
                Part::Block(OK_HEADERS, false),
                Part::Data(message(1)),
                Part::Block(&[("grpc-status", "13")], true),
            ],
            "grpc INTERNAL",
        ),
        (
            vec![
                Part::Block(OK_HEADERS, false),
                Part::Data(message(1)),
                Part::Block(&[("grpc-status", "42")], true),
            ],
            "grpc status 42",
        ),
        (
            vec![Part::Block(
                &[
                    (":status", "200"),
                    ("content-type", "application/grpc"),
                    ("grpc-status", "0"),
                ],
                true,
            )],
            "transport: no health message in the answer",
        ),
        (
            vec![
                Part::Block(OK_HEADERS, false),
                Part::Data({
                    let mut m = message(1);
                    m[0] = 1;
                    m
                }),
                Part::Block(OK_TRAILERS, true),
            ],
            "transport: compressed health message",
        ),
        (
            vec![
                Part::Block(OK_HEADERS, false),
                Part::Data([message(1), message(1)].concat()),
                Part::Block(OK_TRAILERS, true),
            ],
            "transport: more than one message in the answer",
        ),
        (
            vec![
                Part::Block(OK_HEADERS, false),
                Part::Data(message(1)[..6].to_vec()),
                Part::Block(OK_TRAILERS, true),
            ],
            "transport: truncated health message",
        ),
        (
            vec![
                Part::Block(OK_HEADERS, false),
                Part::Data(vec![0, 0, 0, 0, 2, 0xff, 0xff]),
                Part::Block(OK_TRAILERS, true),
            ],
            "transport: invalid health message",
        ),
        (
            vec![Part::Data(message(1))],
            "error: transport: data before headers",
        ),
        (
            vec![
                Part::Block(OK_HEADERS, false),
                Part::Block(OK_TRAILERS, false),
            ],
            "error: transport: trailers without end of stream",
        ),
        (
            vec![Part::Block(&[("content-type", "application/grpc")], true)],
            "error: transport: answer without :status",
        ),
        (
            vec![
                Part::Block(OK_HEADERS, false),
                Part::Data(vec![0; MAX_MESSAGE + 1]),
            ],
            "error: transport: health answer too large",
        ),
    ];
    for (parts, expected) in cases {
        let got = reason(answer(&parts));
        assert!(
            got.starts_with(expected),
            "{got:?} does not start with {expected:?}"
        );
    }
}

#[test]
fn informational_headers_are_skipped() {
    let parts = [
        Part::Block(&[(":status", "100")], false),
        Part::Block(OK_HEADERS, false),
        Part::Data(message(1)),
        Part::Block(OK_TRAILERS, true),
    ];
    assert_eq!(
        answer(&parts).unwrap(),
        Outcome::Answered(ServingStatus::Serving)
    );
}

#[test]
fn backend_text_in_reasons_is_bounded_and_printable() {
    let long = format!("text/{}\u{7}", "x".repeat(500));
    let mut answer = Answer::default();
    answer.field(b":status", b"200");
    answer.field(b"content-type", long.as_bytes());
    answer.end_block(true).unwrap();
    let reason = answer.outcome().reason();
    assert!(reason.len() < 260, "{}", reason.len());
    assert!(!reason.contains('\u{7}'));
}

#[test]
fn a_watch_asks_for_watch_without_a_deadline() {
    let prepared = Prepared::for_method(Method::Watch, false, "b:1", "svc", "ua", &[]).unwrap();
    let mut out = BytesMut::new();
    prepared.encode(&mut out, 3, Duration::from_secs(1), MAX_FRAME_SIZE);
    let frames = split_frames(&out);
    let fields = decode_block(&frames[0].1);
    assert!(fields.contains(&(":path".into(), "/grpc.health.v1.Health/Watch".into())));
    assert!(!fields.iter().any(|(name, _)| name == "grpc-timeout"));
    assert_eq!(
        frames[1].0.flags,
        flag::END_STREAM,
        "the request is one message"
    );
}

#[test]
fn watch_messages_come_out_one_by_one_however_they_are_cut() {
    let mut answer = Answer::default();
    for (name, value) in OK_HEADERS {
        answer.field(name.as_bytes(), value.as_bytes());
    }
    answer.end_block(false).unwrap();
    assert_eq!(answer.head_error(), None);
    let bytes = [message(1), message(2), message(3)].concat();
    let mut statuses = Vec::new();
    for chunk in bytes.chunks(4) {
        statuses.extend(answer.watch_data(chunk).unwrap());
    }
    assert_eq!(
        statuses,
        [
            ServingStatus::Serving,
            ServingStatus::NotServing,
            ServingStatus::ServiceUnknown
        ]
    );
    // Trailers end it: OK is still an end, an error status says which.
    answer.field(b"grpc-status", b"0");
    answer.end_block(true).unwrap();
    assert_eq!(
        answer.watch_end().to_string(),
        "transport: watch ended by the backend"
    );

    let mut unimplemented = Answer::default();
    for (name, value) in [
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("grpc-status", "12"),
    ] {
        unimplemented.field(name.as_bytes(), value.as_bytes());
    }
    unimplemented.end_block(true).unwrap();
    assert_eq!(
        unimplemented.watch_end(),
        ProbeError::Status {
            code: "UNIMPLEMENTED".into(),
            message: String::new()
        }
    );

    let mut oversize = Answer::default();
    oversize.field(b":status", b"200");
    oversize.end_block(false).unwrap();
    let error = oversize.watch_data(&[0, 0, 1, 0, 0]).unwrap_err();
    assert_eq!(error.to_string(), "transport: health answer too large");
}
