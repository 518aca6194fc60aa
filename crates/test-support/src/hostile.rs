//! Hostile request bodies, sent the way no well-behaved client would: raw gRPC over HTTP/2 and
//! raw grpc-web over HTTP/1.1, each answer read back as a gRPC status.

use std::net::SocketAddr;

use base64::Engine as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tonic::{Code, Status};

/// One length-prefixed frame: `flag` (0 message, 1 compressed, 0x80 grpc-web trailers), the
/// length it claims, then `payload`.
pub fn frame(flag: u8, claimed_length: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![flag];
    bytes.extend_from_slice(&claimed_length.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// A well-framed message.
pub fn message(payload: &[u8]) -> Vec<u8> {
    frame(0, payload.len() as u32, payload)
}

/// Bodies no decoder should accept, each named; the same for gRPC and grpc-web.
pub fn hostile_bodies() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("empty body", Vec::new()),
        ("half a frame header", vec![0, 0]),
        ("not protobuf", message(&[0xff, 0xff, 0xff, 0xff])),
        // Field 1 (a string in every request here) sent as a varint: wrong wire type.
        ("wrong wire type", message(&[0x08, 0x01])),
        // Field 1 as a string of invalid UTF-8.
        (
            "invalid utf-8 in a string",
            message(&[0x0a, 0x02, 0xc3, 0x28]),
        ),
        // A length-delimited field claiming more bytes than the message holds.
        (
            "field longer than its message",
            message(&[0x0a, 0x7f, 0x41]),
        ),
        (
            "frame shorter than it claims",
            frame(0, 100, &[0x0a, 0x01, 0x41]),
        ),
        (
            "compressed flag without an encoding",
            frame(1, 3, &[0x0a, 0x01, 0x41]),
        ),
        ("unknown flag", frame(2, 3, &[0x0a, 0x01, 0x41])),
        (
            "a trailers frame as the request",
            frame(0x80, 15, b"grpc-status:0\r\n"),
        ),
    ]
}

/// The status of an answer: from the headers (trailers-only) or the trailers.
fn status_of(headers: &http::HeaderMap, trailers: Option<&http::HeaderMap>) -> Option<Status> {
    Status::from_header_map(headers).or_else(|| trailers.and_then(Status::from_header_map))
}

/// Sends `body` as a gRPC request to `path` over HTTP/2, with `headers` beside the usual ones,
/// and returns the status it gets (OK if it gets none).
pub async fn raw_grpc(
    address: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> anyhow::Result<Status> {
    let tcp = TcpStream::connect(address).await?;
    let (client, connection) = h2::client::handshake(tcp).await?;
    tokio::spawn(connection);
    let mut client = client.ready().await?;
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{address}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (response, mut send) = client.send_request(request.body(())?, false)?;
    send.send_data(body.into(), true)?;
    let response = response.await?;
    let (parts, mut body) = response.into_parts();
    if let Some(status) = status_of(&parts.headers, None) {
        return Ok(status);
    }
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await?;
    Ok(status_of(&parts.headers, trailers.as_ref()).unwrap_or_else(|| Status::ok("")))
}

/// The two grpc-web encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebEncoding {
    /// `application/grpc-web+proto`: frames as bytes.
    Binary,
    /// `application/grpc-web-text`: frames in base64.
    Text,
}

/// Sends `body` as a grpc-web request to `path` over HTTP/1.1 (base64-encoding it for
/// [`WebEncoding::Text`]) and returns the status it gets. [`raw_http1`] sends a body as is.
pub async fn raw_grpc_web(
    address: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    encoding: WebEncoding,
    body: Vec<u8>,
) -> anyhow::Result<Status> {
    let (content_type, body) = match encoding {
        WebEncoding::Binary => ("application/grpc-web+proto", body),
        WebEncoding::Text => (
            "application/grpc-web-text",
            base64::engine::general_purpose::STANDARD
                .encode(body)
                .into_bytes(),
        ),
    };
    raw_http1(address, path, content_type, headers, body).await
}

/// Sends `body` with `content_type` as an HTTP/1.1 POST and reads the grpc-web status back.
pub async fn raw_http1(
    address: SocketAddr,
    path: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> anyhow::Result<Status> {
    let mut stream = TcpStream::connect(address).await?;
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: {address}\r\ncontent-type: {content_type}\r\n\
         x-grpc-web: 1\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&body).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let split = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| {
            anyhow::anyhow!("no HTTP head in {:?}", String::from_utf8_lossy(&response))
        })?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let mut header_map = http::HeaderMap::new();
    for line in head.lines().skip(1) {
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.trim().as_bytes()),
                http::HeaderValue::from_str(value.trim()),
            )
        {
            header_map.append(name, value);
        }
    }
    if let Some(status) = status_of(&header_map, None) {
        return Ok(status);
    }
    // A status in the body's trailers frame (binary, or base64 for text, chunked or not).
    let rest = &response[split + 4..];
    let text = String::from_utf8_lossy(rest).into_owned();
    let decoded = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '='))
        .filter_map(|part| base64::engine::general_purpose::STANDARD.decode(part).ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .collect::<Vec<_>>()
        .join("");
    for candidate in [&text, &decoded] {
        if let Some(start) = candidate.find("grpc-status:") {
            let mut trailers = http::HeaderMap::new();
            for line in candidate[start..].split("\r\n") {
                if let Some((name, value)) = line.split_once(':')
                    && let (Ok(name), Ok(value)) = (
                        http::HeaderName::from_bytes(name.trim().as_bytes()),
                        http::HeaderValue::from_str(value.trim()),
                    )
                {
                    trailers.append(name, value);
                }
            }
            if let Some(status) = status_of(&trailers, None) {
                return Ok(status);
            }
        }
    }
    Err(anyhow::anyhow!("no grpc-status in {head}\n{text}"))
}

/// Asserts that `status` is INVALID_ARGUMENT, naming `case` otherwise.
pub fn assert_invalid_argument(case: &str, status: &Status) {
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "{case}: {:?} {}",
        status.code(),
        status.message()
    );
}
