//! The HTTP/1.1 wire format, without I/O: a request serialised once per driver and a
//! response reader that finds where each response ends.
//!
//! A load worker sends one request at a time on its connection and needs only three
//! things from the answer: the status, whether the connection may be reused, and where
//! the response ends. The body is counted and discarded as it arrives, so a 1 MiB body
//! costs no more memory than an empty one. The head is parsed by `httparse`; the framing
//! follows RFC 9112 §6.3: no body for `HEAD`, 1xx, 204 and 304; `Transfer-Encoding`
//! ending in `chunked`; `Content-Length`; otherwise the body runs to the end of the
//! connection.

use bytes::Bytes;

/// Longest response head accepted (status line plus headers).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in one response head.
const MAX_HEADERS: usize = 64;
/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4 * 1024;

/// Why a response could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The head is not HTTP/1.x.
    #[error("malformed response head: {0}")]
    Head(String),
    /// The head is larger than [`MAX_HEAD`].
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// `Content-Length` is not a number, or two of them disagree.
    #[error("invalid content-length")]
    ContentLength,
    /// A chunk-size line or the chunk framing is malformed.
    #[error("malformed chunked body")]
    Chunked,
    /// The connection closed before the response was complete.
    #[error("connection closed mid-response")]
    Incomplete,
}

/// The bytes of a request, built once and sent as they are on every connection.
///
/// `Host` comes from the URL unless the headers set it; `Content-Length` is written from
/// the body (and for methods that usually carry one, even when it is empty); a
/// `Content-Length` or `Transfer-Encoding` among the headers is left out, since the body
/// given is sent whole.
pub fn encode_request(
    method: &str,
    path_and_query: &str,
    authority: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (Bytes, bool) {
    let mut out = Vec::with_capacity(128 + body.len());
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let has_host = headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host"));
    if !has_host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(authority.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut close = false;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            continue;
        }
        if name.eq_ignore_ascii_case("connection") && has_token(value.as_bytes(), b"close") {
            close = true;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let carries_body = matches!(method, "POST" | "PUT" | "PATCH");
    if !body.is_empty() || carries_body {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    (Bytes::from(out), close)
}

/// Whether a comma-separated header value holds `token` (ASCII case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token))
}

/// How the body of the response being read ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// This many bytes are still to come.
    Length(u64),
    /// Chunked, in this part of the framing.
    Chunked(Chunk),
    /// Everything until the peer closes.
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Body(Body),
}

/// What a response reader made of the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// More bytes are needed.
    More,
    /// The response is complete.
    Done(Head),
}

/// What a complete response said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The final status code.
    pub status: u16,
    /// Whether the connection may carry the next request.
    pub keep_alive: bool,
}

/// Reads one response; reuse it for the next with [`ResponseReader::reset`].
#[derive(Debug, Clone)]
pub struct ResponseReader {
    head_request: bool,
    phase: Phase,
    status: u16,
    keep_alive: bool,
    /// Bytes of the response consumed so far (to tell "nothing came back" apart).
    seen: u64,
}

impl ResponseReader {
    /// A reader for the answer to a request; `head_request` when that was a `HEAD`.
    pub fn new(head_request: bool) -> Self {
        ResponseReader {
            head_request,
            phase: Phase::Head,
            status: 0,
            keep_alive: false,
            seen: 0,
        }
    }

    /// Ready for the response to a request of this kind (`HEAD` or not).
    pub fn reset_for(&mut self, head_request: bool) {
        *self = ResponseReader::new(head_request);
    }

    /// Whether any byte of the response has been consumed.
    pub fn started(&self) -> bool {
        self.seen > 0
    }

    /// Consumes what it can of `buf`; returns how many bytes it used and where it stands.
    /// Bytes past the end of the response are left unconsumed.
    pub fn advance(&mut self, buf: &[u8]) -> Result<(usize, Step), ProtocolError> {
        let mut used = 0;
        loop {
            let rest = &buf[used..];
            let (n, step) = match self.phase {
                Phase::Head => self.head(rest)?,
                Phase::Body(body) => self.body(body, rest)?,
            };
            used += n;
            self.seen += n as u64;
            match step {
                Some(step) => return Ok((used, step)),
                None if n == 0 => return Ok((used, Step::More)),
                None => {}
            }
        }
    }

    /// The peer closed the connection: complete if the body runs to the close.
    pub fn eof(&mut self) -> Result<Head, ProtocolError> {
        match self.phase {
            Phase::Body(Body::UntilClose) => Ok(Head {
                status: self.status,
                keep_alive: false,
            }),
            _ => Err(ProtocolError::Incomplete),
        }
    }

    fn done(&mut self) -> Step {
        Step::Done(Head {
            status: self.status,
            keep_alive: self.keep_alive,
        })
    }

    /// Parses the head if it is all there. `Some(step)` ends the call to `advance`.
    fn head(&mut self, buf: &[u8]) -> Result<(usize, Option<Step>), ProtocolError> {
        // Uninitialised slots: zeroing 64 of them would cost more than the parse.
        let mut fields =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut fields,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Err(ProtocolError::HeadTooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok((0, None)),
            Err(httparse::Error::TooManyHeaders) => return Err(ProtocolError::HeadTooLarge),
            Err(e) => return Err(ProtocolError::Head(e.to_string())),
        };
        let status = response.code.unwrap_or(0);
        let http11 = response.version == Some(1);
        if (100..200).contains(&status) && status != 101 {
            // An interim response: the final one follows.
            return Ok((len, None));
        }
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut encoded = false;
        let mut keep_alive = http11;
        for field in response.headers.iter() {
            let name = field.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = parse_decimal(field.value).ok_or(ProtocolError::ContentLength)?;
                if length.is_some_and(|m| m != n) {
                    return Err(ProtocolError::ContentLength);
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                encoded = true;
                chunked = field
                    .value
                    .split(|&b| b == b',')
                    .next_back()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if name.eq_ignore_ascii_case(b"connection") {
                if has_token(field.value, b"close") {
                    keep_alive = false;
                } else if has_token(field.value, b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
        self.status = status;
        self.keep_alive = keep_alive;
        let body = if self.head_request || status == 204 || status == 304 || status == 101 {
            if status == 101 {
                self.keep_alive = false;
            }
            Body::Length(0)
        } else if encoded {
            if chunked {
                Body::Chunked(Chunk::Size)
            } else {
                Body::UntilClose
            }
        } else if let Some(n) = length {
            Body::Length(n)
        } else {
            Body::UntilClose
        };
        if body == Body::UntilClose {
            self.keep_alive = false;
        }
        if body == Body::Length(0) {
            return Ok((len, Some(self.done())));
        }
        self.phase = Phase::Body(body);
        Ok((len, None))
    }

    fn body(&mut self, body: Body, buf: &[u8]) -> Result<(usize, Option<Step>), ProtocolError> {
        match body {
            Body::Length(left) => {
                let n = (buf.len() as u64).min(left);
                let left = left - n;
                if left == 0 {
                    return Ok((n as usize, Some(self.done())));
                }
                self.phase = Phase::Body(Body::Length(left));
                Ok((n as usize, None))
            }
            Body::UntilClose => Ok((buf.len(), None)),
            Body::Chunked(chunk) => self.chunk(chunk, buf),
        }
    }

    fn chunk(&mut self, chunk: Chunk, buf: &[u8]) -> Result<(usize, Option<Step>), ProtocolError> {
        let set = |me: &mut Self, c| me.phase = Phase::Body(Body::Chunked(c));
        match chunk {
            Chunk::Size => {
                let Some(line) = line(buf)? else {
                    return Ok((0, None));
                };
                let size = parse_chunk_size(&buf[..line]).ok_or(ProtocolError::Chunked)?;
                set(
                    self,
                    if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    },
                );
                Ok((line, None))
            }
            Chunk::Data(left) => {
                let n = (buf.len() as u64).min(left);
                let left = left - n;
                set(
                    self,
                    if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    },
                );
                Ok((n as usize, None))
            }
            Chunk::DataEnd => match buf {
                [] | [b'\r'] => Ok((0, None)),
                [b'\r', b'\n', ..] => {
                    set(self, Chunk::Size);
                    Ok((2, None))
                }
                [b'\n', ..] => {
                    set(self, Chunk::Size);
                    Ok((1, None))
                }
                _ => Err(ProtocolError::Chunked),
            },
            Chunk::Trailers => {
                let Some(line) = line(buf)? else {
                    return Ok((0, None));
                };
                if buf[..line].trim_ascii().is_empty() {
                    return Ok((line, Some(self.done())));
                }
                Ok((line, None))
            }
        }
    }
}

/// The length of the first line of `buf` including its `\n`, if it is all there.
fn line(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    match buf.iter().take(MAX_LINE).position(|&b| b == b'\n') {
        Some(i) => Ok(Some(i + 1)),
        None if buf.len() >= MAX_LINE => Err(ProtocolError::Chunked),
        None => Ok(None),
    }
}

fn parse_decimal(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The size of a chunk-size line (hex digits, optional `;extensions`, CRLF).
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.split(|&b| b == b';').next()?.trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let v = (d as char).to_digit(16)?;
        Some(n * 16 + u64::from(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` in pieces of `step` bytes; returns the head and the bytes left over.
    fn read(wire: &[u8], step: usize, head_request: bool) -> Result<(Head, usize), ProtocolError> {
        let mut r = ResponseReader::new(head_request);
        let mut buf: Vec<u8> = Vec::new();
        let mut fed = 0;
        loop {
            if fed < wire.len() {
                let end = (fed + step).min(wire.len());
                buf.extend_from_slice(&wire[fed..end]);
                fed = end;
            }
            let (used, stepped) = r.advance(&buf)?;
            buf.drain(..used);
            match stepped {
                Step::Done(head) => return Ok((head, buf.len() + wire.len() - fed)),
                Step::More if fed == wire.len() => return r.eof().map(|h| (h, 0)),
                Step::More => {}
            }
        }
    }

    #[test]
    fn content_length_bodies_of_any_size_end_where_they_should() {
        for size in [0usize, 1, 1 << 20] {
            let mut wire =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n").into_bytes();
            wire.extend(std::iter::repeat_n(b'x', size));
            wire.extend_from_slice(b"HTTP/1.1 204 No Content\r\n\r\n");
            for step in [1, 7, 4096, usize::MAX] {
                let step = step.min(wire.len());
                let (head, left) = read(&wire, step, false).unwrap();
                assert_eq!(
                    head,
                    Head {
                        status: 200,
                        keep_alive: true
                    },
                    "size {size} step {step}"
                );
                assert_eq!(left, 27, "the next response is left unread");
            }
        }
    }

    #[test]
    fn chunked_bodies_with_extensions_and_trailers() {
        let wire = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
                     5;ext=1\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 1\r\n\r\n";
        for step in [1, 3, 1000] {
            let (head, left) = read(wire, step, false).unwrap();
            assert_eq!((head.status, head.keep_alive, left), (201, true, 0));
        }
        let bad = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n";
        assert_eq!(read(bad, 100, false), Err(ProtocolError::Chunked));
    }

    #[test]
    fn connection_close_and_http10_are_not_reused() {
        let close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
        assert!(!read(close, 5, false).unwrap().0.keep_alive);
        let old = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert!(!read(old, 5, false).unwrap().0.keep_alive);
        let old_kept = b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok";
        assert!(read(old_kept, 5, false).unwrap().0.keep_alive);
    }

    #[test]
    fn a_body_without_framing_runs_to_the_close() {
        let wire = b"HTTP/1.1 200 OK\r\n\r\nuntil the end";
        let (head, _) = read(wire, 4, false).unwrap();
        assert_eq!(
            head,
            Head {
                status: 200,
                keep_alive: false
            }
        );
    }

    #[test]
    fn bodiless_responses_and_interim_ones() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
        assert_eq!(read(head, 9, true).unwrap().0.status, 200);
        let not_modified = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\n\r\n";
        assert_eq!(read(not_modified, 9, false).unwrap().0.status, 304);
        let cont = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            read(cont, 3, false).unwrap(),
            (
                Head {
                    status: 200,
                    keep_alive: true
                },
                0
            )
        );
    }

    #[test]
    fn early_close_and_garbage_are_errors() {
        let cut = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        assert_eq!(read(cut, 100, false), Err(ProtocolError::Incomplete));
        assert_eq!(
            read(b"HTTP/1.1 200 O", 100, false),
            Err(ProtocolError::Incomplete)
        );
        assert!(matches!(
            read(b"SSH-2.0-OpenSSH\r\n\r\n", 100, false),
            Err(ProtocolError::Head(_))
        ));
        let twice = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(read(twice, 100, false), Err(ProtocolError::ContentLength));
        let huge = [b"HTTP/1.1 200 OK\r\nx: ".as_slice(), &vec![b'a'; MAX_HEAD]].concat();
        assert_eq!(
            read(&huge, 100_000, false),
            Err(ProtocolError::HeadTooLarge)
        );
    }

    #[test]
    fn requests_are_encoded_once_with_host_and_length() {
        let headers = vec![
            ("x-a".to_string(), "1".to_string()),
            ("Content-Length".to_string(), "99".to_string()),
        ];
        let (bytes, close) = encode_request("POST", "/p?q=1", "example.test:8080", &headers, b"{}");
        assert_eq!(
            &bytes[..],
            b"POST /p?q=1 HTTP/1.1\r\nhost: example.test:8080\r\nx-a: 1\r\ncontent-length: 2\r\n\r\n{}"
        );
        assert!(!close);
        let own_host = vec![
            ("Host".to_string(), "other".to_string()),
            ("Connection".to_string(), "close".to_string()),
        ];
        let (bytes, close) = encode_request("GET", "/", "h", &own_host, b"");
        assert_eq!(
            &bytes[..],
            b"GET / HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n"
        );
        assert!(close);
    }
}
