//! HTTP/1.1 framing the fake Kubernetes servers share: they are Go servers,
//! whose `net/http` sends a body over 2 KiB chunked and a smaller one with
//! its Content-Length.

use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Writes `head` (the status line and headers, each ending in CRLF, without
/// the blank line) and `body`, framed as Go's `net/http` frames it.
pub async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    mut head: String,
    body: &[u8],
) -> std::io::Result<()> {
    if body.len() > 2048 {
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
        stream.write_all(head.as_bytes()).await?;
        for chunk in body.chunks(4096) {
            stream
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            stream.write_all(chunk).await?;
            stream.write_all(b"\r\n").await?;
        }
        stream.write_all(b"0\r\n\r\n").await?;
    } else {
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
    }
    stream.flush().await
}
