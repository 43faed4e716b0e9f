//! Framing and encoding of protocol messages — the one file that knows about bincode.
//!
//! A frame is `[u32 LE payload length][u16 LE protocol version][payload]`, the payload
//! being the bincode (standard config) encoding of a message. The version in every frame
//! lets either side refuse a peer of another protocol version with a clear error instead
//! of misreading its bytes. bincode carries a RUSTSEC "unmaintained" advisory; it is kept
//! behind these functions so a swap (postcard, rkyv, ...) touches only this file.

use std::io::{self, Read, Write};

use serde::{de::DeserializeOwned, Serialize};

use crate::PROTOCOL_VERSION;

/// Bytes before the payload.
pub const HEADER_LEN: usize = 6;

/// Largest payload accepted (a 4096 × 8192-token batch is ~128 MiB of ids; rows of
/// 4096 floats for 8192 inputs are 128 MiB). Anything larger is a corrupt stream.
pub const MAX_FRAME_BYTES: usize = 512 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("i/o error on the worker socket: {0}")]
    Io(#[from] io::Error),
    #[error("peer speaks protocol version {got}, this side speaks {want}; install matching mlx-serve and mlx-serve-worker binaries")]
    Version { got: u16, want: u16 },
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte limit (corrupt stream?)")]
    TooLarge(usize),
    #[error("cannot decode message: {0}")]
    Decode(String),
    #[error("cannot encode message: {0}")]
    Encode(String),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `msg` as one complete frame.
pub fn encode<M: Serialize>(msg: &M) -> Result<Vec<u8>, CodecError> {
    let mut frame = vec![0u8; HEADER_LEN];
    bincode::serde::encode_into_std_write(msg, &mut frame, config()).map_err(|e| CodecError::Encode(e.to_string()))?;
    let len = frame.len() - HEADER_LEN;
    if len > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge(len));
    }
    frame[..4].copy_from_slice(&(len as u32).to_le_bytes());
    frame[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    Ok(frame)
}

/// Parses a frame header, returning the payload length.
pub fn decode_header(header: &[u8; HEADER_LEN]) -> Result<usize, CodecError> {
    let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
    let version = u16::from_le_bytes(header[4..6].try_into().unwrap());
    if version != PROTOCOL_VERSION {
        return Err(CodecError::Version { got: version, want: PROTOCOL_VERSION });
    }
    if len > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes a payload (the bytes after the header).
pub fn decode_payload<M: DeserializeOwned>(payload: &[u8]) -> Result<M, CodecError> {
    let (msg, used) =
        bincode::serde::decode_from_slice(payload, config()).map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(CodecError::Decode(format!("{} trailing bytes", payload.len() - used)));
    }
    Ok(msg)
}

/// Reads one frame. `Ok(None)` on a clean end of stream at a frame boundary; an end of
/// stream inside a frame is an error (`UnexpectedEof`).
pub fn read<M: DeserializeOwned, R: Read>(r: &mut R) -> Result<Option<M>, CodecError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = decode_header(&header)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    decode_payload(&payload).map(Some)
}

/// Writes one frame and flushes.
pub fn write<M: Serialize, W: Write>(w: &mut W, msg: &M) -> Result<(), CodecError> {
    w.write_all(&encode(msg)?)?;
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SupervisorMessage, TokenBatch, WorkerMessage};

    #[test]
    fn roundtrip() {
        let mut batch = TokenBatch::new();
        batch.push(&[101, 7592, 102], &[]);
        let msg = SupervisorMessage::Embed { id: 7, batch };
        let frame = encode(&msg).unwrap();
        let back: SupervisorMessage = read(&mut &frame[..]).unwrap().unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn eof_and_truncation() {
        let empty: &[u8] = &[];
        assert!(read::<WorkerMessage, _>(&mut &empty[..]).unwrap().is_none());
        let frame = encode(&WorkerMessage::LoadFailed { reason: "x".into() }).unwrap();
        let cut = &frame[..frame.len() - 1];
        assert!(matches!(read::<WorkerMessage, _>(&mut &cut[..]), Err(CodecError::Io(_))));
        let cut = &frame[..3];
        assert!(matches!(read::<WorkerMessage, _>(&mut &cut[..]), Err(CodecError::Io(_))));
    }

    #[test]
    fn version_mismatch_is_refused() {
        let mut frame = encode(&SupervisorMessage::Shutdown).unwrap();
        frame[4] = frame[4].wrapping_add(1);
        let err = read::<SupervisorMessage, _>(&mut &frame[..]).unwrap_err();
        assert!(err.to_string().contains("protocol version"), "{err}");
    }

    #[test]
    fn oversized_and_garbage_frames() {
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        header[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        assert!(matches!(decode_header(&header), Err(CodecError::TooLarge(_))));
        assert!(decode_payload::<SupervisorMessage>(&[0xff, 0xff, 0xff]).is_err());
    }
}
