//! Framed I/O on a worker's socket: reading one frame (`protocol::codec`: length header,
//! then a bincode payload), the reader loop that turns frames into [`WorkerEvent`]s, the
//! writer task that sends what the runner queued (so a slow socket never blocks the
//! runner), and the last lines of the worker's stderr, which explain most deaths.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use interprocess::local_socket::tokio::Stream;
use mlx_serve_protocol::{codec, WorkerMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::WorkerEvent;

/// The last lines a worker wrote to stderr (they carry MLX's abort messages).
#[derive(Clone, Default)]
pub struct StderrTail(Arc<Mutex<VecDeque<String>>>);

impl StderrTail {
    const LINES: usize = 20;

    pub fn push(&self, line: String) {
        let mut t = self.0.lock().unwrap();
        if t.len() == Self::LINES {
            t.pop_front();
        }
        t.push_back(line);
    }

    pub fn text(&self) -> String {
        let t = self.0.lock().unwrap();
        t.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Io(std::io::Error),
    #[error("connection cut inside a frame: {0}")]
    Cut(std::io::Error),
    /// A bad header (another protocol version, oversized) or an undecodable payload.
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame(mut rx: &Stream) -> Result<Option<WorkerMessage>, FrameError> {
    let mut header = [0u8; codec::HEADER_LEN];
    match rx.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(FrameError::Io(e)),
    }
    let len = codec::decode_header(&header)?;
    let mut payload = vec![0u8; len];
    rx.read_exact(&mut payload).await.map_err(FrameError::Cut)?;
    Ok(Some(codec::decode_payload(&payload)?))
}

/// Forwards frames as events until the connection ends; returns why it ended, or None
/// when nobody listens any more.
pub async fn reader_task(stream: Arc<Stream>, events: &mpsc::UnboundedSender<WorkerEvent>) -> Option<String> {
    loop {
        match read_frame(&stream).await {
            Ok(Some(msg)) => events.send(WorkerEvent::Message(msg)).ok()?,
            Ok(None) => return Some("worker closed the connection".to_owned()),
            Err(e) => return Some(e.to_string()),
        }
    }
}

/// Writes queued frames in order until the queue closes or the socket fails.
pub async fn writer_task(stream: Arc<Stream>, mut outbox: mpsc::UnboundedReceiver<Vec<u8>>) {
    let mut tx: &Stream = &stream;
    while let Some(frame) = outbox.recv().await {
        if tx.write_all(&frame).await.is_err() {
            return;
        }
    }
}
