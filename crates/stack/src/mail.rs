//! The stack's mail sink: a small SMTP server that takes every mail notification sends and, when
//! asked, prints it into the stack's log. It replaces a Python sink that cost the benchmark an
//! eighth of the machine at the peak (docs/BENCHMARKS.md, session 18): the harness's CPU is CPU
//! the platform under test does not get.
//!
//! It speaks enough SMTP for any client that does not insist on TLS or authentication: greeting,
//! EHLO/HELO, MAIL, RCPT, DATA (dot-unstuffed), RSET, NOOP, QUIT. Nothing is stored.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
};

/// Longest command or data line taken; a longer one ends the session.
const MAX_LINE: usize = 64 * 1024;
/// Largest mail taken, in bytes.
const MAX_MAIL: usize = 10 * 1024 * 1024;

/// Serves SMTP on `listen` until `shutdown`, printing each mail to standard output when `log`.
pub async fn serve(
    listen: SocketAddr,
    log: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("mail sink listening on {}", listener.local_addr()?);
    serve_on(listener, log, shutdown).await
}

/// [`serve`] on a bound `listener`.
pub async fn serve_on(
    listener: TcpListener,
    log: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        tokio::spawn(async move {
            if let Err(error) = session(stream, log).await {
                eprintln!("mail sink: session with {peer} ended: {error}");
            }
        });
    }
}

/// One client's session.
async fn session(stream: TcpStream, log: bool) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    reply(&mut write, "220 zentra-stack mail sink ESMTP").await?;
    let mut envelope = Envelope::default();
    let mut line = String::new();
    loop {
        line.clear();
        if read_line(&mut lines, &mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end_matches(['\r', '\n']);
        let verb = command
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => reply(&mut write, "250-zentra-stack\r\n250 8BITMIME").await?,
            "HELO" => reply(&mut write, "250 zentra-stack").await?,
            "MAIL" => {
                envelope = Envelope {
                    from: argument(command),
                    to: Vec::new(),
                };
                reply(&mut write, "250 OK").await?;
            }
            "RCPT" => {
                envelope.to.push(argument(command));
                reply(&mut write, "250 OK").await?;
            }
            "DATA" if envelope.to.is_empty() => reply(&mut write, "503 RCPT first").await?,
            "DATA" => {
                reply(&mut write, "354 end with <CRLF>.<CRLF>").await?;
                let Some(body) = read_data(&mut lines).await? else {
                    reply(&mut write, "552 message too large").await?;
                    return Ok(());
                };
                if log {
                    println!(
                        "mail from {} to {}\n{}",
                        envelope.from,
                        envelope.to.join(", "),
                        body.trim_end()
                    );
                }
                envelope = Envelope::default();
                reply(&mut write, "250 OK: taken").await?;
            }
            "RSET" => {
                envelope = Envelope::default();
                reply(&mut write, "250 OK").await?;
            }
            "NOOP" => reply(&mut write, "250 OK").await?,
            "QUIT" => {
                reply(&mut write, "221 bye").await?;
                return Ok(());
            }
            _ => reply(&mut write, "502 command not implemented").await?,
        }
    }
}

/// The sender and recipients of the mail being taken.
#[derive(Default)]
struct Envelope {
    from: String,
    to: Vec<String>,
}

/// What follows the colon of `MAIL FROM:<a>` or `RCPT TO:<b>`.
fn argument(command: &str) -> String {
    command
        .split_once(':')
        .map_or("", |(_, rest)| rest.trim())
        .to_owned()
}

/// Reads one line of at most [`MAX_LINE`] bytes; 0 at the end of the stream.
async fn read_line(
    lines: &mut (impl AsyncBufRead + Unpin),
    line: &mut String,
) -> std::io::Result<usize> {
    let read = lines.read_line(line).await?;
    if line.len() > MAX_LINE {
        return Err(std::io::Error::other("line too long"));
    }
    Ok(read)
}

/// Reads a mail's lines up to the lone dot, undoing dot-stuffing; `None` past [`MAX_MAIL`].
async fn read_data(lines: &mut (impl AsyncBufRead + Unpin)) -> std::io::Result<Option<String>> {
    let mut body = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if read_line(lines, &mut line).await? == 0 {
            return Err(std::io::Error::other(
                "the client left in the middle of a mail",
            ));
        }
        let content = line.trim_end_matches(['\r', '\n']);
        if content == "." {
            return Ok(Some(body));
        }
        if body.len() + line.len() > MAX_MAIL {
            return Ok(None);
        }
        body.push_str(content.strip_prefix('.').unwrap_or(content));
        body.push('\n');
    }
}

/// Sends one reply in one write: a reply split over two segments waits for the client's
/// delayed acknowledgement (Nagle), 40 ms a reply.
async fn reply(write: &mut (impl AsyncWrite + Unpin), text: &str) -> std::io::Result<()> {
    write.write_all(format!("{text}\r\n").as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_argument_is_what_follows_the_colon() {
        assert_eq!(argument("MAIL FROM:<a@b.c>"), "<a@b.c>");
        assert_eq!(argument("RCPT TO: <x@y.z>"), "<x@y.z>");
        assert_eq!(argument("MAIL"), "");
    }

    #[tokio::test]
    async fn a_client_sends_two_mails_in_one_session_and_leaves() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(serve_on(listener, false, stop.clone().cancelled_owned()));
        let stream = TcpStream::connect(address).await.expect("connect");
        let (read, mut write) = stream.into_split();
        let mut answers = BufReader::new(read).lines();
        let mut expect = async |code: &str| {
            let line = answers.next_line().await.expect("read").expect("a line");
            assert!(line.starts_with(code), "expected {code}, got {line:?}");
        };
        expect("220").await;
        write.write_all(b"EHLO client\r\n").await.expect("write");
        expect("250-").await;
        expect("250 ").await;
        for _ in 0..2 {
            write
                .write_all(b"MAIL FROM:<shop@zentra.test>\r\nRCPT TO:<ada@customers.test>\r\n")
                .await
                .expect("write");
            expect("250").await;
            expect("250").await;
            write.write_all(b"DATA\r\n").await.expect("write");
            expect("354").await;
            write
                .write_all(b"Subject: order confirmed\r\n\r\nthanks\r\n.\r\n")
                .await
                .expect("write");
            expect("250").await;
        }
        write
            .write_all(b"NOOP\r\nVRFY x\r\nQUIT\r\n")
            .await
            .expect("write");
        expect("250").await;
        expect("502").await;
        expect("221").await;
        stop.cancel();
        server.await.expect("task").expect("served");
    }

    #[tokio::test]
    async fn a_mail_is_read_to_the_lone_dot_and_unstuffed() {
        let input: &[u8] = b"Subject: hi\r\n\r\n..leading dot\r\nline\r\n.\r\nQUIT\r\n";
        let mut reader = BufReader::new(input);
        let body = read_data(&mut reader).await.expect("read").expect("small");
        assert_eq!(body, "Subject: hi\n\n.leading dot\nline\n");
        let mut rest = String::new();
        read_line(&mut reader, &mut rest).await.expect("next");
        assert_eq!(rest, "QUIT\r\n");
    }
}
