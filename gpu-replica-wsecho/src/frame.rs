//! WebSocket frames (RFC 6455 §5.2): the header with its 7/16/64-bit length and optional
//! mask, and whole frames for the client, which never sends or expects large ones.

use std::io::{self, Read, Write};

/// Opcode of a frame continuing a fragmented message.
pub const CONTINUATION: u8 = 0x0;
/// Opcode of a UTF-8 text message.
pub const TEXT: u8 = 0x1;
/// Opcode of a binary message.
pub const BINARY: u8 = 0x2;
/// Opcode of a close frame (payload: optional 2-byte status code, then a reason).
pub const CLOSE: u8 = 0x8;
/// Opcode of a ping, answered by a pong with the same payload.
pub const PING: u8 = 0x9;
/// Opcode of a pong.
pub const PONG: u8 = 0xA;

/// Largest message either side accepts; the server answers a larger one with close 1009.
pub const MAX_MESSAGE: u64 = 16 << 20;

/// A frame's header, read before its payload so a receiver can refuse an oversized one
/// without allocating for it.
#[derive(Debug, PartialEq)]
pub struct Header {
    /// Whether this frame ends its message.
    pub fin: bool,
    /// What the frame carries (one of the opcode constants).
    pub opcode: u8,
    /// Payload length in bytes.
    pub len: u64,
    /// The masking key; clients mask every frame, servers none.
    pub mask: Option<[u8; 4]>,
}

impl Header {
    /// Reads a header from the stream.
    pub fn read_from(r: &mut impl Read) -> io::Result<Header> {
        let mut first = [0u8; 2];
        r.read_exact(&mut first)?;
        let len = match first[1] & 0x7F {
            126 => u64::from(u16::from_be_bytes(read_array(r)?)),
            127 => u64::from_be_bytes(read_array(r)?),
            short => u64::from(short),
        };
        let mask = if first[1] & 0x80 != 0 {
            Some(read_array(r)?)
        } else {
            None
        };
        Ok(Header {
            fin: first[0] & 0x80 != 0,
            opcode: first[0] & 0x0F,
            len,
            mask,
        })
    }

    /// Reads and unmasks the payload this header announces; callers check `len` first.
    pub fn read_payload(&self, r: &mut impl Read) -> io::Result<Vec<u8>> {
        let len = usize::try_from(self.len).map_err(|_| invalid("frame length overflows"))?;
        let mut payload = vec![0; len];
        r.read_exact(&mut payload)?;
        if let Some(mask) = self.mask {
            apply_mask(&mut payload, mask);
        }
        Ok(payload)
    }
}

/// A whole frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Whether this frame ends its message.
    pub fin: bool,
    /// What the frame carries (one of the opcode constants).
    pub opcode: u8,
    /// The payload, unmasked.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A final (unfragmented) frame.
    pub fn new(opcode: u8, payload: &[u8]) -> Frame {
        Frame {
            fin: true,
            opcode,
            payload: payload.to_vec(),
        }
    }

    /// Reads a frame, refusing one whose payload is longer than `limit`.
    pub fn read_from(r: &mut impl Read, limit: u64) -> io::Result<Frame> {
        let header = Header::read_from(r)?;
        if header.len > limit {
            return Err(invalid(&format!(
                "frame of {} bytes exceeds {limit}",
                header.len
            )));
        }
        let payload = header.read_payload(r)?;
        Ok(Frame {
            fin: header.fin,
            opcode: header.opcode,
            payload,
        })
    }

    /// Writes the frame, masked with `mask` if given, in one write so a small frame leaves
    /// as one segment.
    pub fn write_to(&self, w: &mut impl Write, mask: Option<[u8; 4]>) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(self.payload.len() + 14);
        bytes.push(if self.fin { 0x80 } else { 0 } | self.opcode);
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        match self.payload.len() {
            len @ 0..=125 => bytes.push(mask_bit | len as u8),
            len @ 126..=0xFFFF => {
                bytes.push(mask_bit | 126);
                bytes.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                bytes.push(mask_bit | 127);
                bytes.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if let Some(mask) = mask {
            bytes.extend_from_slice(&mask);
        }
        let start = bytes.len();
        bytes.extend_from_slice(&self.payload);
        if let Some(mask) = mask {
            apply_mask(&mut bytes[start..], mask);
        }
        w.write_all(&bytes)
    }
}

/// Masks or unmasks in place (the operation is its own inverse).
fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (byte, key) in data.iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

fn read_array<const N: usize>(r: &mut impl Read) -> io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    r.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(frame: &Frame, mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut bytes = Vec::new();
        frame.write_to(&mut bytes, mask).unwrap();
        bytes
    }

    #[test]
    fn hello_frames_match_the_rfc_6455_examples() {
        let hello = Frame::new(TEXT, b"Hello");
        assert_eq!(encode(&hello, None), b"\x81\x05Hello");
        let masked = encode(&hello, Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!(masked, b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");
    }

    #[test]
    fn frames_of_every_length_class_round_trip_masked_or_not() {
        for len in [0, 1, 125, 126, 65535, 65536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let frame = Frame {
                fin: len % 2 == 0,
                opcode: BINARY,
                payload,
            };
            for mask in [None, Some([1, 2, 3, 4])] {
                let bytes = encode(&frame, mask);
                let marker = bytes[1] & 0x7F;
                let expected = if len < 126 {
                    len as u8
                } else if len <= 0xFFFF {
                    126
                } else {
                    127
                };
                assert_eq!(marker, expected, "length marker for {len}");
                assert_eq!(
                    Frame::read_from(&mut &bytes[..], MAX_MESSAGE).unwrap(),
                    frame
                );
            }
        }
    }

    #[test]
    fn oversized_frames_are_refused_before_their_payload_is_read() {
        let header = b"\x82\x7f\x00\x00\x01\x00\x00\x00\x00\x00";
        assert!(Frame::read_from(&mut &header[..], MAX_MESSAGE).is_err());
        let parsed = Header::read_from(&mut &header[..]).unwrap();
        assert_eq!(parsed.len, 1 << 40);
    }
}
