//! A minimal HTTP/1.1 client over a real TCP connection (one request per connection,
//! `Connection: close`), so tests speak to the group service as a browser or curl would.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Header names in lower case; repeated headers joined with "\n".
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    /// The value of the `name=value` cookie this reply sets.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.header("set-cookie")
            .lines()
            .filter_map(|c| c.split(';').next()?.split_once('='))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.to_owned())
    }
}

/// Sends one request; `cookie` is a `name=value` pair. A server that cannot be reached gives
/// status 0 with the reason as the body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: Option<(&str, String)>,
) -> Reply {
    let mut stream =
        match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            // Status 0: nobody listens (yet); callers that wait for a server poll on this.
            Ok(Err(e)) => return unreachable(e.to_string()),
            Err(_) => return unreachable("connect timed out".into()),
        };
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(c) = cookie {
        head.push_str(&format!("Cookie: {c}\r\n"));
    }
    let body = body.map(|(content_type, b)| {
        head.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            b.len()
        ));
        b
    });
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    if let Some(b) = body {
        stream.write_all(b.as_bytes()).await.unwrap();
    }
    let raw = tokio::time::timeout(Duration::from_secs(30), read_reply(&mut stream))
        .await
        .expect("reply timed out");
    parse(&String::from_utf8_lossy(&raw))
}

/// Reads one reply: up to Content-Length, the last chunk, or the end of the stream (some
/// servers, chromedriver among them, keep the connection open despite `Connection: close`).
async fn read_reply(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(end) = find(&raw, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let body = raw.len() - end - 4;
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|n| body >= n)
                || (head.contains("transfer-encoding: chunked") && raw.ends_with(b"0\r\n\r\n"))
            {
                return raw;
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return raw,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn unreachable(why: String) -> Reply {
    Reply {
        status: 0,
        headers: BTreeMap::new(),
        body: why,
    }
}

pub async fn get(addr: SocketAddr, path: &str, cookie: Option<&str>) -> Reply {
    request(addr, "GET", path, cookie, None).await
}

/// POSTs a urlencoded form.
pub async fn post_form(addr: SocketAddr, path: &str, cookie: Option<&str>, fields: &[(&str, &str)]) -> Reply {
    let body = fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    request(
        addr,
        "POST",
        path,
        cookie,
        Some(("application/x-www-form-urlencoded", body)),
    )
    .await
}

pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn parse(raw: &str) -> Reply {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let e = headers.entry(k.trim().to_ascii_lowercase()).or_default();
            if !e.is_empty() {
                e.push('\n');
            }
            e.push_str(v.trim());
        }
    }
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        unchunk(body)
    } else {
        body.to_owned()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}
