//! Plain HTTP for the end-to-end tests: one HTTP/1.1 request per
//! connection, read to its end (no client library in between), and the
//! example WIMSE service run as a real process.

use std::process::Command;

use crate::binary;

/// What came back from [`http_call`].
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// One HTTP/1.1 request over a fresh connection, read to its end. The
/// `Host` is the example service's audience; other servers ignore it.
pub async fn http_call(
    address: &str,
    method: &str,
    path: &str,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: orders.example.org\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
    }
    request.push_str("\r\n");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete HTTP response");
    let head = String::from_utf8(response[..split].to_vec()).unwrap();
    let body = &response[split + 4..];
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut headers = http::HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').unwrap();
        headers.append(
            http::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
            value.trim().parse().unwrap(),
        );
    }
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    let body = if chunked {
        unchunk(body)
    } else {
        body.to_vec()
    };
    Answer {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    }
}

/// The payload of a body in HTTP/1.1 chunked transfer coding (RFC 9112
/// section 7.1): hex size lines, each chunk followed by CRLF, ending with
/// a zero-size chunk.
fn unchunk(mut body: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size_text = std::str::from_utf8(&body[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        body = &body[line_end + 2..];
        if size == 0 {
            return payload;
        }
        payload.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// The example service, started against the node's Workload API.
#[derive(Debug)]
pub struct ExampleService {
    child: std::process::Child,
    pub address: String,
}

impl ExampleService {
    /// Starts the service for audience `https://orders.example.org`.
    pub fn start(endpoint: String) -> Self {
        Self::start_with(endpoint, &[])
    }

    /// Starts the service with `extra` flags.
    pub fn start_with(endpoint: String, extra: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(binary("wimse-service"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--audience",
                "https://orders.example.org",
            ])
            .args(extra)
            .env("SPIFFE_ENDPOINT_SOCKET", endpoint)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        ExampleService { child, address }
    }
}

impl Drop for ExampleService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
