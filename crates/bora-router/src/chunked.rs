//! Finding the end of a chunked body (RFC 9112 §7.1) as it streams by.
//!
//! The fast path passes an instance's chunked response to the client as
//! raw bytes; it only needs to know where the body ends, so that the
//! connection to the instance can be reused. [`ChunkedScanner`] is an
//! incremental state machine fed whatever each read returned: it finds the
//! same end however the stream is split, reports where chunk data lies (to
//! decode the body for an HTTP/1.0 client, which cannot read chunks), and
//! rejects malformed framing instead of guessing.
//!
//! It is pure: no I/O, no allocation.

use std::ops::Range;

/// The most hex digits of a chunk size: 16 fill a `u64`.
const MAX_SIZE_DIGITS: u8 = 16;

/// The most bytes of chunk extensions on one size line (they are skipped).
const MAX_EXTENSION: u32 = 4096;

/// The most bytes of trailer fields after the last chunk.
const MAX_TRAILERS: u32 = 64 * 1024;

/// Where the scanner is within the chunked body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a chunk-size line: expecting a hex digit.
    SizeStart,
    /// Reading the hex digits of the size.
    Size { size: u64, digits: u8 },
    /// After the size: whitespace and chunk extensions, up to CR.
    Extension { size: u64, skipped: u32 },
    /// After the size line's CR: expecting LF.
    SizeLf { size: u64 },
    /// Inside chunk data, with this many bytes to go.
    Data { left: u64 },
    /// After chunk data: expecting CR.
    DataCr,
    /// After chunk data and CR: expecting LF.
    DataLf,
    /// After the last chunk, at the start of a line: CR ends the body,
    /// anything else starts a trailer field.
    TrailerStart { seen: u32 },
    /// Inside a trailer field line, up to CR.
    Trailer { seen: u32 },
    /// After a trailer field's CR: expecting LF.
    TrailerLf { seen: u32 },
    /// After the final CR: expecting LF.
    EndLf,
    /// The body is over.
    Done,
}

/// The chunked framing is broken; the message cannot be delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChunkError {
    /// A size line with no hex digit, or a stray byte in it.
    #[error("invalid chunk size line")]
    InvalidSize,
    /// A chunk size too large for 64 bits.
    #[error("chunk size too large")]
    SizeOverflow,
    /// Chunk data not followed by CRLF.
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
    /// Chunk extensions or trailers beyond the limits.
    #[error("chunk extensions or trailers too long")]
    TooLong,
}

/// What [`ChunkedScanner::scan`] found in the bytes it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    /// All the bytes belong to the body, which goes on.
    More,
    /// The body ends after this many of the bytes (the rest, if any, is
    /// not part of it).
    End(usize),
}

/// An incremental scanner of one chunked body.
#[derive(Clone, Debug)]
pub(crate) struct ChunkedScanner {
    state: State,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self {
            state: State::SizeStart,
        }
    }
}

impl ChunkedScanner {
    /// True once the end of the body was found.
    #[cfg(test)]
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Scans the next bytes of the body. `on_data` is called with the
    /// range (within `input`) of every run of chunk data.
    pub(crate) fn scan(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(Range<usize>),
    ) -> Result<Scan, ChunkError> {
        let mut at = 0;
        while at < input.len() {
            if let State::Data { left } = self.state {
                let available = input.len() - at;
                let take = usize::try_from(left).map_or(available, |left| left.min(available));
                on_data(at..at + take);
                at += take;
                let left = left - take as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { left }
                };
                continue;
            }
            let byte = input[at];
            at += 1;
            self.state = self.step(byte)?;
            if self.state == State::Done {
                return Ok(Scan::End(at));
            }
        }
        Ok(if self.state == State::Done {
            Scan::End(at)
        } else {
            Scan::More
        })
    }

    /// The state after `byte`, outside chunk data.
    fn step(&self, byte: u8) -> Result<State, ChunkError> {
        Ok(match self.state {
            State::SizeStart => State::Size {
                size: u64::from(hex_value(byte).ok_or(ChunkError::InvalidSize)?),
                digits: 1,
            },
            State::Size { size, digits } => match hex_value(byte) {
                Some(value) => {
                    if digits == MAX_SIZE_DIGITS {
                        return Err(ChunkError::SizeOverflow);
                    }
                    State::Size {
                        size: size << 4 | u64::from(value),
                        digits: digits + 1,
                    }
                }
                None => self.after_size(size, 0, byte)?,
            },
            State::Extension { size, skipped } => self.after_size(size, skipped, byte)?,
            State::SizeLf { size } => match (byte, size) {
                (b'\n', 0) => State::TrailerStart { seen: 0 },
                (b'\n', left) => State::Data { left },
                _ => return Err(ChunkError::InvalidSize),
            },
            State::DataCr if byte == b'\r' => State::DataLf,
            State::DataLf if byte == b'\n' => State::SizeStart,
            State::DataCr | State::DataLf => return Err(ChunkError::MissingCrlf),
            State::TrailerStart { seen } => match byte {
                b'\r' => State::EndLf,
                b'\n' => return Err(ChunkError::MissingCrlf),
                _ => State::Trailer {
                    seen: trailer_bytes(seen)?,
                },
            },
            State::Trailer { seen } => match byte {
                b'\r' => State::TrailerLf { seen },
                b'\n' => return Err(ChunkError::MissingCrlf),
                _ => State::Trailer {
                    seen: trailer_bytes(seen)?,
                },
            },
            State::TrailerLf { seen } if byte == b'\n' => State::TrailerStart { seen },
            State::EndLf if byte == b'\n' => State::Done,
            State::TrailerLf { .. } | State::EndLf => return Err(ChunkError::MissingCrlf),
            // `scan` handles data itself and stops at the end.
            State::Data { .. } | State::Done => self.state,
        })
    }

    /// After the size digits: whitespace and extensions up to CR.
    fn after_size(&self, size: u64, skipped: u32, byte: u8) -> Result<State, ChunkError> {
        match byte {
            b'\r' => Ok(State::SizeLf { size }),
            // Extensions start with `;`, optionally after whitespace.
            b'\n' => Err(ChunkError::InvalidSize),
            b';' | b' ' | b'\t' if skipped == 0 => Ok(State::Extension { size, skipped: 1 }),
            _ if skipped == 0 => Err(ChunkError::InvalidSize),
            _ if skipped >= MAX_EXTENSION => Err(ChunkError::TooLong),
            _ => Ok(State::Extension {
                size,
                skipped: skipped + 1,
            }),
        }
    }
}

/// One more byte of trailers, within the limit.
fn trailer_bytes(seen: u32) -> Result<u32, ChunkError> {
    if seen >= MAX_TRAILERS {
        return Err(ChunkError::TooLong);
    }
    Ok(seen + 1)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Scans `pieces` in turn; returns the end offset within their
    /// concatenation and the decoded data.
    fn scan_all(pieces: &[&[u8]]) -> Result<(Option<usize>, Vec<u8>), ChunkError> {
        let mut scanner = ChunkedScanner::default();
        let mut data = Vec::new();
        let mut offset = 0;
        for piece in pieces {
            let found = scanner.scan(piece, |range| data.extend_from_slice(&piece[range]))?;
            if let Scan::End(n) = found {
                return Ok((Some(offset + n), data));
            }
            offset += piece.len();
        }
        Ok((None, data))
    }

    #[test]
    fn finds_the_end_of_a_simple_body() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nNEXT";
        let (end, data) = scan_all(&[body]).unwrap();
        assert_eq!(end, Some(body.len() - 4));
        assert_eq!(data, b"hello world");
    }

    #[test]
    fn trailers_belong_to_the_body() {
        let body = b"3\r\nabc\r\n0\r\nx-checksum: 1\r\ny: 2\r\n\r\n";
        let (end, data) = scan_all(&[body]).unwrap();
        assert_eq!(end, Some(body.len()));
        assert_eq!(data, b"abc");
    }

    #[test]
    fn an_unfinished_body_asks_for_more() {
        let mut scanner = ChunkedScanner::default();
        assert_eq!(scanner.scan(b"3\r\nab", |_| {}), Ok(Scan::More));
        assert!(!scanner.is_done());
        assert_eq!(scanner.scan(b"c\r\n0\r\n\r", |_| {}), Ok(Scan::More));
        assert_eq!(scanner.scan(b"\n", |_| {}), Ok(Scan::End(1)));
        assert!(scanner.is_done());
    }

    #[test]
    fn malformed_sizes_are_rejected() {
        for bad in [
            &b"\r\n"[..],
            b"zz\r\n",
            b"1g\r\n",
            b"-1\r\n",
            b"5\nhello",
            b"fffffffffffffffff\r\n",
            b"3\r\nabcX\r\n",
            b"0\r\n\n",
            b"0\r\nx: 1\n\r\n",
        ] {
            assert!(
                scan_all(&[bad]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            scan_all(&[b"10000000000000000\r\n"]),
            Err(ChunkError::SizeOverflow)
        );
        // 16 digits fit.
        assert_eq!(
            scan_all(&[b"000000000000000a\r\n"]).map(|(end, _)| end),
            Ok(None)
        );
    }

    #[test]
    fn endless_extensions_and_trailers_are_rejected() {
        let mut long_extension = b"1;".to_vec();
        long_extension.extend(std::iter::repeat_n(b'x', 5000));
        assert_eq!(scan_all(&[&long_extension]), Err(ChunkError::TooLong));
        let mut long_trailer = b"0\r\n".to_vec();
        long_trailer.extend(std::iter::repeat_n(b'x', 70_000));
        assert_eq!(scan_all(&[&long_trailer]), Err(ChunkError::TooLong));
    }

    /// A chunked encoding of `chunks`, with optional extensions and
    /// trailers.
    fn encode(chunks: &[Vec<u8>], extensions: bool, trailers: &[String]) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in chunks.iter().filter(|chunk| !chunk.is_empty()) {
            out.extend(format!("{:X}", chunk.len()).bytes());
            if extensions {
                out.extend(b" ;name=value");
            }
            out.extend(b"\r\n");
            out.extend(chunk);
            out.extend(b"\r\n");
        }
        out.extend(b"0\r\n");
        for trailer in trailers {
            out.extend(trailer.bytes());
            out.extend(b"\r\n");
        }
        out.extend(b"\r\n");
        out
    }

    /// Splits `bytes` at the given cut points (taken modulo its length).
    fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut start = 0;
        for cut in cuts.into_iter().chain([bytes.len()]) {
            pieces.push(bytes[start..cut].to_vec());
            start = cut;
        }
        pieces
    }

    proptest! {
        #[test]
        fn any_split_finds_the_same_end(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8),
            extensions in any::<bool>(),
            trailers in prop::collection::vec("[a-z]{1,8}: [ -~]{0,20}", 0..3),
            after in prop::collection::vec(any::<u8>(), 0..20),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let body = encode(&chunks, extensions, &trailers);
            let mut stream = body.clone();
            stream.extend(&after);
            let pieces = split(&stream, &cuts);
            let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            let (end, data) = scan_all(&pieces).unwrap();
            prop_assert_eq!(end, Some(body.len()));
            prop_assert_eq!(data, chunks.concat());
        }

        #[test]
        fn garbage_sizes_are_rejected(
            prefix in "[0-9a-fA-F]{0,4}",
            bad in "[g-zG-Z\\-+.,/\n]",
            cuts in prop::collection::vec(any::<usize>(), 0..4),
        ) {
            let stream = format!("{prefix}{bad}\r\n").into_bytes();
            let pieces = split(&stream, &cuts);
            let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            prop_assert!(scan_all(&pieces).is_err());
        }
    }
}
