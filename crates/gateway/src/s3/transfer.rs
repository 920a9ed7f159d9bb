//! Moving object bytes between async request and response bodies and the store's blocking
//! files, a bounded number of chunks at a time: an upload is never held in memory whole, and a
//! slow client slows the disk side down instead of piling data up.

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt as _};
use s3s::dto::StreamingBlob;
use s3s::{S3Error, S3ErrorCode};
use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Chunks in flight between the network and the disk side, each way.
const CHANNEL_CHUNKS: usize = 8;
/// Size of a chunk read from an object for a download.
const READ_CHUNK: usize = 64 * 1024;

/// What the network side hands the disk side of an upload.
pub(crate) enum Piece {
    /// More bytes of the body.
    Data(Bytes),
    /// The body ended cleanly (and, when signed, its signature checked out).
    End,
}

/// The disk side's end of an upload: a blocking reader of the body. It fails (and the store
/// discards what it wrote) unless the whole body arrived.
pub(crate) struct UploadReader {
    rx: mpsc::Receiver<Piece>,
    current: Bytes,
    ended: bool,
}

impl UploadReader {
    /// The next chunk of the body, `None` at its clean end; an error when the client went away
    /// or the body failed its checks.
    pub(crate) fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        if !self.current.is_empty() {
            return Ok(Some(std::mem::take(&mut self.current)));
        }
        if self.ended {
            return Ok(None);
        }
        match self.rx.blocking_recv() {
            Some(Piece::Data(b)) => Ok(Some(b)),
            Some(Piece::End) => {
                self.ended = true;
                Ok(None)
            }
            None => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the request body ended early",
            )),
        }
    }
}

impl Read for UploadReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.current.is_empty() {
            match self.next_chunk()? {
                Some(b) => self.current = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// The network side of an upload and the reader for the disk side.
pub(crate) fn upload_channel() -> (mpsc::Sender<Piece>, UploadReader) {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    (
        tx,
        UploadReader {
            rx,
            current: Bytes::new(),
            ended: false,
        },
    )
}

/// Feeds `body` to the disk side. A body that fails (its signature or checksum does not match,
/// the client went away) is reported and never marked ended, so nothing of it is kept. When the
/// disk side stops early, feeding stops too: its own result says why.
pub(crate) async fn pump(
    body: Option<StreamingBlob>,
    tx: mpsc::Sender<Piece>,
) -> Result<(), S3Error> {
    if let Some(mut body) = body {
        while let Some(item) = body.next().await {
            let chunk = item.map_err(body_error)?;
            if chunk.is_empty() {
                continue;
            }
            if tx.send(Piece::Data(chunk)).await.is_err() {
                return Ok(());
            }
        }
    }
    let _ = tx.send(Piece::End).await;
    Ok(())
}

/// The S3 error a failing request body carries (s3s reports signature and checksum mismatches
/// of streamed bodies this way), else `IncompleteBody`.
fn body_error(e: s3s::StdError) -> S3Error {
    match e.downcast::<S3Error>() {
        Ok(s3) => *s3,
        Err(other) => {
            tracing::debug!(error = %other, "S3 request body failed");
            S3Error::with_message(
                S3ErrorCode::IncompleteBody,
                "the request body ended before its declared length or failed to arrive; send it again",
            )
        }
    }
}

/// A download: chunks read from the object's file on a blocking thread, at most a few ahead
/// of the client. Dropping it (the client went away) stops the reading.
struct Download {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
}

impl Stream for Download {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// Streams `reader` (exactly the bytes to send) as a response body.
pub(crate) fn download(mut reader: impl Read + Send + 'static) -> StreamingBlob {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    tokio::task::spawn_blocking(move || {
        loop {
            let mut buf = BytesMut::zeroed(READ_CHUNK);
            let item = match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    Ok(buf.freeze())
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "reading an object for an S3 download failed");
                    Err(e)
                }
            };
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    StreamingBlob::wrap(Download { rx })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(chunks: Vec<Result<Bytes, std::io::Error>>) -> StreamingBlob {
        StreamingBlob::wrap(futures::stream::iter(chunks))
    }

    #[tokio::test]
    async fn a_whole_body_reaches_the_reader_in_order() {
        let (tx, mut reader) = upload_channel();
        let body = blob(vec![
            Ok(Bytes::from_static(b"hello ")),
            Ok(Bytes::new()),
            Ok(Bytes::from_static(b"world")),
        ]);
        let disk = tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            reader.read_to_end(&mut all).map(|_| all)
        });
        pump(Some(body), tx).await.unwrap();
        assert_eq!(disk.await.unwrap().unwrap(), b"hello world");
    }

    #[tokio::test]
    async fn a_failed_body_fails_the_reader() {
        let (tx, mut reader) = upload_channel();
        let body = blob(vec![
            Ok(Bytes::from_static(b"partial")),
            Err(std::io::Error::other("connection reset")),
        ]);
        let disk = tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            reader.read_to_end(&mut all)
        });
        let err = pump(Some(body), tx).await.unwrap_err();
        assert_eq!(*err.code(), S3ErrorCode::IncompleteBody);
        assert!(disk.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn a_download_yields_exactly_the_reader() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut body = download(std::io::Cursor::new(data.clone()));
        let mut got = Vec::new();
        while let Some(chunk) = body.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(got, data);
    }
}
