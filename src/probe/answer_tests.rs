use super::*;

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
                &[(":status", "502"), ("grpc-status", "0")],
                true,
            )],
            "transport: http status 502, grpc OK",
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
            code: Code::Unimplemented,
            message: String::new()
        }
    );

    let mut oversize = Answer::default();
    oversize.field(b":status", b"200");
    oversize.end_block(false).unwrap();
    let error = oversize.watch_data(&[0, 0, 1, 0, 0]).unwrap_err();
    assert_eq!(error.to_string(), "transport: health answer too large");
}
