//! HPACK (RFC 7541) decoding, as the agent needs it: header blocks from backends are
//! decoded field by field into a callback, with the dynamic table the protocol requires
//! and a table-driven Huffman decoder (four bits per step, built once from the RFC's code
//! table). The agent's own requests never index, so there is no encoder state.

use std::collections::VecDeque;
use std::sync::OnceLock;

/// Why a header block could not be decoded (a connection error: the tables are lost).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("truncated header block")]
    Truncated,
    #[error("integer too large")]
    Overflow,
    #[error("index {0} is in neither table")]
    BadIndex(usize),
    #[error("invalid huffman string")]
    Huffman,
    #[error("table size update to {0} above the agreed {1}")]
    TableSize(usize, usize),
    #[error("table size update after the first field")]
    LateSizeUpdate,
}

/// A decoded field, owned (as the dynamic table keeps it).
type Field = (Box<[u8]>, Box<[u8]>);

/// Every dynamic-table entry costs its name and value plus this much (RFC 7541 4.1).
const ENTRY_OVERHEAD: usize = 32;

/// A connection's decoding state.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first.
    table: VecDeque<Field>,
    size: usize,
    max_size: usize,
    /// The size the agent allowed (SETTINGS_HEADER_TABLE_SIZE, default 4096).
    allowed: usize,
    /// Reused for Huffman-decoded strings.
    scratch: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(4096)
    }
}

impl Decoder {
    pub fn new(allowed: usize) -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: allowed,
            allowed,
            scratch: Vec::new(),
        }
    }

    /// Decodes one whole header block, calling `field(name, value)` for each field in
    /// order.
    pub fn decode(
        &mut self,
        mut block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let mut first = true;
        while let Some(&byte) = block.first() {
            if byte & 0x80 != 0 {
                // Indexed field.
                let index = integer(&mut block, 7)?;
                let (name, value) = self.get(index)?;
                field(name, value);
            } else if byte & 0x40 != 0 {
                // Literal with incremental indexing.
                let (name, value) = self.literal(&mut block, 6)?;
                field(&name, &value);
                self.insert(name, value);
            } else if byte & 0x20 != 0 {
                // Dynamic table size update: only at the start of a block.
                if !first {
                    return Err(HpackError::LateSizeUpdate);
                }
                let size = integer(&mut block, 5)?;
                if size > self.allowed {
                    return Err(HpackError::TableSize(size, self.allowed));
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                // Literal without indexing (0000) or never indexed (0001).
                let (name, value) = self.literal(&mut block, 4)?;
                field(&name, &value);
            }
            first = false;
        }
        Ok(())
    }

    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match index {
            0 => Err(HpackError::BadIndex(0)),
            1..=61 => Ok(STATIC_TABLE[index - 1]),
            _ => self
                .table
                .get(index - 62)
                .map(|(name, value)| (&name[..], &value[..]))
                .ok_or(HpackError::BadIndex(index)),
        }
    }

    /// A literal field: the name (indexed or literal) and the value, owned.
    fn literal(&mut self, block: &mut &[u8], prefix: u8) -> Result<Field, HpackError> {
        let index = integer(block, prefix)?;
        let name: Box<[u8]> = if index == 0 {
            string(block, &mut self.scratch)?
        } else {
            self.get(index)?.0.into()
        };
        let value = string(block, &mut self.scratch)?;
        Ok((name, value))
    }

    fn insert(&mut self, name: Box<[u8]>, value: Box<[u8]>) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            // An entry larger than the table empties it and is not added.
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front((name, value));
    }

    /// Drops the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            let Some((name, value)) = self.table.pop_back() else {
                break;
            };
            self.size -= name.len() + value.len() + ENTRY_OVERHEAD;
        }
    }
}

/// A string literal, Huffman-decoded if it says so.
fn string(block: &mut &[u8], scratch: &mut Vec<u8>) -> Result<Box<[u8]>, HpackError> {
    let huffman = block.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let length = integer(block, 7)?;
    if length > block.len() {
        return Err(HpackError::Truncated);
    }
    let (bytes, rest) = block.split_at(length);
    *block = rest;
    if !huffman {
        return Ok(bytes.into());
    }
    scratch.clear();
    huffman_decode(bytes, scratch)?;
    Ok(scratch.as_slice().into())
}

/// An integer with an N-bit prefix (RFC 7541 5.1).
fn integer(block: &mut &[u8], prefix: u8) -> Result<usize, HpackError> {
    let (&first, mut rest) = block.split_first().ok_or(HpackError::Truncated)?;
    let max = (1usize << prefix) - 1;
    let mut value = first as usize & max;
    if value == max {
        let mut shift = 0;
        loop {
            let (&byte, tail) = rest.split_first().ok_or(HpackError::Truncated)?;
            rest = tail;
            if shift > 28 {
                return Err(HpackError::Overflow);
            }
            value += ((byte & 0x7f) as usize) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
    }
    *block = rest;
    Ok(value)
}

/// One step of the Huffman decoder: from a state (an inner node of the code tree), four
/// input bits lead to the next state, perhaps emitting one symbol on the way (the
/// shortest code is five bits, so never two).
#[derive(Clone, Copy, Debug, Default)]
struct Step {
    next: u8,
    /// The emitted symbol + 1, or 0 for none; 257 means EOS was decoded (an error).
    emit: u16,
}

struct Huffman {
    steps: Vec<[Step; 16]>,
    /// States reachable from the root by at most seven 1-bits: where a string may end
    /// (its padding is the start of EOS).
    may_end: Vec<bool>,
}

fn huffman() -> &'static Huffman {
    static TABLE: OnceLock<Huffman> = OnceLock::new();
    TABLE.get_or_init(|| {
        // The code tree: node 0 is the root; children[n] = [zero, one], each an inner
        // node (index) or a leaf (symbol, marked by LEAF).
        const LEAF: u32 = 1 << 16;
        let mut children: Vec<[u32; 2]> = vec![[0, 0]];
        for (symbol, &(code, length)) in CODES.iter().enumerate() {
            let mut node = 0usize;
            for bit in (0..length).rev() {
                let side = ((code >> bit) & 1) as usize;
                if bit == 0 {
                    children[node][side] = LEAF | symbol as u32;
                } else {
                    if children[node][side] == 0 {
                        children.push([0, 0]);
                        children[node][side] = (children.len() - 1) as u32;
                    }
                    node = children[node][side] as usize;
                }
            }
        }
        // Ones-only paths of up to seven bits from the root.
        let mut may_end = vec![false; children.len()];
        let mut node = 0usize;
        may_end[0] = true;
        for _ in 0..7 {
            node = children[node][1] as usize;
            may_end[node] = true;
        }
        let steps = (0..children.len())
            .map(|state| {
                let mut row = [Step::default(); 16];
                for (nibble, step) in row.iter_mut().enumerate() {
                    let mut node = state;
                    for bit in (0..4).rev() {
                        let child = children[node][(nibble >> bit) & 1];
                        if child & LEAF != 0 {
                            step.emit = (child & !LEAF) as u16 + 1;
                            node = 0;
                        } else {
                            node = child as usize;
                        }
                    }
                    step.next = node as u8;
                }
                row
            })
            .collect();
        Huffman { steps, may_end }
    })
}

/// Decodes a Huffman-coded string (RFC 7541 5.2) onto `out`.
pub fn huffman_decode(bytes: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let table = huffman();
    // The state is the node reached by the bits since the last symbol, so at the end it
    // says whether they are valid padding.
    let mut state = 0usize;
    for &byte in bytes {
        for nibble in [byte >> 4, byte & 0x0f] {
            let step = table.steps[state][nibble as usize];
            match step.emit {
                0 => {}
                257 => return Err(HpackError::Huffman),
                symbol => out.push((symbol - 1) as u8),
            }
            state = step.next as usize;
        }
    }
    if !table.may_end[state] {
        return Err(HpackError::Huffman);
    }
    Ok(())
}

/// RFC 7541 appendix A.
static STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// RFC 7541 appendix B: (code, length in bits) of symbols 0 to 255 and EOS.
static CODES: [(u32, u8); 257] = [
    (0x1ff8, 13),
    (0x7fffd8, 23),
    (0xfffffe2, 28),
    (0xfffffe3, 28),
    (0xfffffe4, 28),
    (0xfffffe5, 28),
    (0xfffffe6, 28),
    (0xfffffe7, 28),
    (0xfffffe8, 28),
    (0xffffea, 24),
    (0x3ffffffc, 30),
    (0xfffffe9, 28),
    (0xfffffea, 28),
    (0x3ffffffd, 30),
    (0xfffffeb, 28),
    (0xfffffec, 28),
    (0xfffffed, 28),
    (0xfffffee, 28),
    (0xfffffef, 28),
    (0xffffff0, 28),
    (0xffffff1, 28),
    (0xffffff2, 28),
    (0x3ffffffe, 30),
    (0xffffff3, 28),
    (0xffffff4, 28),
    (0xffffff5, 28),
    (0xffffff6, 28),
    (0xffffff7, 28),
    (0xffffff8, 28),
    (0xffffff9, 28),
    (0xffffffa, 28),
    (0xffffffb, 28),
    (0x14, 6),
    (0x3f8, 10),
    (0x3f9, 10),
    (0xffa, 12),
    (0x1ff9, 13),
    (0x15, 6),
    (0xf8, 8),
    (0x7fa, 11),
    (0x3fa, 10),
    (0x3fb, 10),
    (0xf9, 8),
    (0x7fb, 11),
    (0xfa, 8),
    (0x16, 6),
    (0x17, 6),
    (0x18, 6),
    (0x0, 5),
    (0x1, 5),
    (0x2, 5),
    (0x19, 6),
    (0x1a, 6),
    (0x1b, 6),
    (0x1c, 6),
    (0x1d, 6),
    (0x1e, 6),
    (0x1f, 6),
    (0x5c, 7),
    (0xfb, 8),
    (0x7ffc, 15),
    (0x20, 6),
    (0xffb, 12),
    (0x3fc, 10),
    (0x1ffa, 13),
    (0x21, 6),
    (0x5d, 7),
    (0x5e, 7),
    (0x5f, 7),
    (0x60, 7),
    (0x61, 7),
    (0x62, 7),
    (0x63, 7),
    (0x64, 7),
    (0x65, 7),
    (0x66, 7),
    (0x67, 7),
    (0x68, 7),
    (0x69, 7),
    (0x6a, 7),
    (0x6b, 7),
    (0x6c, 7),
    (0x6d, 7),
    (0x6e, 7),
    (0x6f, 7),
    (0x70, 7),
    (0x71, 7),
    (0x72, 7),
    (0xfc, 8),
    (0x73, 7),
    (0xfd, 8),
    (0x1ffb, 13),
    (0x7fff0, 19),
    (0x1ffc, 13),
    (0x3ffc, 14),
    (0x22, 6),
    (0x7ffd, 15),
    (0x3, 5),
    (0x23, 6),
    (0x4, 5),
    (0x24, 6),
    (0x5, 5),
    (0x25, 6),
    (0x26, 6),
    (0x27, 6),
    (0x6, 5),
    (0x74, 7),
    (0x75, 7),
    (0x28, 6),
    (0x29, 6),
    (0x2a, 6),
    (0x7, 5),
    (0x2b, 6),
    (0x76, 7),
    (0x2c, 6),
    (0x8, 5),
    (0x9, 5),
    (0x2d, 6),
    (0x77, 7),
    (0x78, 7),
    (0x79, 7),
    (0x7a, 7),
    (0x7b, 7),
    (0x7ffe, 15),
    (0x7fc, 11),
    (0x3ffd, 14),
    (0x1ffd, 13),
    (0xffffffc, 28),
    (0xfffe6, 20),
    (0x3fffd2, 22),
    (0xfffe7, 20),
    (0xfffe8, 20),
    (0x3fffd3, 22),
    (0x3fffd4, 22),
    (0x3fffd5, 22),
    (0x7fffd9, 23),
    (0x3fffd6, 22),
    (0x7fffda, 23),
    (0x7fffdb, 23),
    (0x7fffdc, 23),
    (0x7fffdd, 23),
    (0x7fffde, 23),
    (0xffffeb, 24),
    (0x7fffdf, 23),
    (0xffffec, 24),
    (0xffffed, 24),
    (0x3fffd7, 22),
    (0x7fffe0, 23),
    (0xffffee, 24),
    (0x7fffe1, 23),
    (0x7fffe2, 23),
    (0x7fffe3, 23),
    (0x7fffe4, 23),
    (0x1fffdc, 21),
    (0x3fffd8, 22),
    (0x7fffe5, 23),
    (0x3fffd9, 22),
    (0x7fffe6, 23),
    (0x7fffe7, 23),
    (0xffffef, 24),
    (0x3fffda, 22),
    (0x1fffdd, 21),
    (0xfffe9, 20),
    (0x3fffdb, 22),
    (0x3fffdc, 22),
    (0x7fffe8, 23),
    (0x7fffe9, 23),
    (0x1fffde, 21),
    (0x7fffea, 23),
    (0x3fffdd, 22),
    (0x3fffde, 22),
    (0xfffff0, 24),
    (0x1fffdf, 21),
    (0x3fffdf, 22),
    (0x7fffeb, 23),
    (0x7fffec, 23),
    (0x1fffe0, 21),
    (0x1fffe1, 21),
    (0x3fffe0, 22),
    (0x1fffe2, 21),
    (0x7fffed, 23),
    (0x3fffe1, 22),
    (0x7fffee, 23),
    (0x7fffef, 23),
    (0xfffea, 20),
    (0x3fffe2, 22),
    (0x3fffe3, 22),
    (0x3fffe4, 22),
    (0x7ffff0, 23),
    (0x3fffe5, 22),
    (0x3fffe6, 22),
    (0x7ffff1, 23),
    (0x3ffffe0, 26),
    (0x3ffffe1, 26),
    (0xfffeb, 20),
    (0x7fff1, 19),
    (0x3fffe7, 22),
    (0x7ffff2, 23),
    (0x3fffe8, 22),
    (0x1ffffec, 25),
    (0x3ffffe2, 26),
    (0x3ffffe3, 26),
    (0x3ffffe4, 26),
    (0x7ffffde, 27),
    (0x7ffffdf, 27),
    (0x3ffffe5, 26),
    (0xfffff1, 24),
    (0x1ffffed, 25),
    (0x7fff2, 19),
    (0x1fffe3, 21),
    (0x3ffffe6, 26),
    (0x7ffffe0, 27),
    (0x7ffffe1, 27),
    (0x3ffffe7, 26),
    (0x7ffffe2, 27),
    (0xfffff2, 24),
    (0x1fffe4, 21),
    (0x1fffe5, 21),
    (0x3ffffe8, 26),
    (0x3ffffe9, 26),
    (0xffffffd, 28),
    (0x7ffffe3, 27),
    (0x7ffffe4, 27),
    (0x7ffffe5, 27),
    (0xfffec, 20),
    (0xfffff3, 24),
    (0xfffed, 20),
    (0x1fffe6, 21),
    (0x3fffe9, 22),
    (0x1fffe7, 21),
    (0x1fffe8, 21),
    (0x7ffff3, 23),
    (0x3fffea, 22),
    (0x3fffeb, 22),
    (0x1ffffee, 25),
    (0x1ffffef, 25),
    (0xfffff4, 24),
    (0xfffff5, 24),
    (0x3ffffea, 26),
    (0x7ffff4, 23),
    (0x3ffffeb, 26),
    (0x7ffffe6, 27),
    (0x3ffffec, 26),
    (0x3ffffed, 26),
    (0x7ffffe7, 27),
    (0x7ffffe8, 27),
    (0x7ffffe9, 27),
    (0x7ffffea, 27),
    (0x7ffffeb, 27),
    (0xffffffe, 28),
    (0x7ffffec, 27),
    (0x7ffffed, 27),
    (0x7ffffee, 27),
    (0x7ffffef, 27),
    (0x7fffff0, 27),
    (0x3ffffee, 26),
    (0x3fffffff, 30),
];

#[cfg(test)]
#[path = "hpack_tests.rs"]
mod tests;
