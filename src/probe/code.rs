//! gRPC status codes: the failure a `grpc-status` value names, read from its wire form and
//! shown by its canonical name. Pure: no I/O.

use std::fmt;

/// A non-OK gRPC status code, as a backend's `grpc-status` sends it. OK has no variant:
/// it is no failure, so a [`ProbeError::Status`](super::ProbeError::Status) always holds
/// what went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
    /// A number the gRPC spec does not define (a newer spec, or a backend's own number).
    /// [`Code::from_wire`] makes one only for such numbers, never for a known code.
    Unrecognized(u32),
}

/// The known codes in wire order: the code numbered `n` is at index `n - 1`, since 0 is OK.
const KNOWN: [Code; 16] = [
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

impl Code {
    /// The failure a numeric `grpc-status` names, or `None` for 0 (OK), which names none.
    pub fn from_wire(value: u32) -> Option<Code> {
        let index = value.checked_sub(1)?;
        Some(
            KNOWN
                .get(index as usize)
                .copied()
                .unwrap_or(Code::Unrecognized(value)),
        )
    }
}

/// The canonical upper-case name the gRPC spec gives the code, as an operator reads it in a
/// reason (`grpc NOT_FOUND`); a number without a name is shown as `status 42`, so the
/// reason still says which one the backend sent.
impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::Unrecognized(value) => return write!(f, "status {value}"),
        };
        f.write_str(name)
    }
}

/// A `grpc-status` header value as a number: decimal digits only, as the spec writes it,
/// and at most nine of them so that every accepted value fits a `u32`. `None` for anything
/// else, which the caller reports as unparsable.
pub fn parse_wire(value: &[u8]) -> Option<u32> {
    if value.is_empty() || value.len() > 9 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How one `grpc-status` value reads: the number it parses to (`None`: unparsable),
    /// and the failure that number names (`None`: unparsable, or OK).
    fn check(value: &str, parsed: Option<u32>, shown: Option<&str>) {
        assert_eq!(parse_wire(value.as_bytes()), parsed, "{value:?}");
        let code = parsed.and_then(Code::from_wire);
        assert_eq!(
            code.map(|code| code.to_string()).as_deref(),
            shown,
            "{value:?}"
        );
    }

    #[test]
    fn wire_values_read_as_codes() {
        check("0", Some(0), None);
        check("1", Some(1), Some("CANCELLED"));
        check("5", Some(5), Some("NOT_FOUND"));
        check("12", Some(12), Some("UNIMPLEMENTED"));
        check("16", Some(16), Some("UNAUTHENTICATED"));
        check("17", Some(17), Some("status 17"));
        check("007", Some(7), Some("PERMISSION_DENIED"));
        check("999999999", Some(999_999_999), Some("status 999999999"));
        check("1000000000", None, None);
        check("", None, None);
        check("-1", None, None);
        check("+5", None, None);
        check(" 5", None, None);
        check("zero", None, None);
    }

    #[test]
    fn every_known_code_has_its_own_number_and_name() {
        let mut names = std::collections::HashSet::new();
        for (index, code) in KNOWN.into_iter().enumerate() {
            let value = index as u32 + 1;
            assert_eq!(Code::from_wire(value), Some(code));
            let name = code.to_string();
            assert!(!name.starts_with("status "), "{code:?} has no name");
            assert!(names.insert(name), "{code:?} shares its name");
        }
        assert_eq!(
            Code::from_wire(u32::MAX),
            Some(Code::Unrecognized(u32::MAX))
        );
    }
}
