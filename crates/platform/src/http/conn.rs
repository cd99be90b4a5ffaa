//! A request hyper cannot parse never reaches a route: a control character in a header
//! value (anything but tab: NUL, ESC, DEL, …), a malformed request line, headers or a URI
//! too long. hyper answers it itself, before any of our code runs, with a bare status
//! (`400`, `414` or `431`, `content-length: 0`) and closes the connection; it has no hook
//! to change that answer. So the connection does: [`Listener`] hands hyper sockets that
//! recognise that answer as hyper writes it and send an `application/problem+json` with a
//! detail in its place, with the same headers as every other response.

use std::convert::Infallible;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::{Layer, ServiceExt};

use super::error::problem;

/// A TCP listener whose connections answer hyper's own refusals with a problem.
pub(super) struct Listener(pub TcpListener);

impl axum::serve::Listener for Listener {
    type Io = ProblemIo<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = axum::serve::Listener::accept(&mut self.0).await;
        (ProblemIo { io, replacing: None }, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A connection that writes a problem where hyper writes a bare refusal.
pub(super) struct ProblemIo<T> {
    io: T,
    /// The problem being written, how much of it is, and how many of hyper's bytes it stands for.
    replacing: Option<(Vec<u8>, usize, usize)>,
}

impl<T: AsyncRead + Unpin> AsyncRead for ProblemIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> ProblemIo<T> {
    /// Writes the problem standing in for `buf` if `buf` is hyper's refusal (or one is under
    /// way); `None`: `buf` is to be written as it is.
    fn poll_replace(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Option<Poll<io::Result<usize>>> {
        if self.replacing.is_none() {
            let replacement = replacement(buf)?;
            self.replacing = Some((replacement, 0, buf.len()));
        }
        let (bytes, written, stands_for) = self.replacing.as_mut().expect("set above");
        while *written < bytes.len() {
            match Pin::new(&mut self.io).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Some(Poll::Ready(Err(io::ErrorKind::WriteZero.into()))),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Some(Poll::Ready(Err(e))),
                Poll::Pending => return Some(Poll::Pending),
            }
        }
        let done = *stands_for;
        self.replacing = None;
        Some(Poll::Ready(Ok(done)))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ProblemIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(poll) = this.poll_replace(cx, buf) {
            return poll;
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // hyper's refusal is a head alone, in one slice.
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(first), None) = (filled.next(), filled.next())
            && let Some(poll) = this.poll_replace(cx, first)
        {
            return poll;
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    /// hyper flushes only once its buffer is written, so never in the middle of a problem.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The problem to send instead of `buf`, when `buf` is hyper's refusal: a whole head of a
/// `400`, `414` or `431` with `content-length: 0` and no content type (every answer of
/// ours has a body and a type).
fn replacement(buf: &[u8]) -> Option<Vec<u8>> {
    if !buf.starts_with(b"HTTP/1.1 4") || !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let head = std::str::from_utf8(buf).ok()?;
    let lower = head.to_ascii_lowercase();
    if lower.matches("\r\n\r\n").count() != 1 || !lower.contains("\r\ncontent-length: 0\r\n") || lower.contains("\r\ncontent-type:") {
        return None;
    }
    let status = StatusCode::from_bytes(head.get(9..12)?.as_bytes()).ok()?;
    let detail = match status {
        StatusCode::BAD_REQUEST => {
            "the request cannot be read: its request line or a header is malformed. A header value may hold no control character \
             other than tab (no NUL, ESC or DEL), a header name only letters, digits and !#$%&'*+-.^_`|~"
        }
        StatusCode::URI_TOO_LONG => "the request's URI is longer than this service reads",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "the request's headers are larger than this service reads",
        _ => return None,
    };
    let date = head.split("\r\n").find(|line| line.to_ascii_lowercase().starts_with("date:"));
    Some(render(status, detail.to_owned(), date))
}

/// The bytes of the problem, with the headers of every response (`headers.rs`).
fn render(status: StatusCode, detail: String, date: Option<&str>) -> Vec<u8> {
    let service = super::headers::layer().layer(tower::service_fn(move |_: Request<Body>| std::future::ready(Ok::<_, Infallible>(problem(status, detail.clone())))));
    let response = service.oneshot(Request::new(Body::empty())).now_or_never().expect("ready at once").expect("infallible");
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).now_or_never().expect("a problem's body is in memory").expect("and whole");
    let mut head = format!("HTTP/1.1 {} {}\r\n", status.as_str(), status.canonical_reason().unwrap_or(""));
    for (name, value) in &parts.headers {
        if let Ok(value) = value.to_str() {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str(&format!("content-length: {}\r\nconnection: close\r\n", body.len()));
    if let Some(date) = date {
        head.push_str(date);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&body);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What hyper 1 writes for a request whose header value holds a NUL.
    const HYPER_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sun, 06 Dec 2026 07:33:18 GMT\r\n\r\n";

    #[test]
    fn hypers_bare_refusals_become_problems_and_nothing_else_changes() {
        let bytes = replacement(HYPER_400).expect("replaced");
        let text = String::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        for line in ["content-type: application/problem+json", "connection: close", "date: Sun, 06 Dec 2026 07:33:18 GMT", "x-content-type-options: nosniff"] {
            assert!(head.contains(line), "{line} in {head}");
        }
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["status"], 400);
        assert!(problem["detail"].as_str().unwrap().contains("control character"), "{problem}");
        let long = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert!(String::from_utf8(replacement(long).unwrap()).unwrap().contains("\"status\":431"));

        // Our own answers, and anything that is not a whole bare head, pass untouched.
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\ncontent-length: 0\r\n\r\n";
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}";
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let not_found = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        for passes in [&ours[..], with_body, ok, not_found, &HYPER_400[..40], b"{\"status\":400}"] {
            assert!(replacement(passes).is_none(), "{}", String::from_utf8_lossy(passes));
        }
    }

    #[tokio::test]
    async fn a_connection_writes_the_problem_and_reports_hypers_bytes_written() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut io = ProblemIo { io: server, replacing: None };
        io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
        io.write_all(HYPER_400).await.unwrap();
        io.shutdown().await.unwrap();
        drop(io);
        let mut seen = String::new();
        let mut client = client;
        client.read_to_string(&mut seen).await.unwrap();
        assert!(seen.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"), "{seen}");
        assert!(seen.contains("application/problem+json") && seen.ends_with('}'), "{seen}");
    }
}
