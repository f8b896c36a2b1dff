//! Connect streaming envelopes: every message of a streaming RPC travels as
//! one flag byte, a 4-byte big-endian length, and that many bytes of
//! payload. Flag `0x01` marks a compressed payload, `0x02` the end-of-stream
//! message (JSON, carrying the error and trailers).
//!
//! The length comes from the peer, so it is checked against a cap before
//! anything is buffered: a client cannot make envd allocate more than
//! [`MAX_MESSAGE`] for one message.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The largest message envd reads or writes (16 MiB).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

pub const FLAG_COMPRESSED: u8 = 0x01;
pub const FLAG_END_STREAM: u8 = 0x02;

const HEADER: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("stream ended inside a message: {have} of {need} bytes received")]
    Truncated { have: usize, need: usize },
}

/// One decoded envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub flags: u8,
    pub payload: Bytes,
}

impl Envelope {
    pub fn is_end_stream(&self) -> bool {
        self.flags & FLAG_END_STREAM != 0
    }

    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }
}

/// Frames `payload` with `flags`.
pub fn encode(flags: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER + payload.len());
    out.put_u8(flags);
    out.put_u32(payload.len() as u32);
    out.put_slice(payload);
    out.freeze()
}

/// Splits a byte stream, fed in arbitrary chunks, into envelopes.
#[derive(Debug)]
pub struct EnvelopeDecoder {
    buf: BytesMut,
    max: usize,
}

impl Default for EnvelopeDecoder {
    fn default() -> Self {
        Self::new(MAX_MESSAGE)
    }
}

impl EnvelopeDecoder {
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    /// Appends bytes read from the peer.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete envelope, `None` if more bytes are needed. A length
    /// over the cap is an error as soon as its header is seen.
    pub fn next_envelope(&mut self) -> Result<Option<Envelope>, EnvelopeError> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.max {
            return Err(EnvelopeError::TooLarge { len, max: self.max });
        }
        if self.buf.len() < HEADER + len {
            // Reserve up front so a large message is not copied repeatedly.
            self.buf.reserve(HEADER + len - self.buf.len());
            return Ok(None);
        }
        let flags = self.buf[0];
        self.buf.advance(HEADER);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(Envelope { flags, payload }))
    }

    /// Call at the end of the byte stream: leftover bytes mean the peer
    /// stopped in the middle of an envelope.
    pub fn finish(&self) -> Result<(), EnvelopeError> {
        match self.buf.len() {
            0 => Ok(()),
            have if have < HEADER => Err(EnvelopeError::Truncated { have, need: HEADER }),
            have => {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                Err(EnvelopeError::Truncated {
                    have,
                    need: HEADER + len as usize,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_header_big_endian() {
        let e = encode(FLAG_END_STREAM, b"{}");
        assert_eq!(&e[..], &[0x02, 0, 0, 0, 2, b'{', b'}']);
        assert_eq!(&encode(0, b"")[..], &[0, 0, 0, 0, 0]);
    }

    #[test]
    fn decodes_messages_split_at_every_byte() {
        let mut stream = Vec::new();
        stream.extend_from_slice(&encode(0, b"first"));
        stream.extend_from_slice(&encode(0, b""));
        stream.extend_from_slice(&encode(FLAG_END_STREAM, b"{}"));
        let mut d = EnvelopeDecoder::default();
        let mut got = Vec::new();
        for byte in &stream {
            d.push(std::slice::from_ref(byte));
            while let Some(env) = d.next_envelope().unwrap() {
                got.push(env);
            }
        }
        d.finish().unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(&got[0].payload[..], b"first");
        assert!(!got[0].is_end_stream());
        assert!(got[1].payload.is_empty());
        assert!(got[2].is_end_stream());
    }

    #[test]
    fn decodes_several_messages_from_one_chunk() {
        let mut d = EnvelopeDecoder::default();
        let mut chunk = encode(0, b"a").to_vec();
        chunk.extend_from_slice(&encode(FLAG_COMPRESSED, b"bc"));
        d.push(&chunk);
        assert_eq!(&d.next_envelope().unwrap().unwrap().payload[..], b"a");
        let second = d.next_envelope().unwrap().unwrap();
        assert!(second.is_compressed());
        assert_eq!(&second.payload[..], b"bc");
        assert_eq!(d.next_envelope().unwrap(), None);
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let mut d = EnvelopeDecoder::new(10);
        d.push(&[0, 0, 0, 0, 11]);
        assert_eq!(
            d.next_envelope(),
            Err(EnvelopeError::TooLarge { len: 11, max: 10 })
        );
        let mut d = EnvelopeDecoder::default();
        d.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            d.next_envelope(),
            Err(EnvelopeError::TooLarge {
                len: 0xffff_ffff,
                ..
            })
        ));
    }

    #[test]
    fn truncated_streams_are_errors() {
        let mut d = EnvelopeDecoder::default();
        d.push(&[0, 0, 0]);
        assert_eq!(d.next_envelope(), Ok(None));
        assert_eq!(
            d.finish(),
            Err(EnvelopeError::Truncated { have: 3, need: 5 })
        );

        let mut d = EnvelopeDecoder::default();
        d.push(&encode(0, b"hello")[..7]);
        assert_eq!(d.next_envelope(), Ok(None));
        assert_eq!(
            d.finish(),
            Err(EnvelopeError::Truncated { have: 7, need: 10 })
        );
    }
}
